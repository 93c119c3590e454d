"""``split.mode: auto``: whether to split a capture, and into how many cells, from what one patch can train.

The decision, from the model alone (no image is read), said in one sentence in split.json:

1. A *compact* capture stays one patch: the cameras' optical axes converge on a region in front of
   (nearly) all of them — an object orbit, a forward-facing scene — or every camera sees most of
   what the others see. Each view of such a capture shows the whole subject, so a patch of it would
   need every camera anyway; no tool of the field splits an object orbit.
2. Otherwise (a street, an aerial pass, a walk-through, a drone flight) the capture is cut when its
   training images hold more pixels — at the resolution the training profile trains at — than one
   patch trains in that profile (``split.megapixels_per_patch``, None: the profile's): training time
   grows with images x pixels, and on a CPU two patches side by side, one core each, train faster
   than one patch on two cores. Cells = ceil(megapixels / capacity), at most one per
   ``auto_min_patch_cameras`` cameras.
3. The cells form a rows x cols grid following the cameras' spread on the ground, with cuts that
   balance the content (cameras and points equally weighted; see :func:`balanced_grid_cells`).
4. A cell whose core holds no points or fewer than ``split.min_cameras`` cameras is merged into a
   neighbour before any model is written; if it has no neighbour to merge with, the capture is cut
   into one cell fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from patchsplat.colmap_io.arrays import ModelArrays, parse_cameras
from patchsplat.split.partition import Cell, _quantile_cuts

# Compact capture, convergence test: the point nearest every optical axis (least squares) lies
# within this fraction of the cameras' median distance from their centroid of the median axis ...
CONVERGENCE_RATIO = 0.3
# ... and in front of at least this fraction of the cameras. Measured: an object orbit (cup77) 0.12 and
# 100 %, a forward-facing scene (fern) 0.21 and 100 %, an indoor drone flight (tello_lab) 0.40 and 46 %,
# the demo's paths and orbits over a plane 0.81 and 89 %.
IN_FRONT_FRACTION = 0.9
# Compact capture, overlap test: a camera shares at least SHARED_POINTS of its points with at least
# this fraction of the other cameras, for the median camera (fern: 0.95; cup77 0.39; tello_lab 0.37).
OVERLAP_FRACTION = 0.8
SHARED_POINTS = 0.1
# The overlap test builds a cameras x cameras matrix: above this many cameras a capture is not compact.
OVERLAP_MAX_CAMERAS = 3000


@dataclass(frozen=True)
class SplitBudget:
    """What one patch trains, in the training profile the split plans for (see patchsplat.profiles)."""

    profile: str
    megapixels_per_patch: float
    max_image_size: int
    resolution_factor: int | None     # written in params.yaml (else from max_image_size per image)

    def training_size(self, width: int, height: int) -> tuple[int, int]:
        from patchsplat.profiles import resolution_for

        factor = self.resolution_factor or resolution_for(width, height, self.max_image_size)
        return width // factor, height // factor


@dataclass(frozen=True)
class AutoDecision:
    rows: int
    cols: int
    reason: str          # the one line for the report


def optical_axes_converge(rotations: np.ndarray, centres: np.ndarray) -> tuple[bool, float, float]:
    """(converge, spread ratio, fraction in front): do the cameras look at one region in front of them?"""
    directions = rotations[:, 2, :]                       # each camera's viewing axis (+z) in world coordinates
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]
    system = projectors.sum(axis=0)
    if np.linalg.cond(system) > 1e8:                      # parallel axes: no point is nearest to all of them
        return False, math.inf, 0.0
    focus = np.linalg.solve(system, np.einsum("mij,mj->i", projectors, centres))
    to_focus = focus - centres
    off_axis = np.linalg.norm(np.einsum("mij,mj->mi", projectors, to_focus), axis=1)
    spread = float(np.median(np.linalg.norm(centres - centres.mean(axis=0), axis=1)))
    ratio = float(np.median(off_axis)) / spread if spread > 0 else math.inf
    in_front = float(np.mean(np.einsum("mi,mi->m", to_focus, directions) > 0))
    return ratio <= CONVERGENCE_RATIO and in_front >= IN_FRONT_FRACTION, ratio, in_front


def views_overlap(arrays: ModelArrays) -> bool:
    """Whether the median camera shares a good part of its points with most other cameras."""
    from scipy import sparse

    num_images = len(arrays.image_ids)
    if num_images > OVERLAP_MAX_CAMERAS or num_images < 2 or len(arrays.obs_point) == 0:
        return False
    seen = sparse.csr_matrix((np.ones(len(arrays.obs_image), np.float32), (arrays.obs_image, arrays.obs_point)),
                             shape=(num_images, len(arrays.point_ids)))
    seen.data[:] = 1.0                                    # an image observing a point twice counts once
    shared = (seen @ seen.T).toarray()
    own = np.maximum(np.diag(shared), 1.0)
    overlapping = (shared / own[:, None]) >= SHARED_POINTS
    np.fill_diagonal(overlapping, False)
    return float(np.median(overlapping.sum(axis=1) / (num_images - 1))) >= OVERLAP_FRACTION


def training_megapixels(arrays: ModelArrays, budget: SplitBudget) -> tuple[float, str]:
    """Pixels of every registered image at the training resolution (megapixels), and the typical size."""
    cameras = parse_cameras(arrays.cameras_bin)
    sizes = {camera_id: budget.training_size(camera.width, camera.height) for camera_id, camera in cameras.items()}
    per_image = np.array([sizes[int(camera_id)][0] * sizes[int(camera_id)][1] for camera_id in arrays.camera_ids])
    typical = sizes[int(arrays.camera_ids[int(np.argsort(per_image)[len(per_image) // 2])])]
    return float(per_image.sum()) / 1e6, f"{typical[0]}x{typical[1]}"


def grid_shape(cells: int, camera_xy: np.ndarray) -> tuple[int, int]:
    """rows x cols >= cells following the cameras' spread on the ground (x is their long axis)."""
    low, high = np.percentile(camera_xy, [5, 95], axis=0)
    extent = np.maximum(high - low, 1e-9)
    aspect = float(extent[0] / extent[1])
    cols = int(min(cells, max(1, round(math.sqrt(cells * aspect)))))
    return math.ceil(cells / cols), cols


def decide(arrays: ModelArrays, camera_xy: np.ndarray, budget: SplitBudget, min_patch_cameras: int) -> AutoDecision:
    """How many cells, and why (see the module docstring)."""
    num_cameras = len(arrays.image_ids)
    converge, ratio, in_front = optical_axes_converge(arrays.rotations, arrays.camera_centres)
    if converge:
        return AutoDecision(1, 1, f"{num_cameras} cameras looking at one subject (their views converge): 1 patch")
    if views_overlap(arrays):
        return AutoDecision(1, 1, f"{num_cameras} cameras that all see most of one scene: 1 patch")
    megapixels, size = training_megapixels(arrays, budget)
    low, high = np.percentile(camera_xy, [5, 95], axis=0)
    spread = f"{num_cameras} cameras over {high[0] - low[0]:.3g} x {high[1] - low[1]:.3g} (model units)"
    content = (f"{megapixels:.1f} Mpx of images at {size} ({budget.profile} profile; a patch trains "
               f"{budget.megapixels_per_patch:g} Mpx)")
    needed = math.ceil(megapixels / budget.megapixels_per_patch)
    cells = min(needed, max(1, num_cameras // max(min_patch_cameras, 1)))
    if cells < needed:
        content += f", at most one cell per {min_patch_cameras} cameras"
    if cells <= 1:
        return AutoDecision(1, 1, f"{spread}, {content}: 1 patch")
    rows, cols = grid_shape(cells, camera_xy)
    return AutoDecision(rows, cols, f"{spread}, {content}: {rows} x {cols} cells")


def _weighted_cuts(values: np.ndarray, weights: np.ndarray, parts: int) -> list[float]:
    """``parts - 1`` cuts with (as nearly as possible) equal weight between them, half way between values."""
    order = np.argsort(values, kind="stable")
    ordered, cumulative = values[order], np.cumsum(weights[order])
    total = cumulative[-1]
    cuts = []
    for part in range(1, parts):
        index = int(np.searchsorted(cumulative, total * part / parts))
        index = min(max(index, 0), len(ordered) - 2)
        cuts.append(0.5 * (ordered[index] + ordered[index + 1]))
    return cuts


def balanced_grid_cells(camera_xy: np.ndarray, point_xy: np.ndarray, rows: int, cols: int) -> list[Cell]:
    """A rows x cols grid whose cuts balance cameras and points (half the weight each): columns along
    x, then each column cut along y. Column-major, core cells covering the plane."""
    finite_points = point_xy[np.all(np.isfinite(point_xy), axis=1)]
    if len(finite_points) == 0:
        from patchsplat.split.partition import grid_cells

        return grid_cells(camera_xy, rows, cols)
    xy = np.concatenate([camera_xy, finite_points])
    weights = np.concatenate([np.full(len(camera_xy), 0.5 / len(camera_xy)), np.full(len(finite_points), 0.5 / len(finite_points))])
    x_edges = [-np.inf, *_weighted_cuts(xy[:, 0], weights, cols), np.inf]
    cells = []
    for column in range(cols):
        inside = (xy[:, 0] >= x_edges[column]) & (xy[:, 0] < x_edges[column + 1])
        y_edges = [-np.inf, *(_weighted_cuts(xy[inside, 1], weights[inside], rows) if inside.sum() >= 2 else
                              _quantile_cuts(xy[:, 1], rows)), np.inf]
        cells.extend(Cell(x_edges[column], x_edges[column + 1], y_edges[row], y_edges[row + 1]) for row in range(rows))
    return cells
