"""Read a scene's COLMAP model without letting a damaged file crash, hang or fool the reader.

:func:`read_scene_model` returns a :class:`SceneModel` (cameras, registered images,
point ids and float64 coordinates, aggregate counts) or raises :class:`ModelFileError`
carrying one error :class:`Finding` that names the file at fault:

1. every model file must exist, be a regular file and be readable; rigs and frames
   (COLMAP >= 3.12) are optional but come as a pair;
2. binary files are walked structurally in Python first (:mod:`patchsplat.colmap_io.binary`),
   because pycolmap can hang or exhaust memory on them;
3. pycolmap reads the model; its exceptions are mapped to the file they concern
   (for text models by re-reading the files line by line, :mod:`patchsplat.colmap_io.text`);
4. what was read is cross-checked: the record counts of the walk, the ``# Number of``
   headers of text files, and the number of observations the images claim against
   the total length of the points' tracks (pycolmap accepts a ``points3D`` file that
   lost points the images still refer to, and a text file cut short).

Coordinates come from the binary walk (a text model is written to a temporary binary
copy first), so no per-point Python object is made: ~0.2 s per million points.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchsplat.colmap_io import binary, text
from patchsplat.colmap_io.layout import CameraRecord
from patchsplat.scene_layout import MODEL_STEMS, OPTIONAL_STEMS, SceneLayout
from patchsplat.validate.findings import Finding


class ModelFileError(Exception):
    """The model cannot be read; ``finding`` is the error naming the file."""

    def __init__(self, finding: Finding) -> None:
        self.finding = finding
        super().__init__(f"{finding.file}: {finding.message}")


def _error(kind: str, path: Path, message: str) -> ModelFileError:
    return ModelFileError(Finding("error", kind, message, str(path)))


@dataclass(frozen=True)
class ImageRecord:
    """A registered image: its pose summarised as the camera centre and the rotation's quaternion norm."""

    image_id: int
    name: str
    camera_id: int
    num_points3D: int
    centre: tuple[float, float, float]
    quaternion_norm: float


@dataclass(frozen=True)
class SceneModel:
    layout: SceneLayout
    files: dict[str, Path]                  # 'cameras', 'images', 'points3D' (+ 'rigs', 'frames') -> path
    cameras: dict[int, CameraRecord]        # by camera id, sorted
    images: tuple[ImageRecord, ...]         # registered images, sorted by id
    num_unregistered_images: int
    point_ids: np.ndarray                   # (N,) int64
    xyz: np.ndarray                         # (N, 3) float64
    num_observations: int
    mean_track_length: float
    mean_reprojection_error: float

    @property
    def camera_centres(self) -> np.ndarray:
        return np.array([image.centre for image in self.images], dtype=np.float64).reshape(-1, 3)


@contextlib.contextmanager
def quiet_colmap() -> Iterator[None]:
    """Silence COLMAP's own logging (glog writes to stderr) while pycolmap works.

    Problems surface as exceptions, which are turned into findings; glog lines on
    stderr would break the command line's one-line error contract.
    """
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()

    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 3  # FATAL only: INFO, WARNING and ERROR lines are dropped
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def model_files(layout: SceneLayout) -> dict[str, Path]:
    """Check that the model's files exist and are readable; return them by stem."""
    files: dict[str, Path] = {}
    for stem in MODEL_STEMS:
        files[stem] = _usable_file(layout.model_file(stem))
    present = [stem for stem in OPTIONAL_STEMS if layout.model_file(stem).exists()]
    if len(present) == 1:
        missing = next(stem for stem in OPTIONAL_STEMS if stem not in present)
        raise _error(
            "missing_file",
            layout.model_file(missing),
            f"model file not found, but {layout.model_file(present[0]).name} is present (COLMAP >= 3.12 writes both)",
        )
    for stem in present:
        files[stem] = _usable_file(layout.model_file(stem))
    return files


def _usable_file(path: Path) -> Path:
    if not path.exists():
        dangling = " (a broken symbolic link)" if path.is_symlink() else ""
        raise _error("missing_file", path, f"model file not found{dangling}")
    if not path.is_file():
        raise _error("corrupt_file", path, "is a folder or a special file, not a model file")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise _error("unreadable_file", path, f"cannot be read: {error.strerror or error}") from None
    return path


def read_scene_model(layout: SceneLayout) -> SceneModel:
    """Read and cross-check the model of ``layout``; raise :class:`ModelFileError` naming the bad file."""
    files = model_files(layout)
    if layout.model_format == "bin":
        walked = _walk_binary(files)
        reconstruction = _read_reconstruction(layout, files)
        _check_binary_counts(reconstruction, walked, files)
        points = walked.points
    else:
        reconstruction = _read_reconstruction(layout, files)
        _check_text_headers(reconstruction, files)
        points = _points_of_text_model(reconstruction)
    _check_observations(reconstruction, points, files)
    return _scene_model(layout, files, reconstruction, points)


@dataclass(frozen=True)
class _Walked:
    num_cameras: int
    num_images: int
    points: binary.PointArrays


def _walk_binary(files: dict[str, Path]) -> _Walked:
    stem = "cameras"
    try:
        cameras = binary.walk_cameras(files[stem])
        for stem in ("rigs", "frames"):
            if stem in files:
                getattr(binary, f"walk_{stem}")(files[stem])
        stem = "images"
        images = binary.walk_images(files[stem])
        unknown = sorted({cid for cid in images.camera_ids if cid not in cameras})
        if unknown:
            raise _error(
                "inconsistent_model", files[stem],
                f"images use camera ids {', '.join(map(str, unknown[:10]))} that {files['cameras'].name} does not define",
            )
        stem = "points3D"
        points = binary.read_points(files[stem])
    except binary.CorruptFile as corrupt:
        raise _error("corrupt_file", corrupt.path, corrupt.problem) from None
    except OSError as error:
        raise _error("unreadable_file", files[stem], f"cannot be read: {error.strerror or error}") from None
    return _Walked(len(cameras), len(images.image_ids), points)


def _read_reconstruction(layout: SceneLayout, files: dict[str, Path]):
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()

    reconstruction = pycolmap.Reconstruction()
    with quiet_colmap():
        try:
            if layout.model_format == "bin":
                reconstruction.read_binary(str(layout.model_dir))
            else:
                reconstruction.read_text(str(layout.model_dir))
        except Exception as error:  # pycolmap raises ValueError, IndexError, RuntimeError, MemoryError...
            raise _read_failure(layout, files, error) from None
    return reconstruction


# Which file a pycolmap read error concerns, by a fragment of its message (lower case).
# Fragments were collected by feeding pycolmap 4.2.1 damaged copies of real models.
_MESSAGE_FILES: tuple[tuple[str, str], ...] = (
    ("line_stream >> camera", "cameras"),
    ("camera model does not exist", "cameras"),
    ("existscamera", "cameras"),
    ("line_stream1 >> image_id", "images"),
    ("line_stream2", "images"),
    ("point3d_id_signed", "images"),
    ("line_stream >> point3d_id", "points3D"),
    ("sensortype", "rigs"),
    ("sensor", "rigs"),
    ("rig with id", "rigs"),
    ("frame", "frames"),
    ("unordered_map::at", "frames"),
    ("image with id", "points3D"),
    ("_m_range_check", "points3D"),
    ("point2d.point3d_id", "points3D"),
    ("point3d", "points3D"),
)


def _read_failure(layout: SceneLayout, files: dict[str, Path], error: Exception) -> ModelFileError:
    detail = " ".join(str(error).split()) or type(error).__name__
    if layout.model_format == "txt":
        diagnosis = text.diagnose_text_model(files)
        if diagnosis is not None:
            path, problem = diagnosis
            return _error("corrupt_file", path, problem)
    lowered = detail.lower()
    for fragment, stem in _MESSAGE_FILES:
        if fragment in lowered:
            # rigs/frames problems of a model without those files come from its images (legacy layout).
            target = files.get(stem) or files["images"]
            return _error("corrupt_file", target, f"pycolmap cannot read it: {detail}")
    return _error("corrupt_file", layout.model_dir, f"pycolmap cannot read the model: {detail}")


def _check_binary_counts(reconstruction, walked: _Walked, files: dict[str, Path]) -> None:
    read = {
        "cameras": (reconstruction.num_cameras(), walked.num_cameras),
        "images": (reconstruction.num_images(), walked.num_images),
        "points3D": (reconstruction.num_points3D(), len(walked.points.point_ids)),
    }
    for stem, (by_pycolmap, in_file) in read.items():
        if by_pycolmap != in_file:
            raise _error("corrupt_file", files[stem], f"holds {in_file} records but pycolmap read {by_pycolmap} (duplicate ids?)")


def _check_text_headers(reconstruction, files: dict[str, Path]) -> None:
    read = {
        "cameras": reconstruction.num_cameras(),
        "images": reconstruction.num_images(),
        "points3D": reconstruction.num_points3D(),
    }
    for stem, count in read.items():
        declared = text.header_count(files[stem], stem)
        if declared is not None and declared != count:
            raise _error(
                "corrupt_file", files[stem],
                f"its header declares {declared} records but {count} were read (truncated or edited file)",
            )


def _points_of_text_model(reconstruction) -> binary.PointArrays:
    # Written as binary by pycolmap (C++) and walked: no per-point Python object, and
    # the same code path as binary models.
    with tempfile.TemporaryDirectory(prefix="patchsplat-validate-") as tmp, quiet_colmap():
        reconstruction.write_binary(tmp)
        return binary.read_points(Path(tmp) / "points3D.bin")


def _check_observations(reconstruction, points: binary.PointArrays, files: dict[str, Path]) -> None:
    observations = reconstruction.compute_num_observations()
    if observations != points.total_track_length:
        raise _error(
            "inconsistent_model", files["points3D"],
            f"the images refer to 3D points {observations} times but the tracks of the points hold "
            f"{points.total_track_length} observations: points are missing from this file or the model was edited",
        )


def _scene_model(layout: SceneLayout, files: dict[str, Path], reconstruction, points: binary.PointArrays) -> SceneModel:
    cameras = {
        camera_id: CameraRecord(
            camera_id, camera.model.name, int(camera.width), int(camera.height), tuple(float(p) for p in camera.params)
        )
        for camera_id, camera in sorted(reconstruction.cameras.items())
    }
    images = []
    unregistered = 0
    for image_id in sorted(reconstruction.images.keys()):
        image = reconstruction.images[image_id]
        if not image.has_pose:
            unregistered += 1
            continue
        centre = image.projection_center()
        images.append(
            ImageRecord(
                image_id, image.name, image.camera_id, int(image.num_points3D),
                (float(centre[0]), float(centre[1]), float(centre[2])),
                float(np.linalg.norm(image.cam_from_world().rotation.quat)),
            )
        )
    return SceneModel(
        layout=layout,
        files=files,
        cameras=cameras,
        images=tuple(images),
        num_unregistered_images=unregistered,
        point_ids=points.point_ids,
        xyz=points.xyz,
        num_observations=int(reconstruction.compute_num_observations()),
        mean_track_length=float(reconstruction.compute_mean_track_length()) if len(points.point_ids) else 0.0,
        # No points: no error to average (NaN becomes None in the statistics, never 0).
        mean_reprojection_error=float(reconstruction.compute_mean_reprojection_error()) if len(points.point_ids) else float("nan"),
    )
