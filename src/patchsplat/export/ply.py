"""PLY: the INRIA layout of :mod:`patchsplat.splat_io`, every value as trained (float32)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from patchsplat.gaussians import GAUSSIAN_FIELDS
from patchsplat.splat_io import write_splats_ply

COMMENT = "written by patchsplat export"  # in the header: how `patchsplat export` knows a PLY it may replace


def write_ply(gaussians: Mapping[str, Any], out: Path) -> np.ndarray:
    """Write ``out``; returns the indices of the Gaussians dropped (non-finite)."""
    written = write_splats_ply(out, **{name: gaussians[name] for name in GAUSSIAN_FIELDS}, comments=(COMMENT,))
    return np.asarray(written["dropped_indices"], dtype=np.int64)


def is_own_ply(path: Path) -> bool:
    """A PLY whose header carries :data:`COMMENT` (only the header is read)."""
    try:
        with open(path, "rb") as file:
            header = file.read(4096)
    except OSError:
        return False
    return header.startswith(b"ply") and f"comment {COMMENT}".encode() in header.split(b"end_header")[0]
