"""Training one patch as a pipeline step: the run, its MLflow record and its summary table."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from patchsplat.config import TrackingConfig, TrainConfig
from patchsplat.console import console
from patchsplat.tracking import flatten, tracked_run
from patchsplat.train.loop import failed_attempts_path, train_patch

ARTIFACTS = ("metrics.json", "curve.csv", "heldout.png", "attempts.json", "settings.json")


def print_training_summary(patch_id: str, metrics: dict) -> None:
    table = Table(title=f"patch {patch_id}: trained")
    table.add_column("held-out PSNR", justify="right")
    table.add_column("SSIM", justify="right")
    table.add_column("Gaussians", justify="right")
    table.add_column("steps/s", justify="right")
    table.add_column("peak memory (est.)", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("backend")
    table.add_row(
        f"{metrics['heldout_psnr']:.2f} dB", f"{metrics['heldout_ssim']:.3f}", str(metrics["gaussians"]),
        f"{metrics['steps_per_second']:.1f}" if metrics["steps_per_second"] else "-",
        f"{metrics['peak_memory_mb']:.0f} MB ({metrics['memory_estimate_mb']:.0f})", str(metrics["attempts"]),
        f"{metrics['backend']} on {metrics['device']}",
    )
    console.print(table)


def train_patch_stage(patch_id: str, *, patch_dir: Path, prepared_dir: Path, out_dir: Path, checkpoint_dir: Path,
                      config: TrainConfig, tracking: TrackingConfig, resume: bool, workspace: Path = Path(".")) -> dict:
    with tracked_run(tracking, workspace, f"train@{patch_id}", tags={"patch": patch_id, "stage": "train"}) as tracker:
        tracker.params(flatten("train", config.model_dump(mode="json")))

        def log(message: str) -> None:
            console.print(f"[{patch_id}] {message}", markup=False, highlight=False)

        try:
            metrics = train_patch(patch_dir, prepared_dir, out_dir, config, checkpoint_dir=checkpoint_dir, resume=resume,
                                  log=log, on_metrics=lambda record, step: tracker.metrics(record, step))
        except Exception:
            tracker.tags({"outcome": "failed"})
            tracker.artifact(failed_attempts_path(out_dir))
            raise
        tracker.metrics({f"final_{key}": value for key, value in metrics.items()})
        tracker.tags({"outcome": "recovered" if metrics["recovered"] else "succeeded"})
        for name in ARTIFACTS:
            tracker.artifact(out_dir / name)
    print_training_summary(patch_id, metrics)
    return metrics
