"""Patches side by side, and which ones stand out from the median patch.

The motivating failure was a patch whose points spanned 1.5x the range and had a
larger nearest-neighbour spacing than its siblings; a trainer tuned on one patch
then crashed on it. Flagging it here, before training, says which one and why.
"""

from __future__ import annotations

import numpy as np


def _ratio_flag(name: str, value: float, median: float, threshold: float, unit: str = "") -> str | None:
    if not (np.isfinite(value) and np.isfinite(median)) or median <= 0 or value <= 0:
        return None
    ratio = value / median
    if ratio >= threshold:
        return f"{name} {value:.4g}{unit} is {ratio:.2f}x the median patch's ({median:.4g}{unit})"
    if ratio <= 1.0 / threshold:
        return f"{name} {value:.4g}{unit} is only {ratio:.2f}x the median patch's ({median:.4g}{unit})"
    return None


def flag_outlier_patches(patch_stats: dict[str, dict], extent_ratio: float, spacing_ratio: float) -> dict[str, list[str]]:
    """For each patch id, the reasons it stands out: robust extent (largest side of the percentile box,
    the 'XYZ range') at least ``extent_ratio`` times the median patch's, or mean NN spacing (the
    'mean scale') at least ``spacing_ratio`` times it, or at most their inverses."""
    if len(patch_stats) < 3:
        # With one or two patches there is no meaningful majority to stand out from.
        return {patch_id: [] for patch_id in patch_stats}
    # Statistics are None for a patch without (enough) points: NaN keeps it out of the medians.
    extents = {pid: float(max(s["robust_size"])) if s["robust_size"] else np.nan for pid, s in patch_stats.items()}
    spacings = {pid: s["mean_nn_spacing"] if s["mean_nn_spacing"] is not None else np.nan for pid, s in patch_stats.items()}
    median_extent = float(np.nanmedian(list(extents.values())))
    median_spacing = float(np.nanmedian(list(spacings.values())))
    flags = {}
    for patch_id in patch_stats:
        reasons = [
            _ratio_flag("XYZ range", extents[patch_id], median_extent, extent_ratio),
            _ratio_flag("mean NN spacing", spacings[patch_id], median_spacing, spacing_ratio),
        ]
        flags[patch_id] = [reason for reason in reasons if reason]
    return flags
