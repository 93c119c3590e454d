"""The sparse model as numpy arrays, and its conversion to a pycolmap Reconstruction.

Contract: :class:`SparseModel` holds every 3D point (surface points first, then any outliers) with
its track in CSR layout; ``error`` is each point's mean reprojection distance in pixels between
its stored observations and the projection of its stored position, so pycolmap's
``compute_mean_reprojection_error()`` equals ``error.mean()``. :func:`write_model` writes one
PINHOLE camera, image ``i`` with id ``i + 1`` named ``f"{i:05d}.png"``, and point ``j`` with id
``j + 1``; each image's 2D points are exactly its observations, in point order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchsplat.colmap_library import pycolmap as _load_pycolmap
from patchsplat.demo.layout import Cameras

pycolmap = _load_pycolmap()

# Points converted to Python lists at a time: bounds memory on multi-million-point models.
POINT_CHUNK = 50_000

ProgressCallback = Callable[[int], None]


def image_name(index: int) -> str:
    return f"{index:05d}.png"


@dataclass
class SparseModel:
    xyz: np.ndarray  # (P, 3) stored positions
    colour: np.ndarray  # (P, 3) uint8
    error: np.ndarray  # (P,) mean reprojection error in pixels
    offsets: np.ndarray  # (P + 1,) int64: point i owns observation rows offsets[i]:offsets[i+1]
    camera: np.ndarray  # (O,) int32 image index
    uv: np.ndarray  # (O, 2) float64 observed pixel positions

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def track_length(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def concatenate(cls, parts: list[SparseModel]) -> SparseModel:
        lengths = np.concatenate([p.track_length for p in parts])
        return cls(
            xyz=np.concatenate([p.xyz for p in parts]),
            colour=np.concatenate([p.colour for p in parts]),
            error=np.concatenate([p.error for p in parts]),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            camera=np.concatenate([p.camera for p in parts]),
            uv=np.concatenate([p.uv for p in parts]),
        )


def reprojection_errors(cameras: Cameras, xyz: np.ndarray, offsets: np.ndarray, camera: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Mean pixel distance, per point, between its observations and the projection of ``xyz``.

    An observation whose point lies behind its camera counts as infinitely far (never the case for
    surface points; outlier tracks are chosen to avoid it).
    """
    point_of_obs = np.repeat(np.arange(len(xyz)), np.diff(offsets))
    distance = np.empty(len(camera))
    chunk = 1_000_000
    for start in range(0, len(camera), chunk):
        rows = slice(start, start + chunk)
        cams = camera[rows]
        local = np.einsum("nij,nj->ni", cameras.rotation[cams], xyz[point_of_obs[rows]]) + cameras.translation[cams]
        with np.errstate(divide="ignore", invalid="ignore"):
            projected = cameras.project_camera_points(local)
        d = np.linalg.norm(projected - uv[rows], axis=1)
        distance[rows] = np.where(local[:, 2] > 0.0, d, np.inf)
    return np.bincount(point_of_obs, weights=distance, minlength=len(xyz)) / np.maximum(np.diff(offsets), 1)


def write_model(cameras: Cameras, model: SparseModel, sparse_dir: Path, advance: ProgressCallback | None = None) -> None:
    """Build the Reconstruction through pycolmap and write it (binary) into ``sparse_dir``."""
    reconstruction = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_name(1, "PINHOLE", cameras.fx, cameras.width, cameras.height)
    camera.params = [cameras.fx, cameras.fy, cameras.cx, cameras.cy]
    reconstruction.add_camera_with_trivial_rig(camera)

    # Each image's keypoints are its observations in point order; point2D_idx is the rank there.
    by_image = np.argsort(model.camera, kind="stable")
    per_image = np.bincount(model.camera, minlength=len(cameras))
    image_start = np.concatenate([[0], np.cumsum(per_image)])
    point2d_index = np.empty(len(model.camera), dtype=np.int64)
    point2d_index[by_image] = np.arange(len(by_image)) - np.repeat(image_start[:-1], per_image)
    for i in range(len(cameras)):
        keypoints = np.ascontiguousarray(model.uv[by_image[image_start[i] : image_start[i + 1]]], dtype=np.float64)
        image = pycolmap.Image(name=image_name(i), keypoints=keypoints, camera_id=1, image_id=i + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(cameras.rotation[i]), cameras.translation[i])
        reconstruction.add_image_with_trivial_frame(image, pose)

    for start in range(0, len(model), POINT_CHUNK):
        stop = min(start + POINT_CHUNK, len(model))
        obs_lo, obs_hi = int(model.offsets[start]), int(model.offsets[stop])
        image_ids = (model.camera[obs_lo:obs_hi] + 1).tolist()
        indices = point2d_index[obs_lo:obs_hi].tolist()
        bounds = (model.offsets[start : stop + 1] - obs_lo).tolist()
        xyz = model.xyz[start:stop]
        colour = model.colour[start:stop]
        error = model.error[start:stop].tolist()
        for j in range(stop - start):
            track = pycolmap.Track()
            add = track.add_element
            for k in range(bounds[j], bounds[j + 1]):
                add(image_ids[k], indices[k])
            point_id = reconstruction.add_point3D(xyz[j], track, colour[j])
            reconstruction.point3D(point_id).error = error[j]
        if advance is not None:
            advance(stop - start)

    sparse_dir.mkdir(parents=True, exist_ok=True)
    reconstruction.write_binary(str(sparse_dir))
