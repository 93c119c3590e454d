"""The short table ``make demo`` ends with: what each stage produced and where it is."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from patchsplat.console import console
from patchsplat.reading import read_json_object


def _read(path: Path) -> dict | None:
    """A stage's report, None when the stage has not run; a damaged one is an InputError naming it."""
    if not path.exists():
        return None
    return read_json_object(path, "report")


def _number(value, digits: str = ".4g") -> str:
    if value is None:
        return "-"
    # A hand-edited or foreign report may hold anything: show it rather than fail on its format.
    return format(value, digits) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _validation(workspace: Path) -> str | None:
    report = _read(workspace / "reports/validation.json")
    if report is None:
        return None
    stats = report.get("stats") or {}
    warnings = sum(1 for f in report.get("findings", []) if f.get("severity") == "warning")
    return (f"{stats.get('num_cameras', '?')} images, {stats.get('num_points', '?')} points, "
            f"mean NN spacing {_number(stats.get('mean_nn_spacing'))}, {warnings} warnings")


def _split(workspace: Path) -> str | None:
    report = _read(workspace / "reports/split.json")
    if report is None:
        return None
    flagged = report.get("flagged", {})
    decision = report.get("decision") or f"{report.get('num_patches', '?')} patches ({report.get('mode', '?')})"
    return decision + (f"; stand out: {', '.join(sorted(flagged))}" if flagged else "")


def _training(workspace: Path) -> str | None:
    # Dot-folders are a killed run's temporary output (patchsplat.atomic), never a patch.
    runs = sorted(path for path in (workspace / "data/trained").glob("*/metrics.json") if not path.parent.name.startswith("."))
    if not runs:
        return None
    parts = []
    for path in runs:
        metrics = _read(path)
        recovered = " (recovered)" if metrics.get("recovered") else ""
        parts.append(f"{path.parent.name} {_number(metrics.get('heldout_psnr'), '.1f')} dB{recovered}")
    return "held-out PSNR: " + ", ".join(parts)


def _merge(workspace: Path) -> str | None:
    report = _read(workspace / "data/merged/merge.json")
    return None if report is None else f"{_number(report.get('num_gaussians'), ',')} Gaussians"


def _mesh(workspace: Path) -> str | None:
    report = _read(workspace / "data/mesh/mesh.json")
    if report is None:
        return None
    totals = report.get("totals", report)
    faces = totals.get("faces")
    return f"{faces:,} faces" if isinstance(faces, int) else "done"


def _evaluation(workspace: Path) -> str | None:
    report = _read(workspace / "reports/evaluation.json")
    if report is None:
        return None
    text = f"PSNR {_number(report.get('psnr'), '.2f')} dB, SSIM {_number(report.get('ssim'), '.3f')}"
    if report.get("chamfer") is not None:
        text += f", mesh Chamfer {_number(report.get('chamfer'))} / F-score {_number(report.get('fscore'), '.3f')}"
    return text


# (stage, how to describe its result, where its outputs are)
_STAGES = [
    ("scene", lambda w: "done" if (w / "data/scene").exists() else None, "data/scene/"),
    ("validate", _validation, "reports/validation.json"),
    ("split", _split, "data/patches/, reports/split.json, reports/split_layout.png"),
    ("train", _training, "data/trained/<patch>/ (splats.ply, metrics.json, heldout.png, curve.csv)"),
    ("merge", _merge, "data/merged/splats.ply"),
    ("mesh", _mesh, "data/mesh/mesh.ply, data/mesh/mesh.glb"),
    ("evaluate", _evaluation, "reports/evaluation.json, reports/evaluation_grid.png"),
]


def print_summary(reports_dir: Path) -> None:
    """The summary of the workspace that holds ``reports_dir``."""
    workspace = Path(reports_dir).resolve().parent
    table = Table(title="patchsplat pipeline")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("outputs")
    for stage, describe, outputs in _STAGES:
        result = describe(workspace)
        table.add_row(stage, result or "not run", outputs if result else "")
    console.print(table)
    console.print("MLflow: mlflow ui --backend-store-uri sqlite:///mlflow.db  (runs of every patch and stage)")
