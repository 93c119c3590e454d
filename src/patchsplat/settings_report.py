"""``patchsplat config``: the effective settings, and for training, each value's origin per patch."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from patchsplat.config import Params
from patchsplat.console import console
from patchsplat.profiles import PatchFacts, ResolvedTrain, machine_profile, resolve_train
from patchsplat.workspace import Workspace


def _value(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    if hasattr(value, "model_fields"):  # a recovery rung: only what it changes
        changed = {name: getattr(value, name) for name, info in type(value).model_fields.items()
                   if getattr(value, name) != info.default}
        return "{" + ", ".join(f"{name}: {_text(item)}" for name, item in changed.items()) + "}"
    return str(value)


def patch_dirs(workspace: Path, patch_ids: list[str]) -> dict[str, Path]:
    """The split's patch folders for these ids (those that exist)."""
    folders = {patch_id: Workspace(workspace).patch(patch_id).patch_dir for patch_id in patch_ids}
    return {patch_id: folder for patch_id, folder in folders.items() if (folder / "patch.json").exists()}


def resolved_per_patch(params: Params, workspace: Path, only: str | None = None) -> dict[str, ResolvedTrain]:
    ids = [only] if only else list(params.patch_overrides)
    return {patch_id: resolve_train(params.train, PatchFacts.of_patch(folder), params.patch_overrides.get(patch_id), patch_id)
            for patch_id, folder in patch_dirs(workspace, ids).items()}


def training_table(resolved: dict[str, ResolvedTrain]) -> Table:
    """Every training setting: its value per patch and where it came from (the first patch's reason)."""
    ids = list(resolved)
    first = resolved[ids[0]]
    table = Table(title=f"training settings (profile {first.profile}) per patch")
    table.add_column("setting")
    for patch_id in ids:
        table.add_column(patch_id, justify="right")
    table.add_column("from")
    for key, origin in first.origins.items():
        values = [_text(_value(resolved[patch_id].config, key)) for patch_id in ids]
        origins = {resolved[patch_id].origins[key].split(":")[0] for patch_id in ids}
        where = origin if len(origins) == 1 else " / ".join(sorted(origins))
        table.add_row(key, *values, where)
    return table


def print_settings(params: Params, workspace: Path, patch: str | None = None) -> None:
    """The whole params.yaml as validated (YAML), then the training table (or why it cannot be shown yet)."""
    import yaml

    if patch is None:
        effective = params.model_dump(mode="json", by_alias=True)
        console.print(yaml.safe_dump(effective, sort_keys=False), markup=False)
    if patch is not None and patch not in params.patch_overrides:
        from patchsplat.errors import InputError

        raise InputError("--patch", f"{patch} is not a patch of params.yaml's patch_overrides ({', '.join(params.patch_overrides) or 'none'})",
                         kind="bad_params")
    resolved = resolved_per_patch(params, workspace, patch)
    if resolved:
        console.print(training_table(resolved))
        return
    profile = params.train.profile if params.train.profile != "auto" else f"auto, here {machine_profile()}"
    console.print(f"training: profile {profile}; settings left null are chosen per patch once the split has run "
                  f"(then `patchsplat config` shows every value and where it came from)", markup=False, soft_wrap=True)
