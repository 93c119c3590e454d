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
``out_dir`` atomically, as a :class:`PreparedPatch` (which training loads):

    out_dir/init.npz       the initial Gaussians in the canonical frame: means (N,3), scales (N,3), opacities (N,),
                           sh0 (N,1,3) (named and valued as in patchsplat.gaussians), and point_ids (N,)
    out_dir/prepare.json   the canonical frame (world <-> canonical), the settings it read (PREPARE_SETTINGS), counts
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import TrainConfig
from patchsplat.errors import InputError
from patchsplat.gaussians import SH_C0
from patchsplat.output_folder import PREPARE, check_replaceable
from patchsplat.reading import read_json_object, require_keys

# The training settings preparation reads: the only ones dvc.yaml's prepare@* depends on (a test checks),
# and the only ones prepare.json records.
PREPARE_SETTINGS = ("init_scale", "init_opacity", "knn_neighbours", "max_initial_points")

# The Gaussian fields preparation sets (gsplat's names, see patchsplat.gaussians): training draws the
# rotations (quats) at random and starts the higher SH coefficients (shN) at zero.
PREPARED_FIELDS = ("means", "scales", "opacities", "sh0")

# The files of a prepared patch's folder.
INIT_FILE = "init.npz"          # the initial Gaussians (PREPARED_FIELDS) and point_ids
SUMMARY_FILE = "prepare.json"   # the canonical frame, the settings read, counts

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
    """Isotropic Gaussians at the SfM points (gsplat's recipe), in canonical units: PREPARED_FIELDS, float32."""
    spacing = knn_spacing(xyz_canonical, config.knn_neighbours)
    # Duplicate points have zero spacing; the smallest positive spacing keeps log() finite.
    positive = spacing[spacing > 0]
    floor = float(positive.min()) if len(positive) else 1e-3
    scales = np.maximum(spacing, floor) * config.init_scale
    colours = rgb.astype(np.float32) / 255.0
    return {
        "means": xyz_canonical.astype(np.float32),
        "scales": np.repeat(np.log(scales)[:, None], 3, axis=1).astype(np.float32),
        "opacities": np.full(len(xyz_canonical), np.log(config.init_opacity / (1 - config.init_opacity)), np.float32),
        # float32 throughout: bit for bit what torch computed when training made sh0 from the colours.
        "sh0": ((colours - 0.5) / SH_C0)[:, None, :],
    }


@dataclass(frozen=True)
class PreparedPatch:
    """One patch made ready for training (``data/prepared/pN``): what :func:`prepare_patch` writes and training reads.

    On disk it is two files: ``init.npz`` holds ``gaussians`` and ``point_ids``, ``prepare.json`` the rest,
    with counts and initial-scale statistics derived from the Gaussians (for people and ``dvc diff``).
    """

    patch_id: str | None               # the split's id of the patch ("p0"); None for a folder without one
    frame: CanonicalFrame              # world <-> canonical
    settings: dict[str, Any]           # the PREPARE_SETTINGS values the Gaussians were made with
    num_cameras: int                   # the patch's registered images
    gaussians: dict[str, np.ndarray]   # PREPARED_FIELDS, float32, canonical frame (see patchsplat.gaussians)
    point_ids: np.ndarray              # (N,) the SfM point each Gaussian starts at

    @property
    def init_scale(self) -> float:
        """The init_scale the prepared scales were made with (a training override may differ)."""
        return float(self.settings["init_scale"])

    def summary(self) -> dict:
        """The content of prepare.json."""
        canonical_scales = np.exp(self.gaussians["scales"][:, 0].astype(np.float64))
        return {
            "patch": self.patch_id,
            "canonical_frame": self.frame.to_dict(),
            "settings": self.settings,
            "num_gaussians": int(len(self.point_ids)),
            "num_cameras": self.num_cameras,
            "initial_scale_canonical": {"median": float(np.median(canonical_scales)), "mean": float(canonical_scales.mean())},
            "initial_scale_world": {"median": float(np.median(canonical_scales) / self.frame.scale)},
        }

    def save(self, out_dir: Path, inputs: Iterable[Path] = ()) -> None:
        """Write ``out_dir`` atomically (complete or untouched); ``inputs`` are what it was made from (see atomic_dir)."""
        with atomic_dir(out_dir, PREPARE, inputs) as tmp:
            with open(tmp / INIT_FILE, "wb") as handle:
                np.savez(handle, point_ids=self.point_ids, **self.gaussians)
            write_json(tmp / SUMMARY_FILE, self.summary())

    @staticmethod
    def load(prepared_dir: Path) -> PreparedPatch:
        """Read what :meth:`save` wrote; a missing, damaged or incomplete file is an InputError naming it and the key."""
        path = Path(prepared_dir) / SUMMARY_FILE
        summary = read_json_object(path, "prepared patch summary", ["patch", "canonical_frame", "settings", "num_cameras"])
        require_keys(summary["settings"], PREPARE_SETTINGS, path, "the preparation settings")
        arrays = _read_init(Path(prepared_dir) / INIT_FILE)
        return PreparedPatch(
            patch_id=summary["patch"], frame=_frame_of(summary["canonical_frame"], path), settings=summary["settings"],
            num_cameras=summary["num_cameras"], gaussians={key: arrays[key] for key in PREPARED_FIELDS},
            point_ids=arrays["point_ids"],
        )


def _frame_of(data: Any, path: Path) -> CanonicalFrame:
    """prepare.json's canonical_frame, checked: a positive scale and a centre of 3 finite numbers."""
    try:
        frame = CanonicalFrame.from_dict(require_keys(data, ["scale", "centre"], path, "the canonical frame"))
        valid = frame.scale > 0 and frame.centre.shape == (3,) and bool(np.all(np.isfinite(frame.centre)))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InputError(path, "canonical_frame: expected a positive scale and a centre of 3 numbers; rerun prepare",
                         kind="corrupt_file")
    return frame


def _read_init(path: Path) -> dict[str, np.ndarray]:
    """init.npz's arrays: PREPARED_FIELDS and point_ids, one row per Gaussian."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(path, f"not a readable initial-Gaussians archive ({type(error).__name__}); rerun prepare",
                         kind="corrupt_file") from None
    missing = [key for key in (*PREPARED_FIELDS, "point_ids") if key not in arrays]
    if missing:
        raise InputError(path, f"lacks the array {missing[0]!r}; rerun prepare", kind="corrupt_file")
    if len({len(arrays[key]) for key in (*PREPARED_FIELDS, "point_ids")}) != 1:
        raise InputError(path, "its arrays have different numbers of Gaussians; rerun prepare", kind="corrupt_file")
    return arrays


def prepare_patch(patch_dir: Path, out_dir: Path, config: TrainConfig, patch_id: str | None = None) -> dict:
    """Canonical frame and initial Gaussians of one patch, saved as a :class:`PreparedPatch`; returns its summary."""
    # What it reads is the patch's model and patch.json: `patchsplat train` keeps PATCH_DIR/trained.prepared beside them.
    inputs = (patch_dir / "sparse", patch_dir / "patch.json")
    check_replaceable(out_dir, PREPARE, inputs)
    from patchsplat.split import PatchDescription

    patch = PatchDescription.load(patch_dir)
    arrays = read_model_arrays(patch_dir / "sparse" / "0")
    finite = np.all(np.isfinite(arrays.xyz), axis=1)
    point_indices = np.flatnonzero(finite)
    if config.max_initial_points and len(point_indices) > config.max_initial_points:
        rng = np.random.default_rng(0)
        point_indices = np.sort(rng.choice(point_indices, config.max_initial_points, replace=False))
    if len(point_indices) == 0:
        raise InputError(patch_dir / "sparse" / "0", "the patch has no finite 3D points to start from", kind="empty_patch")
    frame = canonical_frame(arrays.camera_centres, arrays.xyz[point_indices])
    prepared = PreparedPatch(
        patch_id=patch_id or patch.id,
        frame=frame,
        settings={key: value for key, value in config.model_dump(mode="json").items() if key in PREPARE_SETTINGS},
        num_cameras=int(len(arrays.image_ids)),
        gaussians=initial_gaussians(frame.to_canonical(arrays.xyz[point_indices]), arrays.rgb[point_indices], config),
        point_ids=arrays.point_ids[point_indices],
    )
    prepared.save(out_dir, inputs)
    return prepared.summary()
