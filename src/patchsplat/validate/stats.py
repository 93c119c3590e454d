"""Statistics of a point cloud and its cameras: extents, spacing, scale, and the points to worry about.

:func:`scene_statistics` is a pure function of arrays so that it describes a whole
scene here and each patch later, side by side (cameras, points, XYZ range, mean scale).
Everything is deterministic: the nearest-neighbour sample is drawn from a seeded
generator, and undefined values (no points, one camera) are None rather than NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from patchsplat.config import ValidateConfig

# gsplat simple_trainer: scene_scale = 1.1 x the largest camera distance from the camera centroid.
SCENE_SCALE_MARGIN = 1.1
# gsplat's init: per point, sqrt(mean squared distance to its 3 nearest neighbours).
NN_NEIGHBOURS = 3

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class SceneStats:
    """What training and partitioning need to know about a scene (or a patch).

    Lengths are in the model's world units unless the name says canonical.

    - ``extent_min/max``: bounding box of all finite points.
    - ``robust_min/max/size``: box of the [p, 100-p] percentiles per axis (p = ``robust_percentile``).
    - ``mean_nn_spacing`` ("mean scale"): per point, sqrt of the mean squared distance to its
      3 nearest neighbours (gsplat's initial-scale convention), averaged over a deterministic
      sample of ``nn_sample`` points queried against all points.
    - ``scene_scale``: 1.1 x the largest distance of a camera centre from the centroid of the
      camera centres, the quantity gsplat's simple_trainer calls scene_scale (it computes it
      after normalising the world; this one is in world units).
    - ``recommended_init_scale``: ``init_scale_factor`` x ``mean_nn_spacing`` (world units);
      ``recommended_init_scale_canonical`` is the same divided by ``scene_scale``, comparable
      between scenes and patches of different size.
    - ``num_far_outliers``: finite points outside the robust box grown on every side by
      ``outlier_factor`` x the box's largest side; ``num_duplicates``: points at exactly the
      position of an earlier point; ``num_nonfinite``: points with a NaN or infinite coordinate.
    """

    num_cameras: int
    num_points: int
    num_observations: int
    mean_track_length: float
    mean_reprojection_error_px: float | None
    extent_min: Vector | None
    extent_max: Vector | None
    robust_min: Vector | None
    robust_max: Vector | None
    robust_size: Vector | None
    mean_nn_spacing: float | None
    scene_scale: float | None
    recommended_init_scale: float | None
    recommended_init_scale_canonical: float | None
    num_far_outliers: int
    num_duplicates: int
    num_nonfinite: int

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class PointFlags:
    """Per-point masks behind the counts of :class:`SceneStats` (for listing ids)."""

    nonfinite: np.ndarray     # (N,) bool
    far_outlier: np.ndarray   # (N,) bool
    duplicate: np.ndarray     # (N,) bool: repeats the position of a point with a smaller index


def scene_statistics(
    xyz: np.ndarray,
    camera_centres: np.ndarray,
    *,
    num_observations: int,
    mean_track_length: float,
    mean_reprojection_error: float,
    config: ValidateConfig,
    rng_seed: int = 0,
) -> SceneStats:
    """Statistics of points ``xyz`` (N, 3) seen from cameras at ``camera_centres`` (M, 3). See :class:`SceneStats`."""
    stats, _ = analyse_points(
        xyz, camera_centres,
        num_observations=num_observations, mean_track_length=mean_track_length,
        mean_reprojection_error=mean_reprojection_error, config=config, rng_seed=rng_seed,
    )
    return stats


def analyse_points(
    xyz: np.ndarray,
    camera_centres: np.ndarray,
    *,
    num_observations: int,
    mean_track_length: float,
    mean_reprojection_error: float,
    config: ValidateConfig,
    rng_seed: int = 0,
) -> tuple[SceneStats, PointFlags]:
    """:func:`scene_statistics` plus the per-point masks, computed once."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    centres = np.asarray(camera_centres, dtype=np.float64).reshape(-1, 3)
    finite = np.isfinite(xyz).all(axis=1)
    points = xyz[finite] if not finite.all() else xyz

    far = np.zeros(len(xyz), dtype=bool)
    duplicate = np.zeros(len(xyz), dtype=bool)
    extent_min = extent_max = robust_min = robust_max = robust_size = None
    if len(points):
        extent_min, extent_max = _vector(points.min(axis=0)), _vector(points.max(axis=0))
        low, high = np.percentile(points, [config.robust_percentile, 100.0 - config.robust_percentile], axis=0)
        robust_min, robust_max, robust_size = _vector(low), _vector(high), _vector(high - low)
        # One margin for all axes (the box's largest side): a flat scene's thin axis must not
        # make every building or tree a "far" outlier.
        margin = config.outlier_factor * float(np.max(high - low))
        outside = ((points < low - margin) | (points > high + margin)).any(axis=1)
        far[np.flatnonzero(finite)[outside]] = True
        duplicate[np.flatnonzero(finite)[_duplicate_rows(points)]] = True

    spacing = mean_nn_spacing(points, config.nn_sample, rng_seed)
    scale = scene_scale(centres)
    init_scale = None if spacing is None else config.init_scale_factor * spacing
    canonical = None if init_scale is None or not scale else init_scale / scale
    stats = SceneStats(
        num_cameras=len(centres),
        num_points=len(xyz),
        num_observations=int(num_observations),
        mean_track_length=float(mean_track_length),
        mean_reprojection_error_px=float(mean_reprojection_error) if np.isfinite(mean_reprojection_error) else None,
        extent_min=extent_min,
        extent_max=extent_max,
        robust_min=robust_min,
        robust_max=robust_max,
        robust_size=robust_size,
        mean_nn_spacing=spacing,
        scene_scale=scale,
        recommended_init_scale=init_scale,
        recommended_init_scale_canonical=canonical,
        num_far_outliers=int(far.sum()),
        num_duplicates=int(duplicate.sum()),
        num_nonfinite=int((~finite).sum()),
    )
    return stats, PointFlags(nonfinite=~finite, far_outlier=far, duplicate=duplicate)


def mean_nn_spacing(points: np.ndarray, sample_size: int, rng_seed: int = 0) -> float | None:
    """Mean over a seeded sample of points of sqrt(mean squared distance to the 3 nearest other points).

    Neighbours are searched among ALL points (only the queries are sampled). None with
    fewer than 2 points; with fewer than 4, the available neighbours are used.
    """
    if len(points) < 2:
        return None
    from scipy.spatial import cKDTree

    # balanced_tree/compact_nodes off: 2-3x faster build on a million points, same answers.
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)
    if len(points) > sample_size:
        rng = np.random.default_rng(rng_seed)
        queries = points[np.sort(rng.choice(len(points), size=sample_size, replace=False))]
    else:
        queries = points
    k = min(NN_NEIGHBOURS + 1, len(points))  # +1: the nearest hit is the point itself
    distances, _ = tree.query(queries, k=k, workers=-1)
    per_point = np.sqrt(np.mean(np.square(distances[:, 1:]), axis=1))
    return float(per_point.mean())


def scene_scale(camera_centres: np.ndarray) -> float | None:
    """1.1 x the largest distance of a finite camera centre from their centroid (gsplat's scene_scale); None without cameras."""
    centres = camera_centres[np.isfinite(camera_centres).all(axis=1)]
    if len(centres) == 0:
        return None
    distances = np.linalg.norm(centres - centres.mean(axis=0), axis=1)
    return float(SCENE_SCALE_MARGIN * distances.max())


def _duplicate_rows(points: np.ndarray) -> np.ndarray:
    """Mask of rows equal to an earlier row (exact float equality), without sorting the rows themselves.

    Rows are hashed (their float64 bits as uint64, -0.0 folded onto 0.0) and the hashes
    sorted; only rows whose hash repeats are compared exactly, so a hash collision can
    never report a false duplicate.
    """
    bits = np.ascontiguousarray(points + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
    with np.errstate(over="ignore"):
        hashes = (bits[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ (bits[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)) ^ (
            bits[:, 2] * np.uint64(0x165667B19E3779F9)
        )
    order = np.argsort(hashes, kind="stable")
    same_as_next = hashes[order[1:]] == hashes[order[:-1]]
    mask = np.zeros(len(points), dtype=bool)
    if not same_as_next.any():
        return mask
    in_run = np.zeros(len(points), dtype=bool)
    in_run[:-1] |= same_as_next
    in_run[1:] |= same_as_next
    candidates = np.sort(order[in_run])
    _, first = np.unique(bits[candidates], axis=0, return_index=True)
    mask[candidates] = True
    mask[candidates[first]] = False
    return mask


def _vector(values: np.ndarray) -> Vector:
    return (float(values[0]), float(values[1]), float(values[2]))
