"""The worst border view as a PNG: ground truth | single model | merged patches | |merged - single|."""

from __future__ import annotations

import io

import numpy as np

from patchsplat.evaluate.grid import ERROR_SCALE_MAX, error_map

_PANEL_INCHES = 2.6


def worst_view_png(title: str, truth: np.ndarray, single: np.ndarray, merged: np.ndarray,
                   single_label: str, merged_label: str) -> bytes:
    """PNG bytes of one row of four panels; the difference uses the evaluation grid's fixed error scale, so
    it reads like that grid's error column."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = truth.shape[:2]
    dpi = int(np.clip(width / _PANEL_INCHES, 100, 200))
    figure = Figure(figsize=(4 * _PANEL_INCHES, _PANEL_INCHES * height / width + 1.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 4)
    difference = error_map(single, merged)
    panels = ((truth, "ground truth"), (single, f"single model: {single_label}"), (merged, f"merged patches: {merged_label}"))
    for axis, (image, label) in zip(axes, panels):
        axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
        axis.set_title(label, fontsize=7, loc="left")
    shown = axes[3].imshow(difference, cmap="inferno", vmin=0.0, vmax=ERROR_SCALE_MAX, interpolation="nearest")
    axes[3].set_title(f"|merged - single|, mean {difference.mean():.3f}", fontsize=7, loc="left")
    for axis in axes:
        axis.set_axis_off()
    colorbar = figure.colorbar(shown, ax=axes[3], location="bottom", shrink=0.8)
    colorbar.set_label(f"mean |difference| over RGB (0 to {ERROR_SCALE_MAX:g}+)", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
