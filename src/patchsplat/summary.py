"""The short table ``make demo`` ends with: what each stage produced and where it is."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from patchsplat.console import console
from patchsplat.reading import read_json_object
from patchsplat.train.records import METRICS_FILE, TrainedMetrics
from patchsplat.workspace import Workspace, patch_ids_in


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


def _validation(workspace: Workspace) -> str | None:
    report = _read(workspace.validation_report)
    if report is None:
        return None
    stats = report.get("stats") or {}
    warnings = sum(1 for f in report.get("findings", []) if f.get("severity") == "warning")
    return (f"{stats.get('num_cameras', '?')} images, {stats.get('num_points', '?')} points, "
            f"mean NN spacing {_number(stats.get('mean_nn_spacing'))}, {warnings} warnings")


def _split(workspace: Workspace) -> str | None:
    report = _read(workspace.split_report)
    if report is None:
        return None
    flagged = report.get("flagged", {})
    decision = report.get("decision") or f"{report.get('num_patches', '?')} patches ({report.get('mode', '?')})"
    return decision + (f"; stand out: {', '.join(sorted(flagged))}" if flagged else "")


def _training(workspace: Workspace) -> str | None:
    trained = [workspace.patch(patch_id).trained_dir for patch_id in patch_ids_in(workspace.trained_dir)]
    runs = [folder / METRICS_FILE for folder in trained if (folder / METRICS_FILE).exists()]
    if not runs:
        return None
    parts = []
    for path in runs:
        metrics = TrainedMetrics.load(path)
        recovered = " (recovered)" if metrics.recovered else ""
        parts.append(f"{path.parent.name} {metrics.heldout_psnr:.1f} dB{recovered}")
    return "held-out PSNR: " + ", ".join(parts)


def _merge(workspace: Workspace) -> str | None:
    report = _read(workspace.merge_report)
    return None if report is None else f"{_number(report.get('num_gaussians'), ',')} Gaussians"


def _mesh(workspace: Workspace) -> str | None:
    report = _read(workspace.mesh_report)
    if report is None:
        return None
    totals = report.get("totals", report)
    faces = totals.get("faces")
    return f"{faces:,} faces" if isinstance(faces, int) else "done"


def _evaluation(workspace: Workspace) -> str | None:
    report = _read(workspace.evaluation_report)
    if report is None:
        return None
    text = f"PSNR {_number(report.get('psnr'), '.2f')} dB, SSIM {_number(report.get('ssim'), '.3f')}"
    if report.get("chamfer") is not None:
        text += f", mesh Chamfer {_number(report.get('chamfer'))} / F-score {_number(report.get('fscore'), '.3f')}"
    return text


# Where a workspace's outputs are, as the table shows them (relative to the workspace).
_HERE = Workspace()

# (stage, how to describe its result, where its outputs are)
_STAGES = [
    ("scene", lambda w: "done" if w.scene_dir.exists() else None, f"{_HERE.scene_dir}/"),
    ("validate", _validation, f"{_HERE.validation_report}"),
    ("split", _split, f"{_HERE.patches_dir}/, {_HERE.split_report}, {_HERE.split_layout_png}"),
    ("train", _training, f"{_HERE.trained_dir}/<patch>/ (splats.ply, {METRICS_FILE}, heldout.png, curve.csv)"),
    ("merge", _merge, f"{_HERE.merged_splats}"),
    ("mesh", _mesh, f"{_HERE.mesh_ply}, {_HERE.mesh_dir / 'mesh.glb'}"),
    ("evaluate", _evaluation, f"{_HERE.evaluation_report}, {_HERE.evaluation_grid}"),
]


def print_summary(reports_dir: Path) -> None:
    """The summary of the workspace that holds ``reports_dir``."""
    workspace = Workspace(Path(reports_dir).resolve().parent)
    table = Table(title="patchsplat pipeline")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("outputs")
    for stage, describe, outputs in _STAGES:
        result = describe(workspace)
        table.add_row(stage, result or "not run", outputs if result else "")
    console.print(table)
    if workspace.run_report.exists():
        console.print(f"The last run at a glance: {_HERE.run_report} (open it in a browser)")
    console.print(f"Headline numbers: dvc metrics show  ({_HERE.metrics_dir}/; compare runs: dvc exp show --only-changed)")
    console.print("MLflow: mlflow ui --backend-store-uri sqlite:///mlflow.db  (runs of every patch and stage)")
