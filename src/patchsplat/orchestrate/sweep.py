"""``patchsplat sweep PARAM VALUES [--patch ID]``: one pipeline run per value, then the comparison.

What users did by hand for a week (try init_scale 0.3, 0.5, 1.0 on the patch that crashed) as one
command. Each value is written into ``params.yaml`` and the ``reconstruct`` flow brings the
workspace up to date with it — DVC reruns only what the setting touches (with ``--patch``: that
patch, then merge/mesh/evaluate). Every run is an MLflow pipeline run tagged ``sweep.id``,
``sweep.param`` and ``sweep.value``.

The workspace's own setting is always part of the sweep and runs last (the baseline): the sweep
ends with ``params.yaml`` byte-for-byte as it was and the outputs matching it, so ``dvc status``
is clean afterwards. ``params.yaml`` is restored even when a run fails or the sweep is interrupted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from patchsplat.config import load_params, parse_params, parse_yaml_value, read_yaml
from patchsplat.errors import InputError, PatchsplatError
from patchsplat.workspace import Workspace

MISSING = object()


@dataclass
class SweepResult:
    sweep_id: str
    key: str                                              # the params.yaml key swept, dotted
    values: list[Any]                                     # in run order, the baseline last
    run_ids: dict[str, str] = field(default_factory=dict)  # value (as text) -> MLflow pipeline run id
    failures: dict[str, str] = field(default_factory=dict)  # value (as text) -> why its run failed


def parse_values(text: str) -> list[Any]:
    """``"0.3,0.5,1"`` -> [0.3, 0.5, 1]: each item read as a YAML scalar (numbers, true/false, text)."""
    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise InputError("VALUES", f"empty value in {text!r} (give them comma-separated, e.g. 0.3,0.5,1.0)",
                             kind="bad_sweep")
        values.append(parse_yaml_value(item, "VALUES"))
    return values


def sweep_key(param: str, patch_id: str | None) -> str:
    """The dotted params.yaml key: ``train.init_scale`` (or ``init_scale``) with ``--patch p1`` becomes
    ``patch_overrides.p1.init_scale``."""
    if patch_id is None:
        return param
    return f"patch_overrides.{patch_id}.{param.removeprefix('train.')}"


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return MISSING
        data = data[part]
    return data


def _with_value(document: dict, key: str, value: Any) -> dict:
    """A copy of the params mapping with ``key`` set (intermediate mappings created)."""
    import copy

    updated = copy.deepcopy(document)
    node = updated
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return updated


def check_sweep(params_path: Path, param: str, values: list[Any], patch_id: str | None) -> tuple[str, Any]:
    """Refuse a sweep before anything runs: unknown setting or patch, or a value the typed config rejects.

    Returns the key and the workspace's current (effective) value of it.
    """
    params = load_params(params_path)
    effective = params.model_dump(mode="json", by_alias=True)
    if patch_id is not None:
        if patch_id not in params.patch_overrides:
            raise InputError("--patch", f"no patch {patch_id!r} (patches: {', '.join(params.patch_overrides) or 'none'})",
                             kind="bad_sweep")
        current = _lookup(params.train_settings(patch_id).model_dump(mode="json"), param.removeprefix("train."))
    else:
        current = _lookup(effective, param)
    if current is MISSING or isinstance(current, dict):
        raise InputError("PARAM", f"{param!r} is not a setting{' of train' if patch_id else ''} in params.yaml",
                         kind="bad_sweep")
    key = sweep_key(param, patch_id)
    raw = read_yaml(params_path) or {}
    for value in values:
        parse_params(_with_value(raw, key, value), f"{key}={value!r}")
    return key, current


def _write_value(params_path: Path, key: str, value: Any) -> None:
    """Set one key in params.yaml keeping its comments and layout (ruamel round trip), atomically."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    from patchsplat.atomic import atomic_file

    handler = YAML(typ="rt")
    handler.preserve_quotes = True
    handler.width = 4096
    document = handler.load(params_path.read_text(encoding="utf-8"))
    node = document
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = CommentedMap()
        node = node[part]
    node[parts[-1]] = value
    with atomic_file(params_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handler.dump(document, handle)


def run_sweep(workspace: Path, param: str, values: list[Any], patch_id: str | None,
              run_pipeline: Callable[..., dict]) -> SweepResult:
    """Run the flow once per value (the workspace's own value last) and restore params.yaml.

    ``run_pipeline(workspace=..., run_tags=..., always_record=True)`` is the flow (a parameter so
    the sweep logic is independent of how the flow is run).
    """
    params_path = Workspace(workspace).params_file
    key, current = check_sweep(params_path, param, values, patch_id)
    ordered = [value for value in values if value != current] + [current]
    result = SweepResult(f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", key, ordered)
    original = params_path.read_bytes()
    try:
        for value in ordered:
            baseline = value == current
            if baseline:
                _restore(params_path, original)
            else:
                _write_value(params_path, key, value)
            tags = {"sweep.id": result.sweep_id, "sweep.param": key, "sweep.value": str(value),
                    "sweep.baseline": str(baseline).lower()}
            try:
                summary = run_pipeline(workspace=str(workspace), run_tags=tags, always_record=True)
            except PatchsplatError as error:  # that value's run failed; the others still run
                result.failures[str(value)] = error.problem
                continue
            if summary.get("mlflow_run_id"):
                result.run_ids[str(value)] = summary["mlflow_run_id"]
    finally:
        _restore(params_path, original)
    return result


def _restore(params_path: Path, original: bytes) -> None:
    from patchsplat.atomic import atomic_file

    if params_path.read_bytes() != original:
        with atomic_file(params_path) as tmp:
            Path(tmp).write_bytes(original)
