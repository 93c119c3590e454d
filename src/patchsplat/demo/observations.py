"""Which cameras see which surface points: real tracks with exact visibility.

Contract: :func:`build_tracks` returns ``config.num_points`` surface points, each observed by
between 2 and ``max_track_length`` cameras. A camera observes a point when the point is in front
of it, projects inside the image, faces it (not at a grazing angle) and no object blocks the
segment between them (an exact analytic test, so the observation agrees with the rendered pixel at
any resolution, with or without images). Longer tracks are cut to ``max_track_length`` by a hash
of (point, camera), so the choice does not depend on processing order. Observed 2D positions are
the exact projections plus N(0, noise_px) noise.

Scale: candidates are bucketed into square tiles; each tile is tested only against the cameras
whose view footprint overlaps it, and each (tile, camera) pair only against the objects that can
stand between them, so the cost grows with observations, not with cameras x points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from patchsplat.config import DemoSceneConfig
from patchsplat.demo.layout import SceneLayout, objects_in_view, view_footprints
from patchsplat.demo.raycast import occluded
from patchsplat.demo.sampling import SurfaceSamples, expected_keep_fraction, sample_surfaces
from patchsplat.errors import InputError

# A feature seen at more than ~84 degrees from its surface normal would not be matched.
MIN_VIEW_COSINE = 0.1
NEAR_DEPTH = 0.05
# Observations must project at least this far inside the image border (pixels).
BORDER_PX = 0.5
TILE_TARGET_SIDE = 6.0
MAX_ROUNDS = 12
MAX_OVERSAMPLING = 20

ProgressCallback = Callable[[int], None]


@dataclass
class Tracks:
    """Surface points and their observations, in CSR layout (point i owns rows offsets[i]:offsets[i+1])."""

    samples: SurfaceSamples  # the true surface points (before any point_noise)
    offsets: np.ndarray  # (P + 1,) int64
    camera: np.ndarray  # (O,) int32 image index of each observation
    uv: np.ndarray  # (O, 2) float64 noisy observed pixel positions

    @property
    def track_length(self) -> np.ndarray:
        return np.diff(self.offsets)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed deterministic hash of uint64 values."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _tile_side(layout: SceneLayout) -> float:
    side = 2.0 * layout.area_half
    return side / max(1, math.ceil(side / TILE_TARGET_SIDE))


def build_tracks(layout: SceneLayout, config: DemoSceneConfig, advance: ProgressCallback | None = None) -> Tracks:
    """Sample, observe and trim to exactly ``config.num_points`` tracked points.

    Candidates are drawn in rounds until enough survive (seen by >= 2 cameras); each round's
    candidates come in random order, so keeping the first ``num_points`` survivors keeps a uniform
    sample. ``advance(n)`` is called with the number of new points kept.
    """
    cameras = layout.cameras
    footprints = view_footprints(cameras, layout.max_object_top, max_distance=4.0 * layout.ground_half)
    view_objects = [objects_in_view(layout, i) for i in range(len(cameras))]
    target = config.num_points
    # A guess for round 0 (about 90% of the candidates are usually tracked), then measured.
    survival = 0.9 * expected_keep_fraction(layout)

    kept_samples: list[SurfaceSamples] = []
    kept_lengths: list[np.ndarray] = []
    kept_camera: list[np.ndarray] = []
    kept_uv: list[np.ndarray] = []
    total = 0
    for round_index in range(MAX_ROUNDS):
        need = target - total
        # Bounded, so a scene whose cameras hardly overlap fails after MAX_ROUNDS instead of
        # drawing billions of candidates.
        count = min(int(math.ceil(need / survival * 1.05)) + 64, MAX_OVERSAMPLING * need + 1000)
        rng = np.random.default_rng([config.seed, 10, round_index])
        samples = sample_surfaces(layout, count, rng)
        start, length, camera, uv = _observe(layout, config, samples, footprints, view_objects, round_index)
        seen_twice = np.flatnonzero(length >= 2)
        survival = max(len(seen_twice) / count, 1e-3)
        tracked = seen_twice[:need]
        if len(tracked):
            rows = _csr_rows(start[tracked], length[tracked])
            kept_samples.append(samples.subset(tracked))
            kept_lengths.append(length[tracked])
            kept_camera.append(camera[rows])
            kept_uv.append(uv[rows])
            total += len(tracked)
            if advance is not None:
                advance(len(tracked))
        del samples, start, length, camera, uv
        if total >= target:
            break
    else:
        raise InputError(
            "scene.demo",
            f"only {total} of num_points={target} surface points are seen by 2 or more cameras "
            "(add cameras, or lower num_points)",
            kind="bad_params",
        )

    samples = SurfaceSamples(
        _join([s.points for s in kept_samples]),
        _join([s.normals for s in kept_samples]),
        _join([s.surface for s in kept_samples]),
    )
    offsets = np.concatenate([[0], np.cumsum(_join(kept_lengths))]).astype(np.int64)
    return Tracks(samples, offsets, _join(kept_camera), _join(kept_uv))


def _join(parts: list[np.ndarray]) -> np.ndarray:
    # A single part (the usual case) is returned as is: no copy of millions of observations.
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _csr_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated row ranges ``starts[i] : starts[i] + lengths[i]``."""
    shift = starts - np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()))


def _observe(
    layout: SceneLayout,
    config: DemoSceneConfig,
    samples: SurfaceSamples,
    footprints: np.ndarray,
    view_objects: list[np.ndarray],
    round_index: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All (capped, noisy) observations of ``samples`` as (start, length, camera, uv): sample i's
    observations are rows ``start[i] : start[i] + length[i]``, in camera order. Rows are grouped by
    tile, not by sample, which spares a global sort of every observation."""
    cameras = layout.cameras
    objects = layout.objects
    tile = _tile_side(layout)
    per_side = max(1, int(round(2.0 * layout.area_half / tile)))
    cell = np.clip(np.floor((samples.points[:, :2] + layout.area_half) / tile).astype(np.int64), 0, per_side - 1)
    tile_key = cell[:, 0] * per_side + cell[:, 1]
    order = np.argsort(tile_key, kind="stable")
    keys, starts = np.unique(tile_key[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    object_lo = objects.centre[:, :2] - objects.radius_xy[:, None]
    object_hi = objects.centre[:, :2] + objects.radius_xy[:, None]

    obs_start = np.zeros(len(samples), dtype=np.int64)
    obs_length = np.zeros(len(samples), dtype=np.int64)
    written = 0
    camera_parts: list[np.ndarray] = []
    uv_parts: list[np.ndarray] = []
    for key, start, end in zip(keys, starts, ends):
        members = order[start:end]
        xy = samples.points[members, :2]
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        seeing = np.flatnonzero(
            (footprints[:, 0] <= hi[0]) & (footprints[:, 2] >= lo[0]) & (footprints[:, 1] <= hi[1]) & (footprints[:, 3] >= lo[1])
        )
        tile_points: list[np.ndarray] = []
        tile_cameras: list[np.ndarray] = []
        tile_uv: list[np.ndarray] = []
        for cam in seeing:
            box = footprints[cam]
            rows = members[(xy[:, 0] >= box[0]) & (xy[:, 0] <= box[2]) & (xy[:, 1] >= box[1]) & (xy[:, 1] <= box[3])]
            if len(rows) == 0:
                continue
            centre = cameras.centre[cam]
            local = cameras.to_camera(cam, samples.points[rows])
            front = local[:, 2] > NEAR_DEPTH
            rows, local = rows[front], local[front]
            uv = cameras.project_camera_points(local)
            inside = (
                (uv[:, 0] >= BORDER_PX) & (uv[:, 0] <= cameras.width - BORDER_PX)
                & (uv[:, 1] >= BORDER_PX) & (uv[:, 1] <= cameras.height - BORDER_PX)
            )
            rows, uv = rows[inside], uv[inside]
            to_camera = centre - samples.points[rows]
            facing = (samples.normals[rows] * to_camera).sum(axis=1) > MIN_VIEW_COSINE * np.linalg.norm(to_camera, axis=1)
            rows, uv = rows[facing], uv[facing]
            if len(rows) == 0:
                continue
            # Occluders must be in view and stand somewhere between the camera and this tile.
            candidates = view_objects[cam]
            span_lo = np.minimum(lo, centre[:2])
            span_hi = np.maximum(hi, centre[:2])
            between = (object_lo[candidates] <= span_hi).all(axis=1) & (object_hi[candidates] >= span_lo).all(axis=1)
            blocked = occluded(layout, centre, samples.points[rows], samples.surface[rows], candidates[between])
            rows, uv = rows[~blocked], uv[~blocked]
            tile_points.append(rows)
            tile_cameras.append(np.full(len(rows), cam, dtype=np.int32))
            tile_uv.append(uv)
        if not tile_points:
            continue
        points = np.concatenate(tile_points)
        cams = np.concatenate(tile_cameras)
        uv = np.concatenate(tile_uv)
        keep = _cap_tracks(points, cams, config.max_track_length, round_index, config.seed)
        points, cams, uv = points[keep], cams[keep], uv[keep]
        rng = np.random.default_rng([config.seed, 20, round_index, int(key)])
        uv = uv + rng.normal(0.0, config.noise_px, uv.shape) if config.noise_px > 0 else uv
        uv[:, 0] = np.clip(uv[:, 0], 0.0, float(cameras.width))
        uv[:, 1] = np.clip(uv[:, 1], 0.0, float(cameras.height))
        owners, first, counts = np.unique(points, return_index=True, return_counts=True)
        obs_start[owners] = written + first
        obs_length[owners] = counts
        written += len(points)
        camera_parts.append(cams)
        uv_parts.append(uv)

    if not camera_parts:
        return obs_start, obs_length, np.zeros(0, dtype=np.int32), np.zeros((0, 2))
    return obs_start, obs_length, np.concatenate(camera_parts), np.concatenate(uv_parts)


def _cap_tracks(points: np.ndarray, cams: np.ndarray, cap: int, round_index: int, seed: int) -> np.ndarray:
    """Rows to keep, sorted by (point, camera), so no point has more than ``cap`` observations (the
    lowest hash keys of (point, camera) win)."""
    point_id = (np.uint64(round_index) << np.uint64(40)) + points.astype(np.uint64)
    key = _mix64(_mix64(point_id ^ np.uint64(seed)) + cams.astype(np.uint64))
    order = np.lexsort((key, points))
    sorted_points = points[order]
    group_start = np.r_[0, np.flatnonzero(sorted_points[1:] != sorted_points[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    kept = order[rank < cap]
    return kept[np.lexsort((cams[kept], points[kept]))]
