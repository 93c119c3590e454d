"""Top-down picture of the split: point density, cameras, core and expanded cells, patch ids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from patchsplat.atomic import atomic_file  # noqa: E402
from patchsplat.split.partition import Cell  # noqa: E402

DENSITY_BINS = 200


def _bin_positions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.searchsorted(edges, values, side="right")`` for evenly spaced edges, without a binary search.

    The position is computed arithmetically, then moved by one where rounding put a value on the
    wrong side of an edge, so it is exactly the searched one (NumPy's histogram uses the search).
    """
    bins = len(edges) - 1
    estimate = np.floor((values - edges[0]) * (bins / (edges[-1] - edges[0])))
    position = np.clip(estimate, -1, bins).astype(np.int64) + 1
    padded = np.concatenate([[-np.inf], edges, [np.inf]])  # padded[p] is edge p - 1
    while True:
        low, high = values < padded[position], values >= padded[position + 1]
        if not (low.any() or high.any()):
            return position
        position += high.astype(np.int64) - low


def density_histogram(xy: np.ndarray, bins: int, view: Cell) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The counts of ``np.histogram2d(x, y, bins, range=view)`` and its edges, ~5x faster on a million points."""
    edges = [np.linspace(view.x_min, view.x_max, bins + 1), np.linspace(view.y_min, view.y_max, bins + 1)]
    positions = []
    for axis in range(2):
        position = _bin_positions(xy[:, axis], edges[axis])
        position[xy[:, axis] == edges[axis][-1]] -= 1  # the last bin is closed, as in NumPy
        positions.append(position)
    inside = (positions[0] >= 1) & (positions[0] <= bins) & (positions[1] >= 1) & (positions[1] <= bins)
    flat = (positions[0][inside] - 1) * bins + (positions[1][inside] - 1)
    counts = np.bincount(flat, minlength=bins * bins).reshape(bins, bins).astype(float)
    return counts, edges[0], edges[1]


def plot_layout(
    path: Path,
    camera_xy: np.ndarray,
    point_xy: np.ndarray,
    core_of_camera: np.ndarray,
    cores: list[Cell],
    expanded: list[Cell],
    patch_ids: list[str],
    bounds: Cell,
    flagged: set[str],
) -> None:
    margin_x = 0.25 * (bounds.x_max - bounds.x_min) + 1e-9
    margin_y = 0.25 * (bounds.y_max - bounds.y_min) + 1e-9
    view = Cell(bounds.x_min - margin_x, bounds.x_max + margin_x, bounds.y_min - margin_y, bounds.y_max + margin_y)
    figure, axes = plt.subplots(figsize=(9, 9 * (view.y_max - view.y_min) / (view.x_max - view.x_min) + 0.5), dpi=110)
    finite = point_xy[np.all(np.isfinite(point_xy), axis=1)]
    if len(finite):
        counts, x_edges, y_edges = density_histogram(finite, DENSITY_BINS, view)
        axes.pcolormesh(x_edges, y_edges, counts.T, cmap="Greys", norm=matplotlib.colors.LogNorm(), zorder=0)
    colours = plt.cm.tab10(np.arange(len(cores)) % 10)
    axes.scatter(camera_xy[:, 0], camera_xy[:, 1], s=10, c=colours[core_of_camera], edgecolors="black", linewidths=0.3, zorder=3)
    for index, (core, grown, patch_id) in enumerate(zip(cores, expanded, patch_ids)):
        colour = colours[index]
        shown_core, shown_grown = core.clipped(view), grown.clipped(view)
        axes.add_patch(Rectangle((shown_core.x_min, shown_core.y_min), shown_core.x_max - shown_core.x_min,
                                 shown_core.y_max - shown_core.y_min, fill=False, lw=2, ec=colour, zorder=2))
        if grown != core:  # split.overlap 0 (the default): the expanded cell is the core cell
            axes.add_patch(Rectangle((shown_grown.x_min, shown_grown.y_min), shown_grown.x_max - shown_grown.x_min,
                                     shown_grown.y_max - shown_grown.y_min, fill=False, lw=1, ls="--", ec=colour, zorder=2))
        label_cell = core.clipped(bounds)
        axes.text((label_cell.x_min + label_cell.x_max) / 2, (label_cell.y_min + label_cell.y_max) / 2,
                  patch_id + (" (!)" if patch_id in flagged else ""), ha="center", va="center", fontsize=12,
                  weight="bold", color="red" if patch_id in flagged else colour, zorder=4,
                  bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "red" if patch_id in flagged else "none"})
    axes.set_xlim(view.x_min, view.x_max)
    axes.set_ylim(view.y_min, view.y_max)
    axes.set_aspect("equal")
    axes.set_xlabel("aligned x (ground)")
    axes.set_ylabel("aligned y (ground)")
    dashed = ", expanded cells (dashed)" if any(grown != core for core, grown in zip(cores, expanded)) else ""
    axes.set_title(f"{len(cores)} patches: core cells (solid){dashed}, cameras (dots, by core cell), point density"
                   + ("\n(!) = stands out from the median patch, see the table" if flagged else ""), fontsize=10)
    with atomic_file(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(figure)
