"""The deliberate defects that are not part of the layout: far outlier points and missing images.

(The third defect, ``large_scale_region``, changes the layout and the sampling density; see
:mod:`patchsplat.demo.layout` and :mod:`patchsplat.demo.sampling`.)
"""

from __future__ import annotations

import math

import numpy as np

from patchsplat.config import DemoSceneConfig
from patchsplat.demo.colmap_model import SparseModel, reprojection_errors
from patchsplat.demo.layout import SceneLayout
from patchsplat.errors import InputError

OUTLIER_DISTANCE = (10.0, 50.0)  # in multiples of the extent, from the scene centre
OUTLIER_ELEVATION_DEG = (2.0, 12.0)
BEHIND_CAMERA_ERROR_PX = 1.0e4
# The observed position is the farthest of this many random image positions from the true
# projection, so every outlier gets a large reprojection error.
OUTLIER_POSITION_TRIES = 16


def make_outliers(layout: SceneLayout, config: DemoSceneConfig) -> SparseModel:
    """``defects.outlier_points`` points 10-50x the extent away, each observed by 2 cameras, at image
    positions far from where it projects (so each has a large reprojection error).

    Each point is placed roughly ahead of a randomly chosen camera, low above the horizon, and its
    second camera is one that also has it in front, so the stored error is a finite distance.
    """
    count = config.defects.outlier_points
    cameras = layout.cameras
    rng = np.random.default_rng([config.seed, 30])
    size = np.array([cameras.width, cameras.height], dtype=float)
    xyz = np.zeros((count, 3))
    camera = np.zeros(2 * count, dtype=np.int32)
    uv = np.zeros((2 * count, 2))
    forward = cameras.rotation[:, 2, :]
    for i in range(count):
        first = int(rng.integers(len(cameras)))
        azimuth = math.atan2(forward[first, 1], forward[first, 0]) + math.radians(rng.uniform(-25.0, 25.0))
        elevation = math.radians(rng.uniform(*OUTLIER_ELEVATION_DEG))
        distance = rng.uniform(*OUTLIER_DISTANCE) * config.extent
        direction = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
        xyz[i] = distance * direction
        depth = np.einsum("nj,nj->n", forward, xyz[i] - cameras.centre)
        others = np.flatnonzero((depth > 0.0) & (np.arange(len(cameras)) != first))
        if len(others) == 0:
            others = np.flatnonzero(np.arange(len(cameras)) != first)
        pair = sorted([first, int(rng.choice(others))])
        for j, cam in enumerate(pair):
            local = cameras.to_camera(cam, xyz[i : i + 1])
            projected = cameras.project_camera_points(local)[0] if local[0, 2] > 0 else size / 2.0
            tries = rng.uniform(0.0, 1.0, (OUTLIER_POSITION_TRIES, 2)) * size
            camera[2 * i + j] = cam
            uv[2 * i + j] = tries[np.argmax(np.linalg.norm(tries - projected, axis=1))]
    offsets = np.arange(0, 2 * count + 1, 2, dtype=np.int64)
    colour = rng.integers(60, 200, (count, 3)).astype(np.uint8)
    error = reprojection_errors(cameras, xyz, offsets, camera, uv)
    # Only if no second camera has the point in front (tiny camera sets): a finite stand-in.
    error = np.where(np.isfinite(error), error, BEHIND_CAMERA_ERROR_PX)
    return SparseModel(xyz=xyz, colour=colour, error=error, offsets=offsets, camera=camera, uv=uv)


def choose_missing_images(config: DemoSceneConfig) -> np.ndarray:
    """Sorted indices of the registered images whose PNG is deliberately not written."""
    count = config.defects.missing_images
    if count >= config.num_cameras:
        raise InputError(
            "scene.demo.defects.missing_images",
            f"must be less than num_cameras={config.num_cameras} (got {count})",
            kind="bad_params",
        )
    rng = np.random.default_rng([config.seed, 40])
    return np.sort(rng.choice(config.num_cameras, count, replace=False))
