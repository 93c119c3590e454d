"""What the run report shows, read from the workspace into small dataclasses (no HTML here).

Each section's reader returns its dataclass, or a :class:`Missing` saying in one line which input is
absent or unreadable: a failed or interrupted run leaves some outputs out, and the report of that run
must still be written. Only absence and damaged files (:class:`~patchsplat.errors.InputError`) are
turned into a :class:`Missing`; anything else is a bug and propagates.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchsplat.errors import InputError
from patchsplat.reading import read_json_object
from patchsplat.train.records import ATTEMPTS_FILE, METRICS_FILE, Attempt, AttemptsRecord, TrainedMetrics
from patchsplat.workspace import Workspace, failed_record_of, is_patch_id, patch_ids_in, patch_number

if TYPE_CHECKING:  # the check's package imports torch; only a workspace with a check needs it
    from patchsplat.partition_check.record import PartitionCheck


@dataclass(frozen=True)
class Missing:
    """A section's inputs are not there: why, in one line."""

    reason: str


@dataclass(frozen=True)
class PatchEvaluation:
    patch_id: str
    num_views: int
    psnr: float | None
    ssim: float | None
    lpips: float | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Evaluation:
    """reports/evaluation.json's headline and its per-patch rows."""

    psnr: float | None
    psnr_colour_corrected: float | None
    ssim: float | None
    lpips: float | None
    lpips_status: str
    chamfer: float | None
    fscore: float | None
    gaussians: int | None
    resolution: str
    mesh_status: str
    per_patch: tuple[PatchEvaluation, ...]


@dataclass(frozen=True)
class Finding:
    severity: str
    message: str


@dataclass(frozen=True)
class Validation:
    """reports/validation.json: the counts and every finding."""

    images: int | None
    registered: int | None
    points: int | None
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class SplitPatch:
    patch_id: str
    cameras: int | None
    points: int | None
    core_cameras: int | None
    core_points: int | None
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """reports/split.json and the layout picture (None when absent)."""

    decision: str
    patches: tuple[SplitPatch, ...]
    layout_png: bytes | None


@dataclass(frozen=True)
class CurvePoint:
    step: int
    loss: float | None
    heldout_psnr: float | None


@dataclass(frozen=True)
class PatchTraining:
    """One patch's training: what it ended with, how it got there, or why it did not."""

    patch_id: str
    metrics: TrainedMetrics | Missing
    curve: tuple[CurvePoint, ...] | Missing
    heldout_png: bytes | None
    attempts: tuple[Attempt, ...]    # attempts.json, or the failed record's when training failed
    failed: bool                     # a pN.failed.json is there: the recovery ladder ran out


@dataclass(frozen=True)
class PartitionCost:
    """What splitting costs, from the partition check made with the workspace's current settings."""

    record: PartitionCheck
    worst_view_png: bytes | None


@dataclass(frozen=True)
class RunReport:
    """Everything on the page."""

    workspace: str
    written_at: str
    outcome: str
    version: str
    seconds: float | None
    stage_rows: tuple[tuple[str, str, str, str], ...]
    evaluation: Evaluation | Missing
    validation: Validation | Missing
    split: Split | Missing
    training: tuple[PatchTraining, ...] | Missing
    evaluation_grid_png: bytes | None
    merge: dict | Missing
    mesh: dict | Missing
    partition: PartitionCost | Missing


def _shown(workspace: Workspace, path: Path) -> str:
    """``path`` as the user knows it: relative to the workspace."""
    try:
        return str(path.relative_to(workspace.root))
    except ValueError:
        return str(path)


def _json_object(workspace: Workspace, path: Path, what: str, stage: str) -> dict | Missing:
    if not path.exists():
        return Missing(f"{_shown(workspace, path)} is missing: the {stage} stage did not run to the end")
    try:
        return read_json_object(path, what)
    except InputError as error:
        return Missing(error.one_line())


def _png(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_evaluation(workspace: Workspace) -> Evaluation | Missing:
    content = _json_object(workspace, workspace.evaluation_report, "evaluation report", "evaluate")
    if isinstance(content, Missing):
        return content
    per_patch = (content.get("images") or {}).get("per_patch") or {}
    rows = tuple(PatchEvaluation(patch_id, _count(row.get("num_views")) or 0, _number(row.get("psnr")),
                                 _number(row.get("ssim")), _number(row.get("lpips")), tuple(map(str, row.get("notes") or ())))
                 for patch_id, row in sorted(per_patch.items(), key=lambda item: patch_number(item[0])))
    return Evaluation(
        psnr=_number(content.get("psnr")), psnr_colour_corrected=_number(content.get("psnr_colour_corrected")),
        ssim=_number(content.get("ssim")), lpips=_number(content.get("lpips")),
        lpips_status=str(content.get("lpips_status") or ""), chamfer=_number(content.get("chamfer")),
        fscore=_number(content.get("fscore")), gaussians=_count(content.get("num_gaussians")),
        resolution=str(content.get("resolution") or ""), mesh_status=str(content.get("mesh_status") or ""),
        per_patch=rows)


def read_validation(workspace: Workspace) -> Validation | Missing:
    content = _json_object(workspace, workspace.validation_report, "validation report", "validate")
    if isinstance(content, Missing):
        return content
    images, unregistered = _count(content.get("num_images")), _count(content.get("num_unregistered_images"))
    findings = tuple(Finding(str(item.get("severity", "")), str(item.get("message", "")))
                     for item in content.get("findings") or () if isinstance(item, dict))
    return Validation(images=images,
                      registered=images - unregistered if images is not None and unregistered is not None else None,
                      points=_count((content.get("stats") or {}).get("num_points")), findings=findings)


def read_split(workspace: Workspace) -> Split | Missing:
    # split.json rather than SplitLayout (data/patches/pN/patch.json): only the report holds the flags.
    content = _json_object(workspace, workspace.split_report, "split report", "split")
    if isinstance(content, Missing):
        return content
    patches = tuple(SplitPatch(str(row.get("id", "?")), _count(row.get("num_cameras")), _count(row.get("num_points")),
                               _count(row.get("num_core_cameras")), _count(row.get("num_core_points")),
                               tuple(map(str, row.get("flags") or ())))
                    for row in content.get("patches") or () if isinstance(row, dict))
    return Split(str(content.get("decision") or ""), patches, _png(workspace.split_layout_png))


def _optional(value: str | None) -> float | None:
    return float(value) if value not in ("", None) else None


def read_curve(path: Path) -> tuple[CurvePoint, ...]:
    """curve.csv: a row per step (step, attempt, loss, heldout_psnr, ...); held-out PSNR only at evaluations."""
    with open(path, encoding="utf-8", newline="") as file:
        return tuple(CurvePoint(int(float(row["step"])), _optional(row.get("loss")), _optional(row.get("heldout_psnr")))
                     for row in csv.DictReader(file))


def _patch_ids(workspace: Workspace, split: Split | Missing) -> list[str]:
    """The split's patches, and any other with a training folder or a failed record."""
    ids = {patch.patch_id for patch in split.patches} if isinstance(split, Split) else set()
    ids |= set(patch_ids_in(workspace.trained_dir))
    if workspace.trained_dir.is_dir():
        ids |= {path.name.removesuffix(".failed.json") for path in workspace.trained_dir.glob("p*.failed.json")}
    return sorted((pid for pid in ids if is_patch_id(pid)), key=patch_number)


def read_patch_training(workspace: Workspace, patch_id: str) -> PatchTraining:
    trained = workspace.patch(patch_id).trained_dir
    failed_record = failed_record_of(trained)
    metrics_file, curve_file = trained / METRICS_FILE, trained / "curve.csv"
    metrics: TrainedMetrics | Missing
    if metrics_file.exists():
        try:
            metrics = TrainedMetrics.load(metrics_file)
        except InputError as error:
            metrics = Missing(error.one_line())
    else:
        metrics = Missing(f"{_shown(workspace, metrics_file)} is missing: the patch was not trained to the end")
    if curve_file.exists():
        try:
            curve: tuple[CurvePoint, ...] | Missing = read_curve(curve_file)
        except (ValueError, KeyError) as error:
            curve = Missing(f"{_shown(workspace, curve_file)}: not a readable training curve ({error})")
    else:
        curve = Missing(f"{_shown(workspace, curve_file)} is missing")
    attempts: tuple[Attempt, ...] = ()
    for record in (failed_record, trained / ATTEMPTS_FILE):  # a failure's record is the newer when both are there
        if record.exists():
            try:
                attempts = tuple(AttemptsRecord.load(record).attempts)
            except InputError:
                continue
            break
    return PatchTraining(patch_id, metrics, curve, _png(trained / "heldout.png"), attempts, failed_record.exists())


def read_training(workspace: Workspace, split: Split | Missing) -> tuple[PatchTraining, ...] | Missing:
    ids = _patch_ids(workspace, split)
    if not ids:
        return Missing(f"no patch was trained: {_shown(workspace, workspace.trained_dir)} holds no patch")
    return tuple(read_patch_training(workspace, patch_id) for patch_id in ids)


def read_partition_check(workspace: Workspace) -> PartitionCost | Missing:
    """The partition check if one was made with these settings on this scene (an older one would mislead)."""
    report = _shown(workspace, workspace.partition_report)
    if not workspace.partition_report.is_file():
        return Missing("not measured: `patchsplat check-partition` trains the scene as one model too and compares "
                       f"(writes {report})")
    from patchsplat.config import load_params
    from patchsplat.partition_check import current_partition_check

    try:
        record = current_partition_check(workspace, load_params(workspace.params_file))
    except InputError as error:
        return Missing(error.one_line())
    if record is None:
        return Missing(f"{report} was made with other settings or another scene: run `patchsplat check-partition` again")
    return PartitionCost(record, _png(workspace.partition_png))


def collect(workspace: Workspace, stage_rows: list[tuple[str, str, str, str]], outcome: str, written_at: str,
            version: str, seconds: float | None) -> RunReport:
    split = read_split(workspace)
    return RunReport(
        workspace=str(workspace.root.resolve()), written_at=written_at, outcome=outcome, version=version, seconds=seconds,
        stage_rows=tuple(tuple(map(str, row)) for row in stage_rows),
        evaluation=read_evaluation(workspace), validation=read_validation(workspace), split=split,
        training=read_training(workspace, split), evaluation_grid_png=_png(workspace.evaluation_grid),
        merge=_json_object(workspace, workspace.merge_report, "merge report", "merge"),
        mesh=_json_object(workspace, workspace.mesh_report, "mesh report", "mesh"),
        partition=read_partition_check(workspace))
