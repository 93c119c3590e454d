"""Checks of a model that has been read: cameras, poses, points, images' point counts, other models.

Each check returns a list of :class:`Finding`. Findings about many items of the same
kind are grouped into one finding that lists the ids (truncated to ``max_listed_ids``).
The image files themselves are checked in :mod:`.image_files`.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from patchsplat.colmap_io import binary, text
from patchsplat.colmap_io.layout import CameraRecord
from patchsplat.config import ValidateConfig
from patchsplat.scene_layout import SceneLayout, model_format_of
from patchsplat.validate.findings import Finding, finding_for_items
from patchsplat.validate.model_io import SceneModel
from patchsplat.validate.stats import PointFlags

# Models the trainer renders directly.
PINHOLE_MODELS = frozenset({"SIMPLE_PINHOLE", "PINHOLE"})
# A stored rotation quaternion further than this from unit norm is not a rotation: COLMAP
# writes normalised quaternions (to ~1e-16); this only tolerates text files rounded by hand.
QUATERNION_NORM_TOLERANCE = 1e-3

UNDISTORT_HINT = "run `patchsplat validate SCENE --undistort OUT_DIR` and use OUT_DIR as the scene"


def check_cameras(model: SceneModel, config: ValidateConfig, undistort: bool = False) -> list[Finding]:
    """Camera models training can use, and plausible intrinsics.

    PINHOLE and SIMPLE_PINHOLE are fine. Other perspective models with lens distortion
    (SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV, FOV, DIVISION, ...) are a warning: the
    trainer would ignore the distortion; ``--undistort`` writes a PINHOLE copy. Fisheye
    models are an error (a pinhole renderer is badly wrong for them) unless ``undistort``
    is requested, which turns them into PINHOLE at the cost of a cropped field of view
    (then a warning). Spherical models (EQUIRECTANGULAR) cannot be undistorted to a
    pinhole camera: always an error.
    """
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()

    cameras_file = str(model.files["cameras"])
    groups: dict[tuple[str, str], list[CameraRecord]] = {}
    explanations: dict[tuple[str, str], str] = {}

    def add(kind: str, severity: str, camera: CameraRecord, explanation: str = "") -> None:
        key = (kind, severity)
        groups.setdefault(key, []).append(camera)
        explanations.setdefault(key, explanation)

    for camera in model.cameras.values():
        if camera.width <= 0 or camera.height <= 0:
            add("bogus_intrinsics", "error", camera, f"camera {camera.camera_id} has image size {camera.width}x{camera.height}")
            continue
        if not all(math.isfinite(p) for p in camera.params):
            add("bogus_intrinsics", "error", camera, f"camera {camera.camera_id} has non-finite parameters {list(camera.params)}")
            continue
        colmap_camera = pycolmap.Camera(
            model=camera.model, width=camera.width, height=camera.height, params=list(camera.params), camera_id=camera.camera_id
        )
        if colmap_camera.is_spherical():
            add("unsupported_camera_model", "error", camera, f"{camera.model} is spherical and cannot be undistorted to a pinhole camera")
            continue
        ratio = config.max_bogus_focal_ratio
        if colmap_camera.has_bogus_params(1.0 / ratio, ratio, config.max_extra_param):
            add("bogus_intrinsics", "error", camera, _explain_bogus(colmap_camera, camera, config))
            continue
        if camera.model in PINHOLE_MODELS:
            continue
        if colmap_camera.is_perspective_fisheye():
            if undistort:
                add("distorted_camera", "warning", camera, "fisheye models are undistorted to PINHOLE with a cropped field of view")
            else:
                add("unsupported_camera_model", "error", camera, f"fisheye model {camera.model} needs undistortion first: {UNDISTORT_HINT}")
            continue
        add("distorted_camera", "warning", camera, "")

    findings = []
    for (kind, severity), cameras in sorted(groups.items(), key=lambda item: (item[0][1] != "error", item[0][0])):
        models = ", ".join(f"{name} x{count}" for name, count in sorted(Counter(c.model for c in cameras).items()))
        ids = [c.camera_id for c in cameras]
        explanation = explanations[(kind, severity)]
        if kind == "distorted_camera":
            summary = (
                f"{len(cameras)} camera(s) use lens distortion models ({models}) that training renders as pinhole"
                + (f" ({explanation})" if explanation else f"; {UNDISTORT_HINT}")
            )
        elif kind == "unsupported_camera_model":
            summary = f"{len(cameras)} camera(s) use a model training cannot use ({models}; {explanation})"
        else:
            summary = f"{len(cameras)} camera(s) have bogus intrinsics ({explanation})"
        findings.append(finding_for_items(severity, kind, f"{summary}; camera ids", ids, config.max_listed_ids, cameras_file))
    return findings


def _explain_bogus(colmap_camera, camera: CameraRecord, config: ValidateConfig) -> str:
    """Say which of COLMAP's bogus-parameter rules the camera breaks (same rules as has_bogus_params)."""
    params = camera.params
    largest_side = max(camera.width, camera.height)
    ratio = config.max_bogus_focal_ratio
    for index in colmap_camera.focal_length_idxs():
        focal_ratio = params[index] / largest_side
        if not 1.0 / ratio <= focal_ratio <= ratio:
            return (
                f"camera {camera.camera_id}: focal length {params[index]:g} px is {focal_ratio:.3g} x the largest "
                f"image side, outside [{1.0 / ratio:g}, {ratio:g}]"
            )
    cx_index, cy_index = colmap_camera.principal_point_idxs()
    cx, cy = params[cx_index], params[cy_index]
    if not (0 <= cx <= camera.width and 0 <= cy <= camera.height):
        return f"camera {camera.camera_id}: principal point ({cx:g}, {cy:g}) lies outside the {camera.width}x{camera.height} image"
    for index in colmap_camera.extra_params_idxs():
        if abs(params[index]) > config.max_extra_param:
            return f"camera {camera.camera_id}: distortion parameter {params[index]:g} exceeds {config.max_extra_param:g} in magnitude"
    return f"camera {camera.camera_id}: COLMAP flags its parameters {list(params)} as bogus"


def check_poses(model: SceneModel, config: ValidateConfig) -> list[Finding]:
    """Registered images need a finite camera centre and a unit rotation quaternion."""
    bad = [
        image.image_id
        for image in model.images
        if not all(math.isfinite(v) for v in image.centre)
        or not math.isfinite(image.quaternion_norm)
        or abs(image.quaternion_norm - 1.0) > QUATERNION_NORM_TOLERANCE
    ]
    if not bad:
        return []
    pose_file = model.files.get("frames", model.files["images"])
    return [finding_for_items(
        "error", "bogus_pose", f"{len(bad)} image(s) have a non-finite pose or a rotation that is not a unit quaternion; image ids",
        bad, config.max_listed_ids, pose_file,
    )]


def check_points(
    model: SceneModel, flags: PointFlags, robust_min: tuple | None, robust_max: tuple | None, config: ValidateConfig
) -> list[Finding]:
    """Non-finite points (error), duplicated positions and far outliers (warnings), an empty model (error)."""
    points_file = str(model.files["points3D"])
    if len(model.point_ids) == 0:
        return [Finding("error", "no_points", "the model has no 3D points: training has nothing to start from", points_file)]
    findings = []
    ids = model.point_ids
    if flags.nonfinite.any():
        findings.append(finding_for_items(
            "error", "nonfinite_points", f"{int(flags.nonfinite.sum())} 3D point(s) have NaN or infinite coordinates; point ids",
            ids[flags.nonfinite].tolist(), config.max_listed_ids, points_file,
        ))
    if flags.duplicate.any():
        findings.append(finding_for_items(
            "warning", "duplicate_points",
            f"{int(flags.duplicate.sum())} 3D point(s) repeat the exact position of another point; point ids",
            ids[flags.duplicate].tolist(), config.max_listed_ids, points_file,
        ))
    if flags.far_outlier.any():
        box = ", ".join(f"{axis} {lo:.4g}..{hi:.4g}" for axis, lo, hi in zip("xyz", robust_min, robust_max))
        findings.append(finding_for_items(
            "warning", "far_outliers",
            f"{int(flags.far_outlier.sum())} 3D point(s) lie far outside the robust extent ({box}; grown by "
            f"{config.outlier_factor:g} x its largest side): they inflate the scene's extent; point ids",
            ids[flags.far_outlier].tolist(), config.max_listed_ids, points_file,
        ))
    return findings


def check_image_point_counts(model: SceneModel, config: ValidateConfig) -> list[Finding]:
    """Registered images that observe no 3D point, or fewer than ``min_points_per_image``."""
    images_file = str(model.files["images"])
    without = [image.name for image in model.images if image.num_points3D == 0]
    few = [image.name for image in model.images if 0 < image.num_points3D < config.min_points_per_image]
    findings = []
    if without:
        findings.append(finding_for_items(
            "warning", "image_without_points", f"{len(without)} registered image(s) observe no 3D point", without,
            config.max_listed_ids, images_file,
        ))
    if few:
        findings.append(finding_for_items(
            "warning", "image_with_few_points",
            f"{len(few)} registered image(s) observe fewer than {config.min_points_per_image} 3D points", few,
            config.max_listed_ids, images_file,
        ))
    return findings


def other_model_sizes(layout: SceneLayout) -> list[tuple[Path, int | None]]:
    """(folder, number of images) of each model beside the chosen one, read from file headers only."""
    sizes = []
    for folder in layout.other_models:
        model_format = model_format_of(folder)
        path = folder / f"images.{model_format}"
        count = None
        if path.is_file():
            try:
                count = binary.header_count(path) if model_format == "bin" else text.header_count(path, "images")
            except OSError:
                count = None
        sizes.append((folder, count))
    return sizes


def check_other_models(layout: SceneLayout, model: SceneModel, config: ValidateConfig) -> list[Finding]:
    """Several models in sparse/ mean COLMAP split the scene into disconnected parts."""
    sizes = other_model_sizes(layout)
    if not sizes:
        return []
    chosen = len(model.images)
    described = []
    larger = []
    for folder, count in sizes:
        name = folder.relative_to(layout.root).as_posix()
        described.append(f"{name} ({'?' if count is None else count} images)")
        if count is not None and count > chosen:
            larger.append(name)
    note = f"; {', '.join(larger)} {'is' if len(larger) == 1 else 'are'} LARGER than the chosen one" if larger else ""
    message = (
        f"sparse/ holds {len(sizes) + 1} disconnected models: using {layout.model_dir.relative_to(layout.root).as_posix()} ({chosen} images); "
        f"also {', '.join(described)}{note}. COLMAP could not connect them; only the chosen model is used"
    )
    return [Finding(
        "warning", "disconnected_models", message, str(layout.model_dir.parent),
        tuple(folder.relative_to(layout.root).as_posix() for folder, _ in sizes[: config.max_listed_ids]), len(sizes),
    )]
