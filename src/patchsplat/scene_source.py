"""The ``scene`` stage: make the scene the rest of the pipeline reads available under ``data/scene``.

- ``source: demo``   the procedural demo scene is generated into ``data/scene`` (a COLMAP folder).
- ``source: colmap`` the user's folder is NOT copied (captures are large): ``data/scene/scene.json``
  points at it and records a fingerprint of its model files and image listing, so a changed
  capture changes the stage's output and DVC reruns what depends on it.
  Exception: training renders pinhole cameras only, and COLMAP's default camera model
  (SIMPLE_RADIAL) has lens distortion. With ``undistort: auto`` such a model is undistorted
  (``pycolmap.undistort_images``: PINHOLE cameras, resampled images) into
  ``data/scene/undistorted`` and the pointer says the pipeline reads that copy. The model and the
  images are checked first, as the validator does (corrupt files, image names or links escaping
  ``images/``, every image decoded and of its camera's size), so pycolmap never sees what the
  validator would refuse, and a refused scene leaves nothing behind.

Downstream stages call :func:`resolve_scene_dir` and never care which of the two it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.config import SceneConfig
from patchsplat.errors import InputError
from patchsplat.output_folder import SCENE

SCENE_POINTER = "scene.json"
UNDISTORTED_FOLDER = "undistorted"


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

        generate_demo_scene(config.demo, scene_dir, progress=progress, kind=SCENE)
        return scene_dir

    assert config.colmap_path is not None  # guaranteed by SceneConfig's validator
    source = config.colmap_path.expanduser().resolve()
    if not source.is_dir():
        raise InputError(config.colmap_path, "scene.colmap_path is not a folder", kind="missing_file")
    pointer = {"source": "colmap", "path": str(source), "fingerprint": _fingerprint(source)}
    distorted = distorted_camera_models(source) if config.undistort == "auto" else {}
    if distorted:
        from patchsplat.scene_layout import locate_scene

        # Checked before anything is created: a refused scene leaves no folder behind.
        layout = locate_scene(source)
        num_images = _check_before_undistorting(layout)
    with atomic_dir(scene_dir, SCENE, (source,)) as tmp:
        if distorted:
            from patchsplat.console import console
            from patchsplat.validate.undistort import undistort_scene

            models = ", ".join(f"{name} x{count}" for name, count in sorted(distorted.items()))
            console.print(f"scene: cameras with lens distortion ({models}); training renders pinhole cameras: "
                          f"undistorting {num_images} images with pycolmap into {scene_dir / UNDISTORTED_FOLDER} "
                          "(scene.undistort: auto)")
            undistort_scene(layout, tmp / UNDISTORTED_FOLDER)
            pointer["undistorted"] = {"folder": UNDISTORTED_FOLDER, "camera_models": distorted}
        write_json(tmp / SCENE_POINTER, pointer)
    return scene_dir


def camera_models(scene_root: Path) -> dict[int, str]:
    """camera id -> COLMAP model name, read from the cameras file alone (cheap, whatever the model's size).

    A file this cannot parse gives {}: the validation stage names what is wrong with it.
    """
    from patchsplat.colmap_io.binary import CorruptFile, walk_cameras
    from patchsplat.colmap_io.text import read_cameras
    from patchsplat.scene_layout import locate_scene

    layout = locate_scene(scene_root)
    cameras_file = layout.model_file("cameras")
    try:
        cameras = walk_cameras(cameras_file) if layout.model_format == "bin" else read_cameras(cameras_file)
    except (CorruptFile, OSError):
        return {}
    return {camera_id: camera.model for camera_id, camera in cameras.items()}


def distorted_camera_models(scene_root: Path) -> dict[str, int]:
    """Model name -> camera count of the cameras an undistortion turns into PINHOLE ones ({} if none).

    Spherical cameras cannot become pinhole ones: a model holding any is left as it is, for the
    validation stage to report.
    """
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()

    from patchsplat.validate.checks import PINHOLE_MODELS

    models = list(camera_models(scene_root).values())
    if any(_is_spherical(pycolmap, name) for name in set(models)):
        return {}
    counts: dict[str, int] = {}
    for name in models:
        if name not in PINHOLE_MODELS:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _is_spherical(pycolmap, model_name: str) -> bool:
    try:
        return bool(pycolmap.Camera(model=model_name, width=2, height=1).is_spherical())
    except Exception:  # noqa: BLE001 - an unknown model: not ours to judge here
        return False


def _check_before_undistorting(layout) -> int:
    """Read the model as the validator does and refuse what pycolmap must not be given; the image count."""
    from patchsplat.validate.image_files import safe_image_path
    from patchsplat.validate.model_io import ModelFileError, read_scene_model

    try:
        model = read_scene_model(layout)
    except ModelFileError as error:
        raise InputError(error.finding.file or layout.model_dir, error.finding.message, kind=error.finding.kind) from None
    for image in model.images:
        # An undistortion reads every image and writes it under its name: a name or a link
        # leading out of images/ would read (or write) elsewhere.
        if not image.name:
            raise InputError(layout.model_file("images"), f"image {image.image_id} has an empty name; not undistorting",
                             kind="bad_image_name")
        safe_image_path(layout.images_dir, image.name)
    _check_image_files(model)
    return len(model.images)


def _check_image_files(model) -> None:
    """Decode and size-check every image as the validator does: pycolmap's undistortion would stop
    on a truncated or zero-byte file with a message naming no image, or resample a wrong-size one."""
    from patchsplat.config import ValidateConfig
    from patchsplat.validate.image_files import check_image_files

    findings = check_image_files(model, list(model.images), ValidateConfig(), decode=True)
    errors = [finding for finding in findings if finding.is_error]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more image problem(s))" if len(errors) > 1 else ""
        raise InputError(first.file or model.layout.images_dir, first.message + more, kind=first.kind)


def resolve_scene_dir(scene_dir: Path) -> Path:
    """The COLMAP folder behind ``scene_dir``: itself, or the user's folder its ``scene.json`` points at."""
    pointer = scene_dir / SCENE_POINTER
    if not pointer.exists():
        return scene_dir
    try:
        content = json.loads(pointer.read_text(encoding="utf-8"))
        target = Path(content["path"])
        undistorted = content.get("undistorted")
        if undistorted:
            folder = str(undistorted["folder"])
            if Path(folder).name != folder or folder in ("", ".", ".."):
                raise ValueError(folder)
            target = scene_dir / folder
    except (ValueError, KeyError, TypeError):
        raise InputError(pointer, "not a valid scene pointer (expected {\"path\": ...})", kind="corrupt_file") from None
    if not target.is_dir():
        raise InputError(pointer, f"points at {target}, which is not a folder", kind="missing_file")
    return target
