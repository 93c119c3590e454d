"""The short table ``make demo`` ends with: what each stage produced and where it is."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from patchsplat.console import console


def _validation_row(report: dict) -> tuple[str, str]:
    stats = report.get("stats", {})
    findings = report.get("findings", [])
    warnings = sum(1 for f in findings if f.get("severity") == "warning")
    spacing = stats.get("mean_nn_spacing")
    return (
        f"{stats.get('num_cameras', '?')} images, {stats.get('num_points', '?')} points, "
        f"mean NN spacing {'-' if spacing is None else f'{spacing:.4g}'}, {warnings} warnings"
    ), ""


def _split_row(report: dict) -> tuple[str, str]:
    flagged = report.get("flagged", {})
    text = f"{report.get('num_patches', '?')} patches ({report.get('mode', '?')})"
    if flagged:
        text += f"; stand out: {', '.join(sorted(flagged))}"
    return text, ""


# (stage, report file relative to reports_dir, outputs to point the user at, how to describe the report)
_STAGES = [
    ("scene", None, "data/scene/", None),
    ("validate", "validation.json", "reports/validation.json", _validation_row),
    ("split", "split.json", "data/patches/, reports/split.json, reports/split_layout.png", _split_row),
    ("prepare", None, "data/prepared/", None),
]


def print_summary(reports_dir: Path) -> None:
    table = Table(title="patchsplat pipeline", show_lines=False)
    table.add_column("stage")
    table.add_column("result")
    table.add_column("outputs")
    for stage, report_name, outputs, describe in _STAGES:
        if report_name is None:
            done = Path(outputs).exists()
            table.add_row(stage, "done" if done else "not run", outputs if done else "")
            continue
        report_path = reports_dir / report_name
        if not report_path.exists():
            table.add_row(stage, "not run", "")
            continue
        result, _ = describe(json.loads(report_path.read_text(encoding="utf-8")))
        table.add_row(stage, result, outputs)
    console.print(table)
