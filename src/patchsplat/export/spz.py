"""SPZ: Niantic's compressed Gaussian-splat format, written by the gsply library (``gsply.write_spz``).

gsply writes the gzip container (version 3) every SPZ reader loads: positions as 24-bit fixed point,
opacity, colour (sh0), log scales and higher SH as bytes, rotations as 'smallest three' (9 bits per
component). Values are stored as trained, in the scene's frame (no axis conversion: SPZ's coordinate system
is left 'unspecified', as splat-transform and gsply read it).

Positions are fixed point: with Niantic's default 12 fractional bits (1/4096 of a unit) they span
+-2048 units. A scene reaching further is written with fewer fractional bits (coarser positions, same
range rule), so no Gaussian is clamped; the bits used are in the file's header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from patchsplat.atomic import atomic_file
from patchsplat.export.common import kept_gaussians

DEFAULT_FRACTIONAL_BITS = 12  # Niantic's reference encoder's
_LARGEST_FIXED = (1 << 23) - 1  # positions are signed 24-bit integers


def fractional_bits(means: np.ndarray) -> int:
    """The most fractional bits (at most Niantic's 12) whose 24-bit range holds every coordinate."""
    reach = float(np.abs(means).max()) if means.size else 0.0
    if reach == 0.0:
        return DEFAULT_FRACTIONAL_BITS
    bits = math.floor(math.log2(_LARGEST_FIXED / reach))
    if bits < 1:
        raise ValueError(f"a coordinate of {reach:.3g} is beyond what SPZ's 24-bit positions hold (+-{_LARGEST_FIXED / 2:.3g})")
    return min(DEFAULT_FRACTIONAL_BITS, bits)


def write_spz(gaussians: Mapping[str, Any], out: Path) -> np.ndarray:
    """Write ``out``; returns the indices of the Gaussians dropped."""
    import gsply

    kept = kept_gaussians(gaussians, unit_rotations=True)
    fields = kept.fields
    data = gsply.GSData(
        means=fields["means"], scales=fields["scales"], quats=fields["quats"], opacities=fields["opacities"],
        sh0=fields["sh0"].reshape(-1, 3), shN=fields["shN"],
        _format=gsply.create_ply_format(sh_degree=kept.sh_degree),  # raw values: log scales, logit opacities
    )
    with atomic_file(out, suffix=".spz") as tmp:
        gsply.write_spz(tmp, data, version=3, fractional_bits=fractional_bits(fields["means"]))
    return kept.dropped
