"""Patch descriptions for tests that need a split's layout but not a split: only the cells and the frame matter."""

from __future__ import annotations

import numpy as np

from patchsplat.split import GroundFrame, PatchDescription
from patchsplat.split.partition import Cell


def describe_patch(patch_id: str, core_cell: list, world_to_aligned: np.ndarray = np.eye(3)) -> PatchDescription:
    """A patch with the core cell ``core_cell`` (JSON form; the expanded cell is the same) and no images."""
    cell = Cell.from_list(core_cell)
    return PatchDescription(
        id=patch_id, core_cell=cell, expanded_cell=cell, ground=GroundFrame(np.asarray(world_to_aligned, dtype=float)),
        images_dir="../../images", image_names=(), heldout_image_names=(),
        num_cameras=0, num_points=0, num_core_cameras=0, num_core_points=0, cameras_inside_expanded=0,
        cameras_by_visibility=0, cameras_dropped_by_cap=0, statistics={},
    )
