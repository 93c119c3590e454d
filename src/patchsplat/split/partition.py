"""Cells on the ground plane: disjoint core cells that cover the plane, and their expanded copies.

A cell is an axis-aligned rectangle in the gravity-aligned frame. Core cells are
half-open ([min, max)) with the outermost sides at +-infinity, so together they
hold every camera and every point exactly once, however far out it lies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cell:
    """An axis-aligned rectangle on the ground: x in [x_min, x_max), y in [y_min, y_max)."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Boolean mask of the (N, 2) ground positions inside the (half-open) cell."""
        return (
            (xy[:, 0] >= self.x_min) & (xy[:, 0] < self.x_max)
            & (xy[:, 1] >= self.y_min) & (xy[:, 1] < self.y_max)
        )

    def clipped(self, bounds: Cell) -> Cell:
        return Cell(
            max(self.x_min, bounds.x_min), min(self.x_max, bounds.x_max),
            max(self.y_min, bounds.y_min), min(self.y_max, bounds.y_max),
        )

    def grown(self, overlap: float, size_from: Cell) -> Cell:
        """This cell with each side moved out by ``overlap`` x the size of ``size_from`` along that axis."""
        dx = overlap * (size_from.x_max - size_from.x_min)
        dy = overlap * (size_from.y_max - size_from.y_min)
        return Cell(self.x_min - dx, self.x_max + dx, self.y_min - dy, self.y_max + dy)

    def to_list(self) -> list[float | None]:
        """JSON-friendly [x_min, x_max, y_min, y_max], None for an infinite side."""
        return [None if not np.isfinite(v) else float(v) for v in (self.x_min, self.x_max, self.y_min, self.y_max)]

    @staticmethod
    def from_list(values: list[float | None]) -> Cell:
        x_min, x_max, y_min, y_max = values
        return Cell(
            -np.inf if x_min is None else x_min, np.inf if x_max is None else x_max,
            -np.inf if y_min is None else y_min, np.inf if y_max is None else y_max,
        )


WHOLE_PLANE = Cell(-np.inf, np.inf, -np.inf, np.inf)


def _quantile_cuts(values: np.ndarray, parts: int) -> list[float]:
    """``parts - 1`` cut positions giving (as nearly as possible) equal counts on each side.

    Each cut lies half way between two consecutive sorted values, so no camera sits on a cut.
    """
    ordered = np.sort(values)
    cuts = []
    for part in range(1, parts):
        split_index = int(round(part * len(ordered) / parts))
        split_index = min(max(split_index, 1), len(ordered) - 1)
        cuts.append(0.5 * (ordered[split_index - 1] + ordered[split_index]))
    return cuts


def grid_cells(camera_xy: np.ndarray, rows: int, cols: int) -> list[Cell]:
    """VastGaussian-style quantile grid: ``cols`` columns with equal camera counts, then each
    column cut into ``rows`` cells with equal camera counts. Returned column-major."""
    if len(camera_xy) < rows * cols:
        raise ValueError(f"{len(camera_xy)} cameras cannot fill a {rows} x {cols} grid")
    x_edges = [-np.inf, *_quantile_cuts(camera_xy[:, 0], cols), np.inf]
    cells = []
    for column in range(cols):
        in_column = camera_xy[(camera_xy[:, 0] >= x_edges[column]) & (camera_xy[:, 0] < x_edges[column + 1])]
        y_edges = [-np.inf, *_quantile_cuts(in_column[:, 1], rows), np.inf]
        cells.extend(
            Cell(x_edges[column], x_edges[column + 1], y_edges[row], y_edges[row + 1]) for row in range(rows)
        )
    return cells


def adaptive_cells(camera_xy: np.ndarray, max_cameras: int) -> list[Cell]:
    """Split the most crowded cell in two (across its cameras' longer side, at their median)
    until every cell holds at most ``max_cameras`` cameras."""
    cells = [WHOLE_PLANE]
    while True:
        counts = [int(cell.contains(camera_xy).sum()) for cell in cells]
        crowded = int(np.argmax(counts))
        if counts[crowded] <= max_cameras:
            return cells
        cell = cells[crowded]
        inside = camera_xy[cell.contains(camera_xy)]
        spread = inside.max(axis=0) - inside.min(axis=0)
        axis = int(np.argmax(spread))
        if spread[axis] <= 0:  # all cameras at one spot: cannot be split on the ground
            return cells
        (cut,) = _quantile_cuts(inside[:, axis], 2)
        if axis == 0:
            halves = [Cell(cell.x_min, cut, cell.y_min, cell.y_max), Cell(cut, cell.x_max, cell.y_min, cell.y_max)]
        else:
            halves = [Cell(cell.x_min, cell.x_max, cell.y_min, cut), Cell(cell.x_min, cell.x_max, cut, cell.y_max)]
        cells[crowded : crowded + 1] = halves


def sort_cells(cells: list[Cell], bounds: Cell) -> list[Cell]:
    """Deterministic order (so ids p0..pN are stable): by the clipped cell's x_min, then y_min."""
    return sorted(cells, key=lambda cell: (round(cell.clipped(bounds).x_min, 9), round(cell.clipped(bounds).y_min, 9)))


def content_bounds(camera_xy: np.ndarray, point_xy: np.ndarray, percentile: float) -> Cell:
    """The box holding the cameras and the robust (percentile) extent of the points: the scene's finite size."""
    finite = point_xy[np.all(np.isfinite(point_xy), axis=1)]
    stacked = [camera_xy]
    if len(finite):
        stacked.append(np.percentile(finite, [percentile, 100 - percentile], axis=0))
    everything = np.concatenate(stacked)
    low, high = everything.min(axis=0), everything.max(axis=0)
    return Cell(float(low[0]), float(high[0]), float(low[1]), float(high[1]))


def shared_edge(a: Cell, b: Cell) -> bool:
    """Whether a and b are neighbours sharing one full side (so their union is a rectangle)."""
    same_x = a.x_min == b.x_min and a.x_max == b.x_max
    same_y = a.y_min == b.y_min and a.y_max == b.y_max
    return (same_x and (a.y_max == b.y_min or b.y_max == a.y_min)) or (
        same_y and (a.x_max == b.x_min or b.x_max == a.x_min)
    )


def union(a: Cell, b: Cell) -> Cell:
    return Cell(min(a.x_min, b.x_min), max(a.x_max, b.x_max), min(a.y_min, b.y_min), max(a.y_max, b.y_max))
