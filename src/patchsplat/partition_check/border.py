"""Border views: held-out views whose camera sees the ground of more than one core cell.

What a camera sees is taken from the SfM model itself: the 3D points its image observes (COLMAP's
tracks), each assigned to the core cell holding it on the aligned ground plane. That is the frustum
clipped to what is really in front of the camera (occlusion included), without a depth limit to guess.
"""

from __future__ import annotations

import numpy as np

from patchsplat.colmap_io.arrays import ModelArrays
from patchsplat.split.layout import SplitLayout


def cells_seen(arrays: ModelArrays, layout: SplitLayout, names: list[str]) -> dict[str, dict[str, float]]:
    """For each image in ``names``: patch id -> the fraction of its observed points in that patch's core cell
    (largest first; points in no cell are left out)."""
    index_of_patch = {patch_id: index for index, patch_id in enumerate(layout.ids)}
    cell_of_point = np.array([index_of_patch.get(owner, -1) for owner in layout.core_owners(arrays.xyz)], dtype=np.int64)
    fractions = arrays.observed_fractions(cell_of_point, len(layout.ids))
    index_of_image = {name: index for index, name in enumerate(arrays.image_names)}
    seen = {}
    for name in names:
        row = fractions[index_of_image[name]]
        order = sorted(np.flatnonzero(row), key=lambda cell: -row[cell])
        seen[name] = {layout.ids[cell]: round(float(row[cell]), 4) for cell in order}
    return seen


def is_border(cells: dict[str, float], min_fraction: float) -> bool:
    """A view crosses a core-cell border when a second cell holds at least ``min_fraction`` of what it sees."""
    fractions = sorted(cells.values(), reverse=True)
    return len(fractions) > 1 and fractions[1] >= min_fraction
