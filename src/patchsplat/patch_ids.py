"""How the patch ids reach ``dvc.yaml``, and how they are kept in sync with the split.

DVC resolves the whole pipeline before running anything, so the list of per-patch
stages (``prepare@p0``, ``prepare@p1``, ...) must be known before the split has run.
patchsplat keeps that list in ``params.yaml`` itself: the keys of ``patch_overrides``
(one per patch, each holding that patch's training overrides). ``dvc.yaml`` iterates
over them with ``foreach: ${patch_overrides}``, and each per-patch stage depends on
``train`` plus its own ``patch_overrides.<id>``, so editing one patch's override reruns
only that patch.

The split stage refuses to run when its patch ids differ from those keys. Then
``patchsplat repro`` (:mod:`patchsplat.orchestrate.repro`) and the flow re-sync: compute the new
ids, rewrite the keys (keeping the overrides of ids that survive, comments and layout preserved),
delete the outputs and ``dvc.lock`` entries of per-patch stages whose id is gone.
"""

from __future__ import annotations

import glob
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchsplat.errors import InputError
from patchsplat.workspace import PATCH_ID_PATTERN, Workspace, is_patch_id

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


def _load_yaml(loader, path: Path) -> Any:
    """``path`` read with the ruamel ``loader``; a damaged file (a hand edit, a crash mid-write by another
    tool) is an InputError naming it and the line, not a traceback."""
    from ruamel.yaml import YAMLError

    try:
        return loader.load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(path, f"not UTF-8 text (offset {error.start})", kind="corrupt_file") from None
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(path, f"not valid YAML{where}", kind="corrupt_file") from None


def _per_patch_outputs(dvc_yaml: Path) -> list[str]:
    """Output path templates (with ``${key}``) of the foreach stages over the patch ids."""
    from ruamel.yaml import YAML

    stages = (_load_yaml(YAML(typ="safe"), dvc_yaml) or {}).get("stages", {})
    templates = []
    for stage in stages.values():
        if isinstance(stage, dict) and str(stage.get("foreach", "")).strip() == "${patch_overrides}":
            for section in ("outs", "metrics", "plots"):
                for entry in stage.get("do", {}).get(section, []) or []:
                    path = next(iter(entry)) if isinstance(entry, dict) else entry
                    if PER_PATCH_KEY in str(path):
                        templates.append(str(path))
    return templates


def sync_patch_ids(new_ids: list[str], workspace: Workspace = Workspace()) -> SyncResult:
    """Make ``params.yaml``'s patch_overrides keys equal ``new_ids``; remove what belonged to dropped ids."""
    params_path, lock_path, dvc_yaml = workspace.params_file, workspace.dvc_lock, workspace.dvc_yaml
    yaml = _round_trip_yaml()
    document = _load_yaml(yaml, params_path)
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
        owned = re.compile(re.escape(prefix) + f"({PATCH_ID_PATTERN})" + r"(\.failed\.json)?" + re.escape(suffix))
        for match in sorted(glob.glob(glob.escape(str(workspace.root)) + "/" + prefix + "*" + suffix)):
            path = Path(match)
            # Matched on the path relative to the workspace: str(Path) drops the template's trailing
            # "/", so slicing the absolute string would misread every id (and delete kept patches).
            found = owned.fullmatch(path.relative_to(workspace.root).as_posix())
            if found and found.group(1) not in keep and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed_outputs.append(path.relative_to(workspace.root).as_posix())

    if lock_path.exists():
        lock = _load_yaml(yaml, lock_path)
        stages = lock.get("stages", {})
        for name in list(stages):
            stage, at, patch_id = name.partition("@")
            if at and is_patch_id(patch_id) and patch_id not in keep:
                del stages[name]
                removed_entries.append(name)
        if removed_entries:
            from patchsplat.atomic import atomic_file

            with atomic_file(lock_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                yaml.dump(lock, handle)
    return SyncResult(old_ids, list(new_ids), removed_outputs, removed_entries)


def planned_patch_ids(workspace: Workspace = Workspace()) -> list[str]:
    """The ids the split stage will produce with the current scene and params (plan only, nothing written)."""
    from patchsplat.colmap_io.arrays import read_model_arrays
    from patchsplat.config import load_params
    from patchsplat.scene_layout import locate_scene
    from patchsplat.scene_source import resolve_scene_dir
    from patchsplat.split import plan_split

    params = load_params(workspace.params_file)
    layout = locate_scene(resolve_scene_dir(workspace.scene_dir))
    from patchsplat.profiles import split_budget

    plan = plan_split(read_model_arrays(layout.model_dir), params.split, params.validate_.robust_percentile, str(layout.model_dir),
                      split_budget(params.train, params.split.megapixels_per_patch))
    return [patch.patch_id for patch in plan.patches]
