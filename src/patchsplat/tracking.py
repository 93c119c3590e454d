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


def _experiment_id(config: TrackingConfig, workspace: Path) -> str:
    """The experiment's id, creating the store and the experiment the first time.

    Several processes (patches trained in parallel) may reach a new SQLite store at once; the
    loser of the table-creation race gets an OperationalError and simply tries again.
    """
    import logging
    import time

    import mlflow

    # MLflow's database set-up logs at INFO on a new store: noise in a training log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
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
    if config.enabled and os.environ.get("PATCHSPLAT_TRACKING", "1") != "0":
        _experiment_id(config, workspace)


@contextlib.contextmanager
def tracked_run(config: TrackingConfig, workspace: Path, name: str, tags: dict[str, str] | None = None) -> Iterator[Tracker]:
    """An MLflow run for the duration of the block (nested under ``PATCHSPLAT_MLFLOW_PARENT_RUN_ID`` if set)."""
    if not config.enabled or os.environ.get("PATCHSPLAT_TRACKING", "1") == "0":
        yield Tracker()
        return
    import mlflow

    experiment_id = _experiment_id(config, workspace)
    parent = os.environ.get("PATCHSPLAT_MLFLOW_PARENT_RUN_ID")
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name(name), parent_run_id=parent, tags=tags or {}) as run:
        yield Tracker(run)
