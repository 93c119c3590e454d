"""``.splat``: the layout of antimatter15's WebGL viewer, which many web viewers load.

No header; one 32-byte little-endian record per Gaussian::

    x y z          float32 x 3   the centre
    sx sy sz       float32 x 3   the standard deviations (exp of the log scales)
    r g b a        uint8 x 4     base colour (0.5 + SH_C0 * sh0) and opacity (sigmoid), x 255
    qw qx qy qz    uint8 x 4     the unit quaternion, q * 128 + 128

Records are sorted by decreasing size x opacity, as antimatter15's converter does (viewers that stream the
file show the largest Gaussians first). The format has no higher SH: only the base colour is kept.

Written by hand with numpy: the maintained tools read .splat (@playcanvas/splat-transform, the viewers) but
none writes it, and the layout is these 32 fixed bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from patchsplat.atomic import atomic_file
from patchsplat.export.common import base_colour, kept_gaussians, sigmoid, unit_quaternions

RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])


def _bytes(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def splat_records(gaussians: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The records (sorted) and the indices of the Gaussians left out."""
    kept = kept_gaussians(gaussians, unit_rotations=True)
    fields = kept.fields
    opacity = sigmoid(fields["opacities"])
    with np.errstate(over="ignore"):  # a log scale above ~88 is beyond float32 as a deviation: stored as inf
        standard_deviations = np.exp(fields["scales"].astype(np.float64))
    records = np.empty(kept.count, dtype=RECORD)
    records["position"] = fields["means"]
    records["scale"] = standard_deviations
    records["rgba"] = _bytes(np.concatenate([base_colour(fields["sh0"]), opacity[:, None]], axis=1) * 255.0)
    records["rotation"] = _bytes(unit_quaternions(fields["quats"]) * 128.0 + 128.0)
    order = np.argsort(-(standard_deviations.prod(axis=1) * opacity), kind="stable")
    return records[order], kept.dropped


def write_splat(gaussians: Mapping[str, Any], out: Path) -> np.ndarray:
    """Write ``out``; returns the indices of the Gaussians dropped."""
    records, dropped = splat_records(gaussians)
    with atomic_file(out, suffix=".splat") as tmp:
        records.tofile(tmp)
    return dropped
