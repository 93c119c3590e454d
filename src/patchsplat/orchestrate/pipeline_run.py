"""The MLflow parent run of one pipeline run; the stages' own runs become its children.

The parent is created with MLflow's client API (not the fluent ``mlflow.start_run``): the flow's
tasks run in other threads, where a fluent "active run" would not be visible, and the stage
processes attach their runs to it through :data:`patchsplat.tracking.ENV_PARENT_RUN_ID`.

At the end the parent records the workspace as it then is — every stage's metrics (also of stages
DVC skipped because nothing changed, so any two pipeline runs compare in full), the reports and
plots, and ``dvc.lock``'s hashes of inputs and outputs as tags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from patchsplat.config import Params
from patchsplat.errors import PatchsplatError
from patchsplat.orchestrate.dvc_lock import lock_entries, pipeline_hash_tags, stage_hash_tags
from patchsplat.partition_check.tracking import partition_metrics
from patchsplat.tracking import (
    ENV_FLOW_RUN_ID, ENV_PARENT_RUN_ID, context_tags, experiment_id, flat_numbers, flatten, tracking_enabled, tracking_uri,
)
from patchsplat.train.records import ATTEMPTS_FILE, METRICS_FILE, TrainedMetrics
from patchsplat.workspace import Workspace

PIPELINE_KIND = "pipeline"
PATCH_ARTIFACTS = (METRICS_FILE, "heldout.png", ATTEMPTS_FILE)


def _report_metrics(workspace: Workspace) -> tuple[tuple[Path, str, int], ...]:
    """The reports every pipeline run is judged on: (file, metric prefix, depth of nesting kept)."""
    return ((workspace.validation_report, "validate", 2), (workspace.split_report, "split", 1),
            (workspace.evaluation_report, "evaluate", 4))


def _report_artifacts(workspace: Workspace) -> tuple[Path, ...]:
    return (workspace.validation_report, workspace.split_report, workspace.split_layout_png,
            workspace.evaluation_report, workspace.evaluation_grid, workspace.run_report)


@dataclass
class PipelineRun:
    """A started parent run (``run_id`` None when tracking is off: every method is then a no-op)."""

    workspace: Workspace
    params: Params
    run_id: str | None = None
    flow_run_id: str | None = None
    experiment: str | None = None
    _client: object = field(default=None, repr=False)

    @classmethod
    def start(cls, workspace: Workspace, params: Params, flow_run_id: str | None, run_name: str,
              tags: dict[str, str] | None = None) -> "PipelineRun":
        run = cls(workspace, params, flow_run_id=flow_run_id)
        if not tracking_enabled(params.tracking):
            return run
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        run.experiment = experiment_id(params.tracking, workspace.root)
        run._client = MlflowClient(tracking_uri(params.tracking, workspace.root))
        all_tags = {**context_tags(workspace.root), "patchsplat.kind": PIPELINE_KIND, "workspace": str(workspace.root.resolve()),
                    **({"prefect.flow_run_id": flow_run_id} if flow_run_id else {}), **(tags or {})}
        created = run._client.create_run(run.experiment, run_name=run_name, tags=all_tags)
        run.run_id = created.info.run_id
        settings = flatten("", params.model_dump(mode="json", by_alias=True))
        batch = [Param(key, str(value)[:6000]) for key, value in settings.items()]
        for start in range(0, len(batch), 100):  # MLflow takes at most 100 params per call
            run._client.log_batch(run.run_id, params=batch[start : start + 100])
        return run

    def child_environment(self) -> dict[str, str]:
        """What a stage process needs to log its run as this run's child."""
        environment = {}
        if self.run_id:
            environment[ENV_PARENT_RUN_ID] = self.run_id
        if self.flow_run_id:
            environment[ENV_FLOW_RUN_ID] = self.flow_run_id
        return environment

    def children(self, stage: str | None = None) -> list:
        if not self.run_id:
            return []
        query = f"tags.mlflow.parentRunId = '{self.run_id}'"
        if stage:
            query += f" and tags.`dvc.stage` = '{stage}'"
        return self._client.search_runs([self.experiment], filter_string=query, max_results=1000)

    def tag_stage(self, stage: str) -> None:
        """After DVC has recorded a stage: its lock hashes on the stage's child run(s) of this run."""
        if not self.run_id:
            return
        entry = lock_entries(self.workspace).get(stage)
        if not entry:
            return
        for child in self.children(stage):
            for key, value in stage_hash_tags(entry).items():
                self._client.set_tag(child.info.run_id, key, value)

    def tag(self, values: dict[str, str]) -> None:
        if self.run_id:
            for key, value in values.items():
                self._client.set_tag(self.run_id, key, str(value)[:4000])

    def finish(self, outcome: str, patch_ids: list[str]) -> None:
        """Record the workspace's metrics, reports and lock hashes; close the run (FINISHED, KILLED when
        interrupted, else FAILED)."""
        if not self.run_id:
            return
        import time

        from mlflow.entities import Metric

        numbers: dict[str, float] = {}
        for path, prefix, depth in _report_metrics(self.workspace):
            numbers.update(flat_numbers(_read_json(path), prefix, depth))
        for patch_id in patch_ids:
            metrics = _trained_metrics(self.workspace.patch(patch_id).trained_dir / METRICS_FILE)
            numbers.update(flat_numbers(metrics, f"train.{patch_id}", 1))
        partition = _current_partition_check(self.workspace, self.params)
        if partition is not None:
            numbers.update(partition_metrics(partition))
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in numbers.items()]
        for start in range(0, len(metrics), 1000):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
        for path in _report_artifacts(self.workspace):
            if path.exists():
                self._client.log_artifact(self.run_id, str(path), "reports")
        if partition is not None:
            for path in (self.workspace.partition_report, self.workspace.partition_png):
                if path.exists():
                    self._client.log_artifact(self.run_id, str(path), "reports")
        for patch_id in patch_ids:
            for name in PATCH_ARTIFACTS:
                file = self.workspace.patch(patch_id).trained_dir / name
                if file.exists():
                    self._client.log_artifact(self.run_id, str(file), f"patches/{patch_id}")
        self.tag({**pipeline_hash_tags(self.workspace), "patchsplat.outcome": outcome})
        # KILLED for a run stopped by Ctrl-C/SIGTERM: MLflow's status for a run ended by the user.
        status = {"succeeded": "FINISHED", "interrupted": "KILLED"}.get(outcome, "FAILED")
        self._client.set_terminated(self.run_id, status)


def _current_partition_check(workspace: Workspace, params: Params):
    """The partition check made with this run's settings on this scene (None: none, or an unreadable one: a run
    still closes its MLflow run)."""
    from patchsplat.partition_check import current_partition_check

    try:
        return current_partition_check(workspace, params)
    except PatchsplatError:
        return None


def _trained_metrics(path: Path) -> dict:
    """A patch's training metrics; {} when it has none (a failed or interrupted run still closes its MLflow run)."""
    try:
        return TrainedMetrics.load(path).model_dump()
    except PatchsplatError:
        return {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
