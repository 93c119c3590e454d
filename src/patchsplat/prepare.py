"""Per-patch preparation for training: the canonical frame and the initial Gaussians.

Canonical frame: each patch is moved and scaled so its cameras' centroid is the
origin and its scene scale (1.1 x the largest camera distance from the centroid,
gsplat's convention) is 1. It is not rotated: a rotation would have to be applied to
every Gaussian's view-dependent colour (spherical harmonics) on the way back to the
world frame, and training does not care where up is. Initial scales, learning rates and densification
thresholds are then the same numbers for every patch whatever the capture's units or
extent: the motivating failure (a default initial scale too small for one patch) came
from applying world-unit defaults to patches of different size.

Contract: :func:`prepare_patch` reads ``patch_dir`` (``sparse/0`` and ``patch.json``) and writes
``out_dir`` atomically:

    out_dir/init.npz       means (N,3) canonical, log_scales (N,3), colours (N,3) in [0,1],
                           opacity_logits (N,), point_ids (N,) — load with allow_pickle=False
    out_dir/prepare.json   the canonical frame (world <-> canonical), the settings it read (PREPARE_SETTINGS), counts
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import TrainConfig
from patchsplat.errors import InputError
from patchsplat.output_folder import PREPARE, check_replaceable

# The training settings preparation reads: the only ones dvc.yaml's prepare@* depends on (a test checks),
# and the only ones prepare.json records.
PREPARE_SETTINGS = ("init_scale", "init_opacity", "knn_neighbours", "max_initial_points")

# Queries are answered this many points at a time so memory stays bounded (k distances + indices per point).
_KNN_CHUNK = 262_144


@dataclass(frozen=True)
class CanonicalFrame:
    """canonical = scale * (world - centre); lengths (and Gaussian scales) multiply by ``scale``."""

    scale: float
    centre: np.ndarray     # (3,) world position of the canonical origin

    def to_canonical(self, xyz: np.ndarray) -> np.ndarray:
        return self.scale * (xyz - self.centre)

    def to_world(self, xyz: np.ndarray) -> np.ndarray:
        return xyz / self.scale + self.centre

    def to_dict(self) -> dict:
        return {"scale": self.scale, "centre": self.centre.tolist()}

    @staticmethod
    def from_dict(data: dict) -> CanonicalFrame:
        return CanonicalFrame(float(data["scale"]), np.asarray(data["centre"], float))


def canonical_frame(camera_centres: np.ndarray, xyz: np.ndarray) -> CanonicalFrame:
    """The frame in which the cameras' scene scale is 1 (falls back to the points' extent for a single camera)."""
    centre = camera_centres.mean(axis=0)
    scene_scale = 1.1 * float(np.max(np.linalg.norm(camera_centres - centre, axis=1))) if len(camera_centres) else 0.0
    if scene_scale <= 1e-12:
        finite = xyz[np.all(np.isfinite(xyz), axis=1)]
        scene_scale = float(np.linalg.norm(np.ptp(finite, axis=0))) if len(finite) > 1 else 1.0
    return CanonicalFrame(1.0 / scene_scale, centre)


def knn_spacing(xyz: np.ndarray, neighbours: int = 3) -> np.ndarray:
    """Per point: sqrt of the mean squared distance to its ``neighbours`` nearest other points.

    cKDTree in bounded memory (chunked queries, all cores); sklearn, which gsplat's example uses,
    was measured 2x slower at 5 M points.
    """
    if len(xyz) < 2:
        return np.ones(len(xyz))
    k = min(neighbours, len(xyz) - 1) + 1  # the nearest hit is the point itself
    tree = cKDTree(xyz, balanced_tree=False, compact_nodes=False)
    spacing = np.empty(len(xyz))
    for start in range(0, len(xyz), _KNN_CHUNK):
        distances, _ = tree.query(xyz[start : start + _KNN_CHUNK], k=k, workers=-1)
        spacing[start : start + _KNN_CHUNK] = np.sqrt(np.mean(distances[:, 1:] ** 2, axis=1))
    return spacing


def initial_gaussians(xyz_canonical: np.ndarray, rgb: np.ndarray, config: TrainConfig) -> dict[str, np.ndarray]:
    """Isotropic Gaussians at the SfM points (gsplat's recipe), in canonical units."""
    spacing = knn_spacing(xyz_canonical, config.knn_neighbours)
    # Duplicate points have zero spacing; the smallest positive spacing keeps log() finite.
    positive = spacing[spacing > 0]
    floor = float(positive.min()) if len(positive) else 1e-3
    scales = np.maximum(spacing, floor) * config.init_scale
    return {
        "means": xyz_canonical.astype(np.float32),
        "log_scales": np.repeat(np.log(scales)[:, None], 3, axis=1).astype(np.float32),
        "colours": (rgb.astype(np.float32) / 255.0),
        "opacity_logits": np.full(len(xyz_canonical), np.log(config.init_opacity / (1 - config.init_opacity)), np.float32),
    }


def prepare_patch(patch_dir: Path, out_dir: Path, config: TrainConfig, patch_id: str | None = None) -> dict:
    """Canonical frame and initial Gaussians of one patch; returns the summary written to prepare.json."""
    # What it reads is the patch's model and patch.json: `patchsplat train` keeps PATCH_DIR/trained.prepared beside them.
    inputs = (patch_dir / "sparse", patch_dir / "patch.json")
    check_replaceable(out_dir, PREPARE, inputs)
    from patchsplat.split import read_patch_description

    patch = read_patch_description(patch_dir)
    arrays = read_model_arrays(patch_dir / "sparse" / "0")
    finite = np.all(np.isfinite(arrays.xyz), axis=1)
    point_indices = np.flatnonzero(finite)
    if config.max_initial_points and len(point_indices) > config.max_initial_points:
        rng = np.random.default_rng(0)
        point_indices = np.sort(rng.choice(point_indices, config.max_initial_points, replace=False))
    if len(point_indices) == 0:
        raise InputError(patch_dir / "sparse" / "0", "the patch has no finite 3D points to start from", kind="empty_patch")
    frame = canonical_frame(arrays.camera_centres, arrays.xyz[point_indices])
    gaussians = initial_gaussians(frame.to_canonical(arrays.xyz[point_indices]), arrays.rgb[point_indices], config)
    canonical_scales = np.exp(gaussians["log_scales"][:, 0].astype(np.float64))
    summary = {
        "patch": patch_id or patch.get("id"),
        "canonical_frame": frame.to_dict(),
        "settings": {key: value for key, value in config.model_dump(mode="json").items() if key in PREPARE_SETTINGS},
        "num_gaussians": int(len(point_indices)),
        "num_cameras": int(len(arrays.image_ids)),
        "initial_scale_canonical": {"median": float(np.median(canonical_scales)), "mean": float(canonical_scales.mean())},
        "initial_scale_world": {"median": float(np.median(canonical_scales) / frame.scale)},
    }
    with atomic_dir(out_dir, PREPARE, inputs) as tmp:
        with open(tmp / "init.npz", "wb") as handle:
            np.savez(handle, point_ids=arrays.point_ids[point_indices], **gaussians)
        write_json(tmp / "prepare.json", summary)
    return summary
