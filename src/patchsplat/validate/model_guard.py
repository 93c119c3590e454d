"""The validator's guards for the stages that read a model as arrays (split, init, prepare, train...).

:func:`patchsplat.colmap_io.arrays.read_model_arrays` reads a model with vectorised numpy. Before it
does, the files go through the same checks as :func:`.model_io.read_scene_model`, so a damaged
model is a one-line :class:`InputError` naming the file, never a traceback, an allocation until
``std::bad_alloc`` or a silently wrong patch:

- files present, readable, regular (:func:`.model_io.model_files`);
- binary files walked record by record with counts checked against the file's length
  (:mod:`patchsplat.colmap_io.binary`, the validator's walk);
- a text model read by pycolmap with its errors mapped to file and line (:mod:`patchsplat.colmap_io.text`) and
  its ``# Number of`` headers compared with what was read, then written as binary;
- what the arrays need to be right: images whose cameras exist, cameras of positive size with
  finite parameters, finite poses, image names that stay inside ``images/``, and at least one
  3D point with all points finite (checked by the array reader with :func:`check_points`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from patchsplat.colmap_io import binary
from patchsplat.colmap_io.layout import CameraRecord
from patchsplat.errors import InputError
from patchsplat.scene_layout import SceneLayout, model_format_of
from patchsplat.validate.image_files import name_escapes
from patchsplat.validate.model_io import ModelFileError, model_files


def model_layout(model_dir: Path) -> SceneLayout:
    """A layout for a bare model folder (the images folder does not matter to the model checks)."""
    model_format = model_format_of(model_dir)
    if model_format is None:
        raise InputError(model_dir, "no COLMAP model here: expected cameras, images and points3D (.bin or .txt)", kind="missing_model")
    return SceneLayout(model_dir, model_dir, model_dir, model_format)


@contextmanager
def one_line_errors():
    """Turn the validator's exceptions into :class:`InputError` (one line naming the file)."""
    try:
        yield
    except ModelFileError as failure:
        raise InputError(failure.finding.file or "model", failure.finding.message, kind=failure.finding.kind) from None
    except binary.CorruptFile as corrupt:
        raise InputError(corrupt.path, corrupt.problem, kind="corrupt_file") from None


def checked_files(layout: SceneLayout) -> dict[str, Path]:
    """The model's files by stem, each present, regular and readable."""
    with one_line_errors():
        return model_files(layout)


def walk_binary(files: dict[str, Path]) -> tuple[dict[int, CameraRecord], binary.ImagesWalk]:
    """Walk cameras (rigs, frames) and images; check what the arrays rely on. Points are walked by the reader."""
    with one_line_errors():
        cameras = binary.walk_cameras(files["cameras"])
        for stem in ("rigs", "frames"):
            if stem in files:
                getattr(binary, f"walk_{stem}")(files[stem])
        images = binary.walk_images(files["images"])
    return cameras, images


def check_cameras(cameras: dict[int, CameraRecord], cameras_file: Path) -> None:
    if not cameras:
        raise InputError(cameras_file, "holds no cameras", kind="corrupt_file")
    for camera in cameras.values():
        if camera.width <= 0 or camera.height <= 0:
            raise InputError(cameras_file, f"camera {camera.camera_id} has image size {camera.width}x{camera.height}",
                             kind="bogus_intrinsics")
        if not all(math.isfinite(p) for p in camera.params):
            raise InputError(cameras_file, f"camera {camera.camera_id} has non-finite parameters {list(camera.params)}",
                             kind="bogus_intrinsics")


def check_images(images: binary.ImagesWalk, cameras: dict[int, CameraRecord], images_file: Path, cameras_file: Path) -> None:
    if not images.image_ids:
        raise InputError(images_file, "holds no images", kind="missing_images")
    unknown = sorted({cid for cid in images.camera_ids if cid not in cameras})
    if unknown:
        raise InputError(images_file, f"images use camera ids {', '.join(map(str, unknown[:10]))} that "
                         f"{cameras_file.name} does not define", kind="inconsistent_model")
    for image_id, name, pose in zip(images.image_ids, images.names, images.poses):
        if not name:
            raise InputError(images_file, f"image {image_id} has an empty name", kind="bad_image_name")
        # Later stages open (and the undistortion writes) images/<name>: it must stay inside images/.
        if name_escapes(name):
            raise InputError(images_file, f"image {image_id} is named {name!r}, which points outside the images folder "
                             "(absolute or '..')", kind="path_escape")
        if not all(math.isfinite(value) for value in pose):
            raise InputError(images_file, f"image {image_id} ({name}) has a non-finite pose", kind="bogus_pose")


def check_points(xyz: np.ndarray, point_ids: np.ndarray, points_file: Path) -> None:
    if len(xyz) == 0:
        raise InputError(points_file, "the model has no 3D points: nothing to split, initialise or train from", kind="no_points")
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        bad = point_ids[~finite]
        shown = ", ".join(map(str, bad[:10].tolist())) + (" ..." if len(bad) > 10 else "")
        raise InputError(points_file, f"{len(bad)} 3D point(s) have NaN or infinite coordinates; point ids {shown}",
                         kind="nonfinite_points")


def text_model_as_binary(layout: SceneLayout, files: dict[str, Path], out_dir: Path) -> None:
    """Read the text model as the validator does (errors name file and line) and write it as binary to ``out_dir``."""
    from patchsplat.validate.model_io import _check_text_headers, _read_reconstruction, quiet_colmap

    with one_line_errors():
        reconstruction = _read_reconstruction(layout, files)
        _check_text_headers(reconstruction, files)
    with quiet_colmap():
        reconstruction.write_binary(str(out_dir))
