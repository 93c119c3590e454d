"""Training one patch as a pipeline step: the run, its MLflow record and its summary table."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from patchsplat.config import TrackingConfig
from patchsplat.profiles import ResolvedTrain
from patchsplat.console import console
from patchsplat.tracking import flatten, tracked_run
from patchsplat.train.loop import train_patch
from patchsplat.train.records import ATTEMPTS_FILE, METRICS_FILE, Attempt, AttemptsRecord, TrainedMetrics
from patchsplat.workspace import failed_record_of

ARTIFACTS = (METRICS_FILE, "curve.csv", "heldout.png", ATTEMPTS_FILE, "settings.json")


def print_training_summary(patch_id: str, metrics: TrainedMetrics) -> None:
    table = Table(title=f"patch {patch_id}: trained")
    table.add_column("held-out PSNR", justify="right")
    table.add_column("SSIM", justify="right")
    table.add_column("Gaussians", justify="right")
    table.add_column("steps/s", justify="right")
    table.add_column("peak memory (est.)", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("backend")
    table.add_row(
        f"{metrics.heldout_psnr:.2f} dB", f"{metrics.heldout_ssim:.3f}", str(metrics.gaussians),
        f"{metrics.steps_per_second:.1f}" if metrics.steps_per_second else "-",
        f"{metrics.peak_memory_mb:.0f} MB ({metrics.memory_estimate_mb:.0f})", str(metrics.attempts),
        f"{metrics.backend} on {metrics.device}",
    )
    console.print(table)


def attempt_lines(attempts: list[Attempt]) -> list[str]:
    """One line per training attempt: how it ended and what the recovery ladder changed next."""
    lines = []
    for attempt in attempts:
        line = f"attempt {attempt.number}: {attempt.outcome}"
        if attempt.failure_kind:
            line += f" ({attempt.failure_kind} at step {attempt.failed_at_step}: {attempt.reason})"
        if attempt.resumed_at_steps:
            line += " (resumed from a checkpoint at step " + ", ".join(map(str, attempt.resumed_at_steps)) + ")"
        if attempt.next_change:
            line += " -> next: " + ", ".join(f"{key} {value}" for key, value in attempt.next_change.items())
        lines.append(line)
    return lines


def _tag_attempts(tracker, attempts_file: Path) -> None:
    """The recovery attempts as tags (``attempt.1`` ...), readable in the MLflow UI without opening artifacts."""
    if not attempts_file.exists():
        return
    lines = attempt_lines(AttemptsRecord.load(attempts_file).attempts)
    # MLflow tag values are capped (8,000 characters in its stores); a reason line is far shorter.
    tracker.tags({f"attempt.{index}": line[:4000] for index, line in enumerate(lines, start=1)})


def describe_profile(settings: ResolvedTrain) -> str:
    """One line: the profile and the settings it chose that matter most for time and quality."""
    config = settings.config
    chosen = [f"{config.steps} steps", f"images at 1/{config.resolution_factor}", f"cap {config.strategy.cap_max:,} Gaussians"]
    return (f"profile {settings.profile}: " + ", ".join(chosen) +
            " (every setting and where it came from: settings.json, or `patchsplat config --patch ID`)")


def train_patch_stage(patch_id: str, *, patch_dir: Path, prepared_dir: Path, out_dir: Path, checkpoint_dir: Path,
                      settings: ResolvedTrain, tracking: TrackingConfig, resume: bool,
                      workspace: Path = Path(".")) -> TrainedMetrics:
    config = settings.config
    with tracked_run(tracking, workspace, f"train@{patch_id}", tags={"patch": patch_id, "stage": "train",
                                                                     "profile": settings.profile}) as tracker:
        tracker.params(flatten("train", config.model_dump(mode="json")))

        def log(message: str) -> None:
            console.print(f"[{patch_id}] {message}", markup=False, highlight=False)

        log(describe_profile(settings))
        try:
            metrics = train_patch(patch_dir, prepared_dir, out_dir, config, checkpoint_dir=checkpoint_dir, resume=resume,
                                  log=log, on_metrics=lambda record, step: tracker.metrics(record, step),
                                  profile=settings.profile, origins=settings.origins)
        except Exception:
            tracker.tags({"outcome": "failed"})
            tracker.artifact(failed_record_of(out_dir))
            _tag_attempts(tracker, failed_record_of(out_dir))
            raise
        tracker.metrics({f"final_{key}": value for key, value in metrics.model_dump(mode="json").items()})
        tracker.tags({"outcome": "recovered" if metrics.recovered else "succeeded", "resumed": str(metrics.resumed).lower()})
        _tag_attempts(tracker, out_dir / ATTEMPTS_FILE)
        for name in ARTIFACTS:
            tracker.artifact(out_dir / name)
    print_training_summary(patch_id, metrics)
    return metrics
