"""``dvc.lock`` as MLflow tags: the md5 of every input and output DVC recorded, per stage and for the pipeline."""

from __future__ import annotations

import hashlib
import re

from patchsplat.workspace import Workspace

# MLflow tag keys allow letters, digits, '_', '-', '.', ' ' and '/'.
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def lock_entries(workspace: Workspace) -> dict[str, dict]:
    """``dvc.lock``'s stages: name -> its entry (cmd, deps, params, outs)."""
    from patchsplat.config import read_yaml
    from patchsplat.errors import InputError

    lock = workspace.dvc_lock
    if not lock.exists():
        return {}
    content = read_yaml(lock, "DVC lock file") or {}
    stages = content.get("stages", {}) if isinstance(content, dict) else None
    if not isinstance(stages, dict):
        raise InputError(lock, "not a DVC lock file (no stages mapping): delete it and run again", kind="corrupt_file")
    return stages


def _hash_of(entry: dict) -> str | None:
    return entry.get("md5") or entry.get("hash") and entry.get(entry["hash"]) or None


def tag_key(text: str) -> str:
    return _TAG_UNSAFE.sub("_", text)


def stage_hash_tags(entry: dict) -> dict[str, str]:
    """One stage's lock entry as MLflow tags: ``dvc.deps.<path>`` / ``dvc.outs.<path>`` -> md5."""
    tags = {}
    for section in ("deps", "outs"):
        for item in entry.get(section, []) or []:
            digest = _hash_of(item)
            if digest:
                tags[tag_key(f"dvc.{section}.{item['path']}")] = str(digest)
    return tags


def pipeline_hash_tags(workspace: Workspace) -> dict[str, str]:
    """The whole pipeline's lock as tags: every output, every input no stage produces, and the lock's own md5."""
    entries = lock_entries(workspace)
    produced = {item["path"] for entry in entries.values() for item in entry.get("outs", []) or []}
    tags: dict[str, str] = {}
    for entry in entries.values():
        for item in entry.get("outs", []) or []:
            if _hash_of(item):
                tags[tag_key(f"dvc.outs.{item['path']}")] = str(_hash_of(item))
        for item in entry.get("deps", []) or []:
            inside = any(item["path"] == path or item["path"].startswith(path.rstrip("/") + "/") for path in produced)
            if not inside and _hash_of(item):
                tags[tag_key(f"dvc.inputs.{item['path']}")] = str(_hash_of(item))
    lock = workspace.dvc_lock
    if lock.exists():
        tags["dvc.lock.md5"] = hashlib.md5(lock.read_bytes()).hexdigest()
    return tags
