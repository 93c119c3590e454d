"""The comparison grid: one row per chosen held-out view, columns ground truth | render | error.

The error column is the per-pixel absolute error averaged over the colour channels, on one fixed
colour scale (0 to :data:`ERROR_SCALE_MAX`, brighter = worse) for every row and every run, so two
grids can be compared by eye. The figure is drawn to bytes in memory (matplotlib's object API with
the Agg canvas: no pyplot global state) so the caller decides when and how the file is written.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

# Absolute errors at or above this show as the brightest colour.
ERROR_SCALE_MAX = 0.25
_PANEL_INCHES = 2.6


@dataclass(frozen=True)
class GridRow:
    label: str           # which view (shown over the ground truth)
    scores: str          # its scores (shown over the render)
    truth: np.ndarray    # (H, W, 3) in [0, 1]
    render: np.ndarray   # (H, W, 3) in [0, 1]


def choose_grid_views(names: list[str], count: int) -> list[str]:
    """``count`` names spread evenly over ``names`` (all of them when there are no more than ``count``)."""
    if count >= len(names):
        return list(names)
    picks = np.unique(np.round(np.linspace(0, len(names) - 1, count)).astype(int))
    return [names[i] for i in picks]


def error_map(truth: np.ndarray, render: np.ndarray) -> np.ndarray:
    """(H, W) mean absolute error over the channels of two (H, W, 3) images."""
    return np.abs(render.astype(np.float32) - truth.astype(np.float32)).mean(axis=2)


def comparison_grid_png(rows: list[GridRow], title: str = "") -> bytes:
    """PNG bytes of the grid (ValueError for no rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("a comparison grid needs at least one row")
    height, width = rows[0].truth.shape[:2]
    panel_height = _PANEL_INCHES * height / width
    # Enough dots that each panel shows the image at (at least) its own resolution, within reason.
    dpi = int(np.clip(width / _PANEL_INCHES, 100, 200))
    figure = Figure(figsize=(3 * _PANEL_INCHES, len(rows) * (panel_height + 0.3) + 0.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), 3, squeeze=False)
    image = None
    for row_axes, row in zip(axes, rows):
        errors = error_map(row.truth, row.render)
        row_axes[0].imshow(np.clip(row.truth, 0, 1), interpolation="nearest")
        row_axes[1].imshow(np.clip(row.render, 0, 1), interpolation="nearest")
        image = row_axes[2].imshow(errors, cmap="inferno", vmin=0.0, vmax=ERROR_SCALE_MAX, interpolation="nearest")
        row_axes[0].set_title(f"ground truth {row.label}", fontsize=7, loc="left")
        row_axes[1].set_title(f"render: {row.scores}", fontsize=7, loc="left")
        row_axes[2].set_title(f"|error|, mean {errors.mean():.3f}", fontsize=7, loc="left")
        for axis in row_axes:
            axis.set_axis_off()
    colorbar = figure.colorbar(image, ax=axes.ravel().tolist(), location="bottom", shrink=0.4, aspect=30)
    colorbar.set_label(f"mean |error| over RGB (0 to {ERROR_SCALE_MAX:g}+)", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    if title:
        figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
