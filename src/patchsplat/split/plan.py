"""Which cameras and points each patch gets: a pure function of the model's arrays and the split settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from patchsplat.colmap_io.arrays import ModelArrays
from patchsplat.config import SplitConfig, TrainConfig
from patchsplat.errors import InputError
from patchsplat.split.alignment import estimate_up, ground_rotation
from patchsplat.split.auto import SplitBudget, balanced_grid_cells, decide, grid_shape
from patchsplat.split.layout import GroundFrame
from patchsplat.split.partition import (
    WHOLE_PLANE,
    Cell,
    adaptive_cells,
    content_bounds,
    grid_cells,
    shared_edge,
    sort_cells,
    union,
)
from patchsplat.workspace import patch_id_of


@dataclass(frozen=True)
class PatchPlan:
    """One patch: its cells (aligned frame) and the cameras and points it gets (indices into ModelArrays)."""

    patch_id: str
    core: Cell
    expanded: Cell
    image_indices: np.ndarray          # sorted; the images of the patch model
    point_indices: np.ndarray          # sorted; the points of the patch model (>= 2 observations by its images)
    num_core_cameras: int              # camera centres inside the core cell
    num_core_points: int               # points inside the core cell (the patch's own, for merging later)
    cameras_inside_expanded: int
    cameras_by_visibility: int
    cameras_dropped_by_cap: int


@dataclass(frozen=True)
class SplitPlan:
    ground: GroundFrame                # the gravity-aligned frame the cells are drawn in
    up_method: str
    bounds: Cell                       # finite extent of the content on the ground (aligned frame)
    patches: list[PatchPlan]
    core_of_camera: np.ndarray         # (M,) index of the patch whose core cell holds each camera centre
    core_of_point: np.ndarray          # (N,) same for points; -1 for non-finite points
    point_xy: np.ndarray               # (N, 2) points on the ground (aligned frame); NaN for non-finite points
    notes: list[str] = field(default_factory=list)   # merges and other decisions, for the report
    decision: str = ""                 # auto mode: what was decided and why, in one line


def _core_index(cells: list[Cell], xy: np.ndarray) -> np.ndarray:
    owner = np.full(len(xy), -1, dtype=np.int64)
    for index, cell in enumerate(cells):
        owner[cell.contains(xy)] = index
    return owner


def _small_cells(cells: list[Cell], camera_xy: np.ndarray, point_xy: np.ndarray, config: SplitConfig) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Indices of the cells with too few cameras or points in their core, and the counts per cell."""
    camera_counts = np.bincount(_core_index(cells, camera_xy), minlength=len(cells))
    owners = _core_index(cells, point_xy)
    point_counts = np.bincount(owners[owners >= 0], minlength=len(cells))
    small = [i for i in range(len(cells)) if camera_counts[i] < config.min_cameras or point_counts[i] < config.min_points]
    return small, camera_counts, point_counts


def _merge_small(cells: list[Cell], camera_xy: np.ndarray, point_xy: np.ndarray, config: SplitConfig, notes: list[str]) -> list[Cell]:
    """Merge each small cell into the neighbour sharing a full side with it (smallest such neighbour first)."""
    while True:
        small, camera_counts, point_counts = _small_cells(cells, camera_xy, point_xy, config)
        merged = False
        for index in small:
            neighbours = [j for j in range(len(cells)) if j != index and shared_edge(cells[index], cells[j])]
            if not neighbours:
                continue
            target = min(neighbours, key=lambda j: (camera_counts[j], j))
            notes.append(
                f"merged a small cell ({camera_counts[index]} cameras, {point_counts[index]} points) into its neighbour"
            )
            new_cell = union(cells[index], cells[target])
            cells = [cell for j, cell in enumerate(cells) if j not in (index, target)] + [new_cell]
            merged = True
            break
        if not merged or len(cells) == 1:
            return cells


def plan_split(arrays: ModelArrays, config: SplitConfig, robust_percentile: float = 1.0, source: str = "split",
               budget: SplitBudget | None = None) -> SplitPlan:
    """Partition the scene into patches. ``source`` names the input in error messages; ``budget`` is what one
    patch trains (auto mode; default: the training profile's on this machine, see patchsplat.profiles.split_budget)."""
    num_images, num_points = len(arrays.image_ids), len(arrays.point_ids)
    if num_images < 2:
        raise InputError(source, f"{num_images} registered images: nothing to split", kind="too_small")
    centres = arrays.camera_centres
    up, up_method = estimate_up(arrays.rotations, arrays.xyz, centres, config.up)
    ground = GroundFrame(ground_rotation(up, centres, config.ground_axes))
    camera_xy = ground.to_ground(centres)
    finite = np.all(np.isfinite(arrays.xyz), axis=1)
    if finite.all():  # the usual case: no copy of the points
        point_xy = ground.to_ground(arrays.xyz)
    else:
        point_xy = np.full((num_points, 2), np.nan)
        point_xy[finite] = ground.to_ground(arrays.xyz[finite])
    bounds = content_bounds(camera_xy, point_xy, robust_percentile)

    notes: list[str] = []
    decision = ""
    if config.mode == "auto":
        cells, decision = _auto_cells(arrays, camera_xy, point_xy, config, budget, notes)
    elif config.mode == "grid":
        if num_images < config.rows * config.cols:
            raise InputError(
                "params.yaml", f"split.rows x split.cols = {config.rows * config.cols} cells but the scene has only "
                f"{num_images} cameras", kind="bad_params",
            )
        cells = grid_cells(camera_xy, config.rows, config.cols)
    else:
        cells = adaptive_cells(camera_xy, config.max_cameras)

    if config.small_patch == "merge" and config.mode != "auto":
        cells = _merge_small(cells, camera_xy, point_xy, config, notes)
    cells = sort_cells(cells, bounds)

    core_of_camera = _core_index(cells, camera_xy)
    core_of_point = _core_index(cells, point_xy)  # NaN positions compare False everywhere: -1

    # What each camera sees: the fraction of the points its image observes that lie in each core cell (the
    # visibility test below; the same measure as the partition check's border views and train.overlap_view_weight).
    seen_fraction = arrays.observed_fractions(core_of_point, len(cells))
    core_point_counts = np.bincount(core_of_point[core_of_point >= 0], minlength=len(cells))
    patches = []
    for index, core in enumerate(cells):
        expanded = core.grown(config.overlap, core.clipped(bounds))
        inside = expanded.contains(camera_xy)
        fraction = seen_fraction[:, index]
        by_visibility = ~inside & (fraction >= config.visibility_fraction)
        chosen = np.flatnonzero(inside | by_visibility)
        dropped = 0
        if config.max_cameras_per_patch and len(chosen) > config.max_cameras_per_patch:
            # Priority: core cell, then expanded cell (nearest the core first), then by visibility.
            centre = np.array([(core.clipped(bounds).x_min + core.clipped(bounds).x_max) / 2,
                               (core.clipped(bounds).y_min + core.clipped(bounds).y_max) / 2])
            distance = np.linalg.norm(camera_xy[chosen] - centre, axis=1)
            priority = np.lexsort((
                chosen,
                np.where(by_visibility[chosen], -fraction[chosen], distance),
                np.where(core_of_camera[chosen] == index, 0, np.where(inside[chosen], 1, 2)),
            ))
            dropped = len(chosen) - config.max_cameras_per_patch
            chosen = np.sort(chosen[priority[: config.max_cameras_per_patch]])

        observations_by_patch = np.bincount(arrays.obs_point[arrays.observations_of(chosen)], minlength=num_points)
        candidate = expanded.contains(point_xy)
        if config.points_seen_by_cameras:
            candidate |= finite & (observations_by_patch >= 2)
        # A COLMAP point needs a track of >= 2 images; points seen less by the patch's cameras are dropped,
        # exactly as pycolmap drops them when the other images are removed.
        points = np.flatnonzero(candidate & (observations_by_patch >= 2))
        patches.append(
            PatchPlan(
                patch_id=patch_id_of(index),
                core=core,
                expanded=expanded,
                image_indices=chosen,
                point_indices=points,
                num_core_cameras=int((core_of_camera == index).sum()),
                num_core_points=int(core_point_counts[index]),
                cameras_inside_expanded=int(inside.sum()),
                cameras_by_visibility=int(by_visibility.sum()),
                cameras_dropped_by_cap=dropped,
            )
        )
    return SplitPlan(ground, up_method, bounds, patches, core_of_camera, core_of_point, point_xy, notes, decision)


def _auto_cells(arrays: ModelArrays, camera_xy: np.ndarray, point_xy: np.ndarray, config: SplitConfig,
                budget: SplitBudget | None, notes: list[str]) -> tuple[list[Cell], str]:
    """auto mode (patchsplat.split.auto): the cells, and the one-line decision. A small cell is merged into a
    neighbour; when one has none to merge with, the grid is made with one cell fewer."""
    from patchsplat.profiles import split_budget

    budget = budget or split_budget(TrainConfig(), config.megapixels_per_patch)
    decision = decide(arrays, camera_xy, budget, config.auto_min_patch_cameras)
    wanted = decision.rows * decision.cols
    rows, cols = decision.rows, decision.cols
    while True:
        cells = balanced_grid_cells(camera_xy, point_xy, rows, cols) if rows * cols > 1 else [WHOLE_PLANE]
        cells = _merge_small(cells, camera_xy, point_xy, config, notes)
        if len(cells) == 1 or not _small_cells(cells, camera_xy, point_xy, config)[0]:
            break
        rows, cols = grid_shape(rows * cols - 1, camera_xy)
        notes.append(f"a small cell had no neighbour to merge with: cut into {rows} x {cols} cells instead")
    if len(cells) != wanted:
        return cells, f"{decision.reason}, merged into {len(cells)} patch{'es' if len(cells) > 1 else ''} (small cells)"
    return cells, decision.reason
