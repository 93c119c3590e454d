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
        axes.hist2d(
            finite[:, 0], finite[:, 1], bins=200, range=[[view.x_min, view.x_max], [view.y_min, view.y_max]],
            cmap="Greys", norm=matplotlib.colors.LogNorm(), zorder=0,
        )
    colours = plt.cm.tab10(np.arange(len(cores)) % 10)
    axes.scatter(camera_xy[:, 0], camera_xy[:, 1], s=10, c=colours[core_of_camera], edgecolors="black", linewidths=0.3, zorder=3)
    for index, (core, grown, patch_id) in enumerate(zip(cores, expanded, patch_ids)):
        colour = colours[index]
        shown_core, shown_grown = core.clipped(view), grown.clipped(view)
        axes.add_patch(Rectangle((shown_core.x_min, shown_core.y_min), shown_core.x_max - shown_core.x_min,
                                 shown_core.y_max - shown_core.y_min, fill=False, lw=2, ec=colour, zorder=2))
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
    axes.set_title(f"{len(cores)} patches: core cells (solid), expanded cells (dashed), cameras (dots), point density"
                   + ("\n(!) = stands out from the median patch, see the table" if flagged else ""), fontsize=10)
    with atomic_file(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(figure)
