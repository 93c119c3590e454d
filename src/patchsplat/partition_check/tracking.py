"""The partition check in MLflow: its own run, and its figures on the pipeline run of the same settings."""

from __future__ import annotations

from patchsplat.config import TrackingConfig
from patchsplat.partition_check.record import PartitionCheck
from patchsplat.tracking import tracked_run
from patchsplat.workspace import Workspace

METRIC_PREFIX = "partition"


def partition_metrics(record: PartitionCheck) -> dict[str, float]:
    """``partition.<name>`` for each of the record's headline numbers (the run comparison lists them)."""
    return {f"{METRIC_PREFIX}.{key}": float(value) for key, value in record.headline().items()}


def log_partition_check(tracking: TrackingConfig, workspace: Workspace, record: PartitionCheck) -> None:
    """A ``check-partition`` run holding the figures, the report and the worst view's PNG."""
    with tracked_run(tracking, workspace.root, "check-partition", tags={"stage": "check-partition"}) as tracker:
        tracker.params({"partition.split": record.split, "partition.budget": record.budget,
                        "partition.split_steps_factor": record.split_steps_factor,
                        "partition.steps": record.single.steps, "partition.cap_max": record.single.cap_max,
                        "partition.merged_steps": record.merged.steps})
        tracker.metrics(partition_metrics(record))
        tracker.artifact(workspace.partition_report, "reports")
        tracker.artifact(workspace.partition_png, "reports")
