"""Distances between surfaces and the scores built on them (accuracy, completeness, Chamfer, F-score).

Contract: pure functions of arrays (and a trimesh mesh where a surface is needed); distances are in
the units of the inputs (the COLMAP model's world units).

How a distance from a point to a surface is measured
----------------------------------------------------
The surface is sampled (``trimesh.sample.sample_surface`` with a fixed seed, remembering which
triangle each sample came from); the samples plus one centroid per triangle go into a scipy
``cKDTree``. For each query point the ``CANDIDATE_SAMPLES`` nearest of those name candidate
triangles, and the exact point-to-triangle distance to them is taken (``trimesh.triangles.
closest_point``, vectorised numpy). Area samples find large triangles (the demo's ground is two
648 m^2 triangles: their centroids are far from most of their surface); centroids find small ones
(a sphere's 0.002 m^2 facets get almost no area samples). The result is never larger than the
distance to the nearest sample and never smaller than the true point-to-surface distance; it is the
true distance whenever the nearest triangle is among the candidates, which fails only for a triangle
of about the sample spacing that has no nearby sample and a distant centroid, where the error is
bounded by the surface's deviation from the neighbouring candidate triangles. Measured on the demo's
1,500 m^2 ground-truth mesh against itself (200k samples each): mean distance 2e-5 m, 0.04% of the
points farther than a tenth of the 0.17 m F-score threshold; plain nearest-sample distances would
instead average 0.042 m (about half the sample spacing, a quarter of the threshold).

Why not ``trimesh.proximity.closest_point``: it needs ``rtree`` (not installed, not a dependency)
and queries triangles one bounding-box search at a time; the kd-tree + vectorised refinement here
measures ~0.6 s per 400k point-triangle pairs on 2 cores; 200k queries with 6 candidates took 1.3 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.spatial import cKDTree

# Nearest samples whose triangles are tried exactly for each query point.
CANDIDATE_SAMPLES = 6
# Queries refined per batch: bounds memory to ~CHUNK x CANDIDATE_SAMPLES triangles (~60 MB of float64).
_CHUNK = 50_000


@dataclass(frozen=True)
class SurfaceSamples:
    """Points sampled on a triangle mesh, with the triangle each came from and a kd-tree over them."""

    points: np.ndarray        # (S, 3) float64: area-uniform samples (used as query points)
    face_index: np.ndarray    # (S,) the triangle each sample lies on
    triangles: np.ndarray     # (F, 3, 3) float64: the mesh's triangles, vertex coordinates
    tree: cKDTree             # over the samples followed by the F triangle centroids
    tree_faces: np.ndarray    # (S + F,) the triangle of each point of ``tree``

    def __len__(self) -> int:
        return len(self.points)


def sample_surface(mesh: trimesh.Trimesh, count: int, seed: int) -> SurfaceSamples:
    """``count`` points sampled uniformly by area on ``mesh`` (reproducible for a given ``seed``).

    Raises ValueError for a mesh without area (no faces, or only degenerate ones).
    """
    if len(mesh.faces) == 0 or not float(mesh.area) > 0.0:
        raise ValueError("the mesh has no surface area (no faces or only degenerate faces)")
    points, face_index = trimesh.sample.sample_surface(mesh, int(count), seed=seed)
    points = np.asarray(points, dtype=np.float64)
    face_index = np.asarray(face_index, dtype=np.int64)
    triangles = np.asarray(mesh.triangles, dtype=np.float64)
    index_points = np.concatenate([points, triangles.mean(axis=1)])
    tree_faces = np.concatenate([face_index, np.arange(len(triangles), dtype=np.int64)])
    return SurfaceSamples(points, face_index, triangles, cKDTree(index_points), tree_faces)


def distances_to_surface(queries: np.ndarray, surface: SurfaceSamples, candidates: int = CANDIDATE_SAMPLES) -> np.ndarray:
    """(Q,) distance from each of the (Q, 3) ``queries`` to the sampled surface (see the module docstring)."""
    queries = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
    distances = np.empty(len(queries))
    k = max(1, min(candidates, len(surface.tree_faces)))
    for start in range(0, len(queries), _CHUNK):
        batch = queries[start : start + _CHUNK]
        nearest, index = surface.tree.query(batch, k=k, workers=-1)
        index = index.reshape(len(batch), k)
        triangles = surface.triangles[surface.tree_faces[index]].reshape(-1, 3, 3)
        repeated = np.repeat(batch, k, axis=0)
        closest = trimesh.triangles.closest_point(triangles, repeated)
        exact = np.linalg.norm(closest - repeated, axis=1).reshape(len(batch), k)
        # A degenerate triangle can give NaN; the nearest indexed point (on the surface) bounds the rest.
        exact = np.where(np.isfinite(exact), exact, np.inf).min(axis=1)
        distances[start : start + _CHUNK] = np.minimum(exact, nearest.reshape(len(batch), k)[:, 0])
    return distances


def inside_box(points: np.ndarray, box_min: np.ndarray, box_max: np.ndarray) -> np.ndarray:
    """(N,) boolean: rows of the (N, 3) ``points`` inside the closed box [box_min, box_max]."""
    return np.all((points >= np.asarray(box_min)) & (points <= np.asarray(box_max)), axis=1)


def robust_box(points: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-axis [percentile, 100 - percentile] box of the finite rows of (N, 3) ``points``."""
    finite = points[np.all(np.isfinite(points), axis=1)]
    if len(finite) == 0:
        raise ValueError("no finite points to bound")
    low, high = np.percentile(finite, [percentile, 100.0 - percentile], axis=0)
    return low, high


def box_diagonal(box_min: np.ndarray, box_max: np.ndarray) -> float:
    """Length of the box's diagonal (the scene extent used for thresholds)."""
    return float(np.linalg.norm(np.asarray(box_max, float) - np.asarray(box_min, float)))


def distance_scores(accuracy_distances: np.ndarray, completeness_distances: np.ndarray, threshold: float) -> dict:
    """Scores from the two one-sided distance sets (DTU / Tanks-and-Temples conventions).

    ``accuracy_distances``: from points on the evaluated surface to the reference;
    ``completeness_distances``: from points on the reference to the evaluated surface.
    Returns accuracy and completeness (means), chamfer (their mean), precision and recall (fractions
    of distances strictly below ``threshold``) and fscore (their harmonic mean; 0 when both are 0),
    with the medians and the counts used. Raises ValueError for an empty set (a mean of nothing
    would be NaN).
    """
    if len(accuracy_distances) == 0 or len(completeness_distances) == 0:
        raise ValueError("both distance sets must be non-empty")
    accuracy = float(np.mean(accuracy_distances))
    completeness = float(np.mean(completeness_distances))
    precision = float(np.mean(accuracy_distances < threshold))
    recall = float(np.mean(completeness_distances < threshold))
    fscore = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy": accuracy,
        "completeness": completeness,
        "chamfer": 0.5 * (accuracy + completeness),
        "precision": precision,
        "recall": recall,
        "fscore": float(fscore),
        "accuracy_median": float(np.median(accuracy_distances)),
        "completeness_median": float(np.median(completeness_distances)),
        "num_accuracy_points": int(len(accuracy_distances)),
        "num_completeness_points": int(len(completeness_distances)),
    }


def compare_surfaces(
    evaluated: trimesh.Trimesh,
    reference: trimesh.Trimesh,
    threshold: float,
    samples: int,
    crop: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> dict:
    """Accuracy / completeness / Chamfer / F-score of ``evaluated`` against ``reference``.

    ``samples`` points are sampled on each mesh (seeds ``seed`` and ``seed + 1``: independent sets,
    so comparing a mesh with itself measures the sampling noise instead of returning 0 by
    construction). With ``crop = (box_min, box_max)`` only samples inside the box are scored (on both
    sides), while distances are measured to the whole other surface, so a point near the box's edge
    still finds its match just outside it. See :func:`distance_scores` for the returned keys.
    Raises ValueError when a mesh has no area or the crop leaves no samples of one of them.
    """
    ours = sample_surface(evaluated, samples, seed)
    theirs = sample_surface(reference, samples, seed + 1)
    our_points, their_points = ours.points, theirs.points
    if crop is not None:
        our_points = our_points[inside_box(our_points, *crop)]
        their_points = their_points[inside_box(their_points, *crop)]
    if len(our_points) == 0:
        raise ValueError("no point of the evaluated mesh lies inside the evaluation box")
    if len(their_points) == 0:
        raise ValueError("no point of the reference mesh lies inside the evaluation box")
    return distance_scores(distances_to_surface(our_points, theirs), distances_to_surface(their_points, ours), threshold)


def points_to_surface_scores(points: np.ndarray, surface: trimesh.Trimesh, threshold: float, samples: int, seed: int = 0) -> dict:
    """One-sided scores of a (N, 3) point set against a mesh: mean, median and 90th percentile of the
    point-to-surface distances and the fraction strictly below ``threshold`` (non-finite rows dropped)."""
    points = np.asarray(points, dtype=np.float64)
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) == 0:
        raise ValueError("no finite points to measure")
    distances = distances_to_surface(points, sample_surface(surface, samples, seed))
    return {
        "mean": float(np.mean(distances)),
        "median": float(np.median(distances)),
        "p90": float(np.percentile(distances, 90)),
        "within_threshold": float(np.mean(distances < threshold)),
        "num_points": int(len(points)),
    }
