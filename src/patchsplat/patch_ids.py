"""How the patch ids reach ``dvc.yaml``, and how they are kept in sync with the split.

DVC resolves the whole pipeline before running anything, so the list of per-patch
stages (``prepare@p0``, ``prepare@p1``, ...) must be known before the split has run.
patchsplat keeps that list in ``params.yaml`` itself: the keys of ``patch_overrides``
(one per patch, each holding that patch's training overrides). ``dvc.yaml`` iterates
over them with ``foreach: ${patch_overrides}``, and each per-patch stage depends on
``train`` plus its own ``patch_overrides.<id>``, so editing one patch's override reruns
only that patch.

The split stage refuses to run when its patch ids differ from those keys. Then
``patchsplat repro`` re-syncs: it computes the new ids, rewrites the keys (keeping the
overrides of ids that survive, comments and layout preserved), deletes the outputs and
``dvc.lock`` entries of per-patch stages whose id is gone, and runs ``dvc repro``.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from patchsplat.errors import InputError

PER_PATCH_KEY = "${key}"


@dataclass(frozen=True)
class SyncResult:
    old_ids: list[str]
    new_ids: list[str]
    removed_outputs: list[str]
    removed_lock_entries: list[str]

    @property
    def changed(self) -> bool:
        return self.old_ids != self.new_ids


def _round_trip_yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def params_patch_ids(params_path: Path) -> list[str]:
    from patchsplat.config import load_params

    return list(load_params(params_path).patch_overrides)


def check_patch_ids(new_ids: list[str], params_path: Path) -> None:
    """Raise a one-line error telling the user to run ``patchsplat repro`` when the ids differ."""
    current = params_patch_ids(params_path)
    if current != new_ids:
        raise InputError(
            params_path,
            f"the split makes {len(new_ids)} patches ({_span(new_ids)}) but patch_overrides lists "
            f"{len(current)} ({_span(current)}): run `patchsplat repro` to re-sync the patch ids and reproduce",
            kind="patch_ids_out_of_sync",
        )


def _span(ids: list[str]) -> str:
    return "none" if not ids else (ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}")


def _per_patch_outputs(dvc_yaml: Path) -> list[str]:
    """Output path templates (with ``${key}``) of the foreach stages over the patch ids."""
    from ruamel.yaml import YAML

    stages = (YAML(typ="safe").load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    templates = []
    for stage in stages.values():
        if isinstance(stage, dict) and str(stage.get("foreach", "")).strip() == "${patch_overrides}":
            for section in ("outs", "metrics", "plots"):
                for entry in stage.get("do", {}).get(section, []) or []:
                    path = next(iter(entry)) if isinstance(entry, dict) else entry
                    if PER_PATCH_KEY in str(path):
                        templates.append(str(path))
    return templates


def sync_patch_ids(new_ids: list[str], workspace: Path = Path(".")) -> SyncResult:
    """Make ``params.yaml``'s patch_overrides keys equal ``new_ids``; remove what belonged to dropped ids."""
    params_path, lock_path, dvc_yaml = workspace / "params.yaml", workspace / "dvc.lock", workspace / "dvc.yaml"
    yaml = _round_trip_yaml()
    document = yaml.load(params_path.read_text(encoding="utf-8"))
    overrides = document.get("patch_overrides") or {}
    old_ids = list(overrides)
    removed_outputs: list[str] = []
    removed_entries: list[str] = []
    if old_ids != new_ids:
        from ruamel.yaml.comments import CommentedMap

        synced = CommentedMap()
        for patch_id in new_ids:
            synced[patch_id] = overrides.get(patch_id) if overrides.get(patch_id) else CommentedMap()
            if not synced[patch_id]:
                synced[patch_id].fa.set_flow_style()
        document["patch_overrides"] = synced
        from patchsplat.atomic import atomic_file

        with atomic_file(params_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            yaml.dump(document, handle)

    # Outputs of dropped ids: whatever matches a per-patch output template with an id not in new_ids
    # (and a dropped patch's failed-training record, data/trained/<id>.failed.json).
    keep = set(new_ids)
    for template in _per_patch_outputs(dvc_yaml) if dvc_yaml.exists() else []:
        prefix, _, suffix = template.partition(PER_PATCH_KEY)
        # data/trained/${key}/splats.ply: the whole data/trained/<id> folder is that patch's.
        suffix = "" if suffix.startswith("/") else suffix
        owned = re.compile(re.escape(prefix) + r"(p\d+)(\.failed\.json)?" + re.escape(suffix))
        for match in sorted(glob.glob(glob.escape(str(workspace)) + "/" + prefix + "*" + suffix)):
            path = Path(match)
            # Matched on the path relative to the workspace: str(Path) drops the template's trailing
            # "/", so slicing the absolute string would misread every id (and delete kept patches).
            found = owned.fullmatch(path.relative_to(workspace).as_posix())
            if found and found.group(1) not in keep and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed_outputs.append(path.relative_to(workspace).as_posix())

    if lock_path.exists():
        lock = yaml.load(lock_path.read_text(encoding="utf-8"))
        stages = lock.get("stages", {})
        for name in list(stages):
            stage, at, patch_id = name.partition("@")
            if at and patch_id.startswith("p") and patch_id[1:].isdigit() and patch_id not in keep:
                del stages[name]
                removed_entries.append(name)
        if removed_entries:
            from patchsplat.atomic import atomic_file

            with atomic_file(lock_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                yaml.dump(lock, handle)
    return SyncResult(old_ids, list(new_ids), removed_outputs, removed_entries)


def _dvc(*args: str, workspace: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace)
    if completed.returncode != 0:
        raise InputError("dvc " + " ".join(args), f"failed with exit status {completed.returncode}", kind="dvc_failed")


def _train_in_parallel(patch_ids: list[str], jobs: int, workspace: Path) -> None:
    """``dvc repro -s train@<id>`` for several patches at once, one CPU thread each.

    DVC takes a repository lock per ``repro`` but releases it while the stage's command runs; with
    ``-s`` (this stage only) concurrent runs in one workspace work, which is what lets independent
    patches train side by side (``--wait-for-lock``: two patches finishing together queue for the
    lock-file update instead of one failing). A stage whose
    lock entry were lost would only be re-run (and resume from its last checkpoint) by the final
    plain ``dvc repro``.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(patch_id: str) -> int:
        return subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "-s", f"train@{patch_id}"], cwd=workspace, env=environment).returncode

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = dict(zip(patch_ids, pool.map(one, patch_ids)))
    failed = [patch_id for patch_id, code in codes.items() if code != 0]
    if failed:
        raise InputError(f"dvc repro -s train@{failed[0]}", f"failed ({len(failed)} of {len(patch_ids)} patches failed: {', '.join(failed)})", kind="dvc_failed")


def planned_patch_ids(workspace: Path = Path(".")) -> list[str]:
    """The ids the split stage will produce with the current scene and params (plan only, nothing written)."""
    from patchsplat.colmap_arrays import read_model_arrays
    from patchsplat.config import load_params
    from patchsplat.scene_layout import locate_scene
    from patchsplat.scene_source import resolve_scene_dir
    from patchsplat.split import plan_split

    params = load_params(workspace / "params.yaml")
    layout = locate_scene(resolve_scene_dir(workspace / "data" / "scene"))
    plan = plan_split(read_model_arrays(layout.model_dir), params.split, params.validate_.robust_percentile, str(layout.model_dir))
    return [patch.patch_id for patch in plan.patches]


def repro(workspace: Path = Path("."), extra_args: tuple[str, ...] = (), jobs: int = 1) -> SyncResult:
    """Bring the scene up to date, re-sync the patch ids with the split, then ``dvc repro`` everything.

    With ``jobs`` > 1 the patches are trained ``jobs`` at a time (after everything they need is
    reproduced), then the rest of the pipeline runs.
    """
    _dvc("repro", "validate", workspace=workspace)
    result = sync_patch_ids(planned_patch_ids(workspace), workspace)
    if jobs > 1 and len(result.new_ids) > 1:
        from patchsplat.config import load_params
        from patchsplat.tracking import prepare_store

        _dvc("repro", "prepare", *extra_args, workspace=workspace)
        prepare_store(load_params(workspace / "params.yaml").tracking, workspace)
        _train_in_parallel(result.new_ids, jobs, workspace)
    _dvc("repro", *extra_args, workspace=workspace)
    return result
