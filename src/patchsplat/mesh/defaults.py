"""Mesh settings from where the surfaces are: a patch's depth truncation, voxel size and grid budget, chosen
from the depths of the SfM points its training views observe.

Why not from the camera spread (the rule before): the cameras' extent says nothing about how far the
surfaces are. An object orbit's surfaces lie inside the camera circle, a forward-facing capture's
(LLFF fern) 3-14x beyond its cameras' spread, a drone flying through a room sees walls nearer than its
path is long. The points each view observes are the surfaces that view shows, at depths SfM
measured; their robust statistics give the settings with nothing to set by hand.

Rules (constants below), measured on the three real captures of ../shared/data/real (cup77, an
object orbit; fern, forward-facing; tello_lab, a drone flying inside a room; splats of 300 steps at
their training resolution 1/4) and on the demo against its ground truth:

* depth truncation, per training view: ``DEPTH_MARGIN`` x the ``DEPTH_PERCENTILE``th percentile of
  the depths (camera z) of the points the view observes, or of all the patch's training views'
  observations if that is larger (and always for a view observing fewer than ``MIN_VIEW_POINTS``).
  The percentile drops the few mismatched far points (fern's farthest lies at 1.6x its p99.9). The
  patch's value is a floor because a view's own points miss its textureless far surfaces: in the drone
  flight, views whose points were all near rendered confident depths up to 7x farther, and their own
  p98 x 1.2 cut up to 45% of such a view's confident pixels (patch floor: 9%). The view's own value
  raises it for views that see across a room (cup77: the patch's p98 x 1.2 alone cut up to 31%).
  Measured with 300-step splats at 1/4 resolution, share of confident pixels (alpha >= 0.5) cut,
  mean / worst view: margin 1.2 cup77 0.44% / 10.1%, fern 0.27% / 0.61%, tello_lab 1.70% / 9.19%;
  margin 1.5 0.07% / 1.62%, 0.00% / 0.00%, 0.67% / 5.58%. A generous margin costs little: the
  grid stops at the observed points' box whatever the truncation, so only depths inside it fuse.
* voxel: ``mesh.voxel_pixels`` pixels' footprint at the patch's typical surface depth, at the
  resolution the views are rendered for fusion: ``voxel_pixels x median depth / focal length``. The
  median depth is the median over training views of each view's median observed depth; the focal
  length is the median over views, scaled to the fusion resolution. Measured (same splats; time on
  2 busy cores; dist: median distance from the SfM points to the mesh; demo: Chamfer distance to its
  ground truth as % of the area's side, 160x120 images, splats of 1000 steps, split 1x1 and 2x2):

  =====  ============================  =========================  ============================  ===========  ===========
  px     cup77 voxel, grid, s, dist    fern                       tello_lab                     demo 1x1     demo 2x2
  =====  ============================  =========================  ============================  ===========  ===========
  1      0.033, 31.0 M, 180 s, 0.118   0.29, 8.0 M, 36 s, 0.656   0.038, 42.5 M, 160 s, 0.158   51 s, 1.14%  32 s, 0.75%
  2      0.066, 4.5 M, 28 s, 0.156     0.58, 1.3 M, 6 s, 0.716    0.075, 6.1 M, 25 s, 0.168     14 s, 1.22%  17 s, 0.77%
  3      0.099, 1.5 M, 27 s, 0.211     0.87, 0.5 M, 6 s, 0.809    0.113, 2.1 M, 21 s, 0.196     10 s, 1.27%  -
  4      0.132, 0.7 M, 20 s, 0.216     1.16, 0.2 M, 8 s, 0.930    0.151, 1.0 M, 18 s, 0.233     -            -
  =====  ============================  =========================  ============================  ===========  ===========

  2 is the default: one pixel costs 2-7x the time and memory (cup77's mesh at 1 px took longer than
  its 300 training steps) for distances 6-24% smaller on the captures and Chamfer distances 3-7%
  smaller on the demo, where the splats' depth error (not the voxel) dominates; the demo as the
  pipeline splits it stays within the 1% of issue 5. 3-4 px lose detail without saving much more
  time, as rendering then dominates. The old camera-spread rule (scene scale / 256) gave the demo's
  grids about a 1 px voxel (1x1: 1.14%, 69 s; 2x2: 0.75%, 33 s).
* grid: the robust box of the points the training views observe within their depth truncation
  (:func:`patchsplat.mesh.grid.patch_grid`: percentiles, grown, cut to the core cell).
* budget: the grid's peak memory (:func:`patchsplat.mesh.grid.mesh_bytes`) must fit
  ``mesh.memory_budget_gb``; an automatic voxel is coarsened until it does, and the record says so.
  The default 2 GB (about 60 M voxels, 390^3) holds each capture above at its training resolution
  many times over (largest grid: 6.1 M voxels); cup77 fused at full resolution (800x600) asked for
  7.7 GB, was coarsened to 1.8 GB (voxel 0.017 -> 0.027) and the process peaked at 2.5 GB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from patchsplat.mesh.grid import VoxelGrid, mesh_bytes

DEPTH_PERCENTILE = 98.0
DEPTH_MARGIN = 1.5
# Below this many observed points a view's 98th percentile is its one or two farthest points: noise.
MIN_VIEW_POINTS = 20
# Coarsening steps at least this much, and at most this many times: the truncation band and border are
# a fixed number of voxels, so a budget smaller than that band's grid can never be met by coarsening.
_MIN_COARSEN_STEP = 1.05
_MAX_COARSEN_STEPS = 100


def observed_depths(points_world: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                    observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depths, point indices) of the finite points ``observed`` (indices into ``points_world``) in front of
    the camera ``x_cam = rotation @ x + translation``; depth = camera z."""
    observed = np.unique(np.asarray(observed, dtype=np.int64))
    xyz = np.asarray(points_world, dtype=np.float64)[observed]
    depth = xyz @ np.asarray(rotation, np.float64)[2] + float(translation[2])
    keep = np.isfinite(depth) & (depth > 0)
    return depth[keep], observed[keep]


def _depth_statistic(depths: np.ndarray) -> float:
    return float(np.percentile(depths, DEPTH_PERCENTILE) * DEPTH_MARGIN)


def depth_truncations(depths: list[np.ndarray]) -> tuple[np.ndarray, dict] | None:
    """(per view depth truncation, record) from each training view's observed point depths (see the module
    docstring); None when no view observes a point (the caller falls back and says so)."""
    pooled = np.concatenate(depths) if depths else np.zeros(0)
    if len(pooled) == 0:
        return None
    patch_value = _depth_statistic(pooled)
    own = np.array([len(view) >= MIN_VIEW_POINTS for view in depths], dtype=bool)
    truncs = np.array([max(_depth_statistic(view), patch_value) if ok else patch_value for view, ok in zip(depths, own)])
    rule = (f"per view, p{DEPTH_PERCENTILE:g} of its observed point depths or, if larger, of all the patch's training "
            f"views' ({np.percentile(pooled, DEPTH_PERCENTILE):.4g}), x {DEPTH_MARGIN:g}")
    farther = int(np.sum(truncs > patch_value))
    rule += f": {farther} of {len(depths)} views see farther than the patch's {patch_value:.4g}"
    if (~own).any():
        rule += f"; {int((~own).sum())} observe < {MIN_VIEW_POINTS} points and take the patch's"
    record = {"rule": rule, "min": float(truncs.min()), "median": float(np.median(truncs)), "max": float(truncs.max()),
              "patch": patch_value, "views_farther": farther}
    return truncs, record


def surface_voxel(depths: list[np.ndarray], focal_px: np.ndarray, voxel_pixels: float) -> tuple[float, str] | None:
    """(voxel, why): ``voxel_pixels`` pixels' footprint at the median observed depth, ``focal_px`` (per view,
    at the fusion resolution); None when no view observes a point."""
    medians = [float(np.median(view)) for view in depths if len(view)]
    if not medians:
        return None
    depth, focal = float(np.median(medians)), float(np.median(focal_px))
    voxel = voxel_pixels * depth / focal
    return voxel, (f"{voxel_pixels:g} px footprint at the median observed point depth {depth:.4g} "
                   f"(focal {focal:.1f} px at the fusion resolution): {voxel_pixels:g} x {depth:.4g} / {focal:.1f}")


@dataclass(frozen=True)
class Fitted:
    grid: VoxelGrid | None
    voxel_size: float
    coarsened_from: float | None      # the voxel asked for, when it had to be coarsened
    bytes_asked: int | None           # the grid it would have made, in bytes


def fit_to_budget(make_grid: Callable[[float], VoxelGrid | None], voxel: float, budget_bytes: float,
                  coarsen: bool = True) -> Fitted:
    """The grid ``make_grid(voxel)``; when its peak memory exceeds ``budget_bytes`` and ``coarsen``, the voxel
    is grown (by the cube root of the excess, at least 5% a step) until it fits. A grid that still does not
    fit is returned as it is (``coarsen`` False, or no voxel fits): the caller checks and refuses it."""
    grid = make_grid(voxel)
    if grid is None or mesh_bytes(grid) <= budget_bytes or not coarsen:
        return Fitted(grid, voxel, None, None)
    asked, first_bytes = voxel, mesh_bytes(grid)
    for _ in range(_MAX_COARSEN_STEPS):
        voxel *= max(_MIN_COARSEN_STEP, (mesh_bytes(grid) / budget_bytes) ** (1 / 3))
        grid = make_grid(voxel)
        if grid is None or mesh_bytes(grid) <= budget_bytes:
            break
    return Fitted(grid, voxel, asked, first_bytes)
