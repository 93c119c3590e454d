"""What every export format starts from: the Gaussians as float32 arrays, those it cannot store left out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchsplat.gaussians import GAUSSIAN_FIELDS, SH_C0
from patchsplat.splat_io import finite_splats


@dataclass(frozen=True)
class Kept:
    """The Gaussians a format stores (raw fields as float32 numpy arrays) and the indices of those left out."""

    fields: dict[str, np.ndarray]
    dropped: np.ndarray

    @property
    def count(self) -> int:
        return int(self.fields["means"].shape[0])

    @property
    def sh_degree(self) -> int:
        """The SH degree of ``shN`` (K = (degree + 1)^2 - 1 coefficients per channel)."""
        return {0: 0, 3: 1, 8: 2, 15: 3}[self.fields["shN"].shape[1]]


def kept_gaussians(gaussians: Mapping[str, Any], unit_rotations: bool = False) -> Kept:
    """Validate the Gaussians and drop, each alone, those with a value not finite in float32 (as the PLY writer
    does) and, for a format storing unit quaternions, those whose quaternion cannot be normalised (length 0).
    Raises ValueError for wrong shapes or an SH degree above 3 (no format here stores more)."""
    fields, finite = finite_splats(**{name: gaussians[name] for name in GAUSSIAN_FIELDS})
    keep = finite
    if unit_rotations:
        keep = keep & (np.linalg.norm(np.where(finite[:, None], fields["quats"], 1.0), axis=1) > 0)
    if fields["shN"].shape[1] not in (0, 3, 8, 15):
        raise ValueError(f"shN must hold 0, 3, 8 or 15 coefficients per channel (SH degree 0-3), got {fields['shN'].shape[1]}")
    return Kept({name: value[keep] for name, value in fields.items()}, np.flatnonzero(~keep))


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values.astype(np.float64)))


def unit_quaternions(quats: np.ndarray) -> np.ndarray:
    """w, x, y, z quaternions scaled to length 1 (kept_gaussians(unit_rotations=True) left out length 0)."""
    quats = quats.astype(np.float64)
    return quats / np.linalg.norm(quats, axis=1, keepdims=True)


def base_colour(sh0: np.ndarray) -> np.ndarray:
    """[N, 3] degree-0 colour in [0, 1] (clamped), from ``sh0`` [N, 1, 3]."""
    return np.clip(0.5 + SH_C0 * sh0.reshape(-1, 3).astype(np.float64), 0.0, 1.0)
