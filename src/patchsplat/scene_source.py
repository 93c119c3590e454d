"""The ``scene`` stage: make the scene the rest of the pipeline reads available under ``data/scene``.

- ``source: demo``   the procedural demo scene is generated into ``data/scene`` (a COLMAP folder).
- ``source: colmap`` the user's folder is NOT copied (captures are large): ``data/scene/scene.json``
  points at it and records a fingerprint of its model files and image listing, so a changed
  capture changes the stage's output and DVC reruns what depends on it.

Downstream stages call :func:`resolve_scene_dir` and never care which of the two it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.config import SceneConfig
from patchsplat.errors import InputError

SCENE_POINTER = "scene.json"


def _fingerprint(scene_root: Path) -> dict:
    from patchsplat.scene_layout import locate_scene

    layout = locate_scene(scene_root)
    model_files = {
        path.name: path.stat().st_size for path in sorted(layout.model_dir.iterdir()) if path.is_file()
    }
    images = sorted(p for p in layout.images_dir.rglob("*") if p.is_file())
    return {
        "model_dir": str(layout.model_dir.relative_to(scene_root)),
        "model_files": model_files,
        "num_image_files": len(images),
        "image_bytes": sum(p.stat().st_size for p in images),
        "latest_mtime_ns": max([p.stat().st_mtime_ns for p in images] + [
            (layout.model_dir / name).stat().st_mtime_ns for name in model_files
        ]),
    }


def prepare_scene(config: SceneConfig, scene_dir: Path, progress: bool = True) -> Path:
    """Materialise the configured scene at ``scene_dir`` (atomically); return ``scene_dir``."""
    if config.source == "demo":
        from patchsplat.demo import generate_demo_scene

        generate_demo_scene(config.demo, scene_dir, progress=progress)
        return scene_dir

    assert config.colmap_path is not None  # guaranteed by SceneConfig's validator
    source = config.colmap_path.expanduser().resolve()
    if not source.is_dir():
        raise InputError(config.colmap_path, "scene.colmap_path is not a folder", kind="missing_file")
    with atomic_dir(scene_dir) as tmp:
        write_json(tmp / SCENE_POINTER, {"source": "colmap", "path": str(source), "fingerprint": _fingerprint(source)})
    return scene_dir


def resolve_scene_dir(scene_dir: Path) -> Path:
    """The COLMAP folder behind ``scene_dir``: itself, or the user's folder its ``scene.json`` points at."""
    pointer = scene_dir / SCENE_POINTER
    if not pointer.exists():
        return scene_dir
    try:
        target = Path(json.loads(pointer.read_text(encoding="utf-8"))["path"])
    except (ValueError, KeyError, TypeError):
        raise InputError(pointer, "not a valid scene pointer (expected {\"path\": ...})", kind="corrupt_file") from None
    if not target.is_dir():
        raise InputError(pointer, f"points at {target}, which is not a folder", kind="missing_file")
    return target
