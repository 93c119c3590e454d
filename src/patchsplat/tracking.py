"""MLflow tracking with embedded defaults: a SQLite file in the workspace, artifacts in a fixed folder.

``MLFLOW_TRACKING_URI`` (a team's server) wins over params.yaml's ``tracking.tracking_uri``,
which wins over the default ``sqlite:///<workspace>/mlflow.db``. The experiment's artifact
location is set explicitly (MLflow would otherwise make it relative to whatever the current
directory was when the experiment was created).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from patchsplat.config import TrackingConfig

# MLflow run names may not contain '@' (DVC's foreach stage names do): train@p0 -> train-p0.
_FORBIDDEN_IN_NAMES = "@"

# Set by the Prefect flow for the stage processes it starts (through DVC), so their runs become
# children of the pipeline run and carry the flow run's id.
ENV_PARENT_RUN_ID = "PATCHSPLAT_MLFLOW_PARENT_RUN_ID"
ENV_FLOW_RUN_ID = "PATCHSPLAT_PREFECT_FLOW_RUN_ID"


def tracking_uri(config: TrackingConfig, workspace: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if config.tracking_uri:
        return config.tracking_uri
    return f"sqlite:///{(workspace / 'mlflow.db').resolve()}"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested settings as MLflow params: ``train.strategy.cap_max`` -> value (lists as their text)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return flat
    return {prefix: value if not isinstance(value, (list, tuple)) else str(list(value))}


def flat_numbers(data: Any, prefix: str = "", max_depth: int = 3) -> dict[str, float]:
    """The numbers of a JSON report as MLflow metrics (``images.per_patch.p0.psnr`` -> value).

    Lists, strings, booleans, None and anything deeper than ``max_depth`` are left out: a report's
    numbers are what runs get compared on, its text stays in the report artifact.
    """
    numbers: dict[str, float] = {}
    if isinstance(data, dict) and max_depth > 0:
        for key, value in data.items():
            numbers.update(flat_numbers(value, f"{prefix}.{key}" if prefix else str(key), max_depth - 1))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and data == data and prefix:
        numbers[prefix] = float(data)
    return numbers


def git_commit(workspace: Path) -> str | None:
    """The workspace's git commit (with ``-dirty`` when tracked files differ from it), or None outside git."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=workspace,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def context_tags(workspace: Path) -> dict[str, str]:
    """Tags every patchsplat run carries: the code version and, under the flow, the Prefect flow run."""
    tags = {}
    commit = git_commit(workspace)
    if commit:
        tags["git.commit"] = commit
    if os.environ.get(ENV_FLOW_RUN_ID):
        tags["prefect.flow_run_id"] = os.environ[ENV_FLOW_RUN_ID]
    return tags


def run_name(name: str) -> str:
    for character in _FORBIDDEN_IN_NAMES:
        name = name.replace(character, "-")
    return name


class Tracker:
    """A started MLflow run, or nothing at all when tracking is off (every method is then a no-op)."""

    def __init__(self, run=None) -> None:
        self.run = run

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.info.run_id

    def params(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        import mlflow

        items = list(values.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(items[start : start + 100]))

    def metrics(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.run is None:
            return
        import mlflow

        numbers = {run_name(key).replace("/", "."): float(value) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value}
        if numbers:
            mlflow.log_metrics(numbers, step=step)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        if self.run is None or not Path(path).exists():
            return
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=folder)

    def tags(self, values: dict[str, str]) -> None:
        if self.run is None:
            return
        import mlflow

        mlflow.set_tags(values)


def tracking_enabled(config: TrackingConfig) -> bool:
    """Runs are logged unless params.yaml turns tracking off or ``PATCHSPLAT_TRACKING=0`` (the tests) does."""
    return config.enabled and os.environ.get("PATCHSPLAT_TRACKING", "1") != "0"


def quiet_store_logs() -> None:
    """MLflow's database set-up logs at INFO on a new store: noise in a training log or above a table."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def experiment_id(config: TrackingConfig, workspace: Path) -> str:
    """The experiment's id, creating the store and the experiment the first time.

    Several processes (patches trained in parallel) may reach a new SQLite store at once; the
    loser of the table-creation race gets an OperationalError and simply tries again.
    """
    import time

    import mlflow

    quiet_store_logs()
    mlflow.set_tracking_uri(tracking_uri(config, workspace))
    for attempt in range(5):
        try:
            experiment = mlflow.get_experiment_by_name(config.experiment)
            if experiment is not None:
                return experiment.experiment_id
            artifacts = (workspace / config.artifact_dir).resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            return mlflow.create_experiment(config.experiment, artifact_location=artifacts.as_uri())
        except Exception:  # noqa: BLE001 - sqlalchemy/MLflow errors of a concurrent first use
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def prepare_store(config: TrackingConfig, workspace: Path) -> None:
    """Create the tracking store and experiment now (before processes start logging in parallel)."""
    if tracking_enabled(config):
        experiment_id(config, workspace)


@contextlib.contextmanager
def tracked_run(config: TrackingConfig, workspace: Path, name: str, tags: dict[str, str] | None = None) -> Iterator[Tracker]:
    """An MLflow run for the duration of the block (nested under ``PATCHSPLAT_MLFLOW_PARENT_RUN_ID`` if set)."""
    if not tracking_enabled(config):
        yield Tracker()
        return
    import mlflow

    experiment = experiment_id(config, workspace)
    parent = os.environ.get(ENV_PARENT_RUN_ID) or None
    all_tags = {**context_tags(workspace), "dvc.stage": name, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment, run_name=run_name(name), parent_run_id=parent, tags=all_tags) as run:
        yield Tracker(run)


@contextlib.contextmanager
def stage_run(config: TrackingConfig, name: str, section: str, settings: Any, workspace: Path = Path("."),
              tags: dict[str, str] | None = None) -> Iterator[Tracker]:
    """A DVC stage's MLflow run: its settings logged as ``section.*`` params, ``outcome`` tagged at the end.

    Under ``patchsplat run`` it is a child of the pipeline run (one per stage and per patch).
    """
    stage, _, patch = name.partition("@")
    stage_tags = {"stage": stage, **({"patch": patch} if patch else {}), **(tags or {})}
    with tracked_run(config, workspace, name, tags=stage_tags) as tracker:
        tracker.params(flatten(section, settings.model_dump(mode="json") if hasattr(settings, "model_dump") else settings))
        try:
            yield tracker
        except BaseException:
            tracker.tags({"outcome": "failed"})
            raise
        tracker.tags({"outcome": "succeeded"})
