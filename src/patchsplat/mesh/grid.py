"""The dense voxel lattice a patch's TSDF lives on, in the gravity-aligned frame of the split.

The lattice's axes are the aligned axes (``aligned = world_to_aligned @ world``), so its x/y faces
are parallel to the cells' sides: a grid over a core cell wastes no voxels, and cropping to the
cell cuts along lattice planes. Voxel centres lie on the global lattice ``voxel_size * Z^3`` of the
aligned frame, so two patches with the same voxel size sample the same points and their
marching-cubes vertices along a shared border fall on the same lattice edges (which is what lets
the seams be welded).

Contract::

    grid = lattice_box(lower, upper, voxel_size, world_to_aligned)   # covers [lower, upper] (aligned)
    grid = patch_grid(points_aligned, cell, voxel_size, margin, world_to_aligned)  # or None if empty
    grid.index_to_aligned(ijk) -> (N, 3) aligned positions of (fractional) voxel indices
    grid.aligned_to_world(xyz) -> (N, 3) world positions
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchsplat.split.partition import Cell

# The points' box spans these percentiles (far outliers and stray points beyond it are ignored) ...
ROBUST_PERCENTILES = (0.5, 99.5)
# ... and is grown by this fraction of its size on each side, for surfaces the points sample thinly
# (the top of a tall object, the ground near the edge of the views).
ROBUST_GROWTH = 0.1


@dataclass(frozen=True)
class VoxelGrid:
    """Voxel (i, j, k) is centred at ``origin + voxel_size * (i, j, k)`` in the aligned frame."""

    origin: np.ndarray            # (3,) aligned position of voxel (0, 0, 0)
    voxel_size: float
    shape: tuple[int, int, int]
    world_to_aligned: np.ndarray  # (3, 3) rotation, rows = aligned axes

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def upper(self) -> np.ndarray:
        """Aligned position of the last voxel's centre."""
        return self.origin + self.voxel_size * (np.array(self.shape) - 1)

    def index_to_aligned(self, ijk: np.ndarray) -> np.ndarray:
        return self.origin + self.voxel_size * np.asarray(ijk, dtype=np.float64)

    def aligned_to_world(self, xyz: np.ndarray) -> np.ndarray:
        # aligned = R @ world and R is a rotation, so world = R^T @ aligned (row vectors: xyz @ R).
        return np.asarray(xyz, dtype=np.float64) @ self.world_to_aligned

    def world_to_aligned_points(self, xyz: np.ndarray) -> np.ndarray:
        return np.asarray(xyz, dtype=np.float64) @ self.world_to_aligned.T


def lattice_box(lower: np.ndarray, upper: np.ndarray, voxel_size: float, world_to_aligned: np.ndarray) -> VoxelGrid:
    """The smallest grid of lattice voxels (centres on ``voxel_size * Z^3``) covering the aligned box."""
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    first = np.floor(lower / voxel_size)
    last = np.ceil(upper / voxel_size)
    shape = tuple(int(n) for n in np.maximum(last - first + 1, 2))
    return VoxelGrid(first * voxel_size, float(voxel_size), shape, np.asarray(world_to_aligned, np.float64))


def patch_grid(
    points_aligned: np.ndarray, cell: Cell, voxel_size: float, margin: float, world_to_aligned: np.ndarray,
    cameras_aligned: np.ndarray | None = None, depth_trunc: float | None = None,
) -> VoxelGrid | None:
    """The grid a patch fuses into: its core cell (the part of the mesh it keeps) grown by ``margin``,
    cut in x/y to the points' robust box (for the cell's infinite sides) and spanning the points'
    robust height range, both grown by ``ROBUST_GROWTH`` and ``margin``.

    ``points_aligned`` (N, 3) are the patch's sparse points in the aligned frame. Returns None when
    no point lies in the grown cell (nothing to mesh there). ``margin`` should cover the truncation
    band and a couple of voxels, so the surface just inside the cell's border is complete.

    With ``cameras_aligned`` (M, 3) and ``depth_trunc``, the box is also cut to the cameras' box grown
    by ``depth_trunc`` + ``margin``: no depth beyond ``depth_trunc`` is fused, so voxels farther from
    every camera would stay empty (a forward-facing capture's far background would otherwise
    stretch the grid many times past the part that is meshed).
    """
    points_aligned = points_aligned[np.all(np.isfinite(points_aligned), axis=1)]
    grown = Cell(cell.x_min - margin, cell.x_max + margin, cell.y_min - margin, cell.y_max + margin)
    inside = points_aligned[grown.contains(points_aligned[:, :2])]
    if len(inside) == 0:
        return None
    low, high = np.percentile(inside, ROBUST_PERCENTILES, axis=0)
    grow = ROBUST_GROWTH * (high - low) + margin
    lower, upper = low - grow, high + grow
    lower[:2] = np.maximum(lower[:2], [grown.x_min, grown.y_min])
    upper[:2] = np.minimum(upper[:2], [grown.x_max, grown.y_max])
    if cameras_aligned is not None and depth_trunc is not None and len(cameras_aligned):
        reach = depth_trunc + margin
        lower = np.maximum(lower, cameras_aligned.min(axis=0) - reach)
        upper = np.minimum(upper, cameras_aligned.max(axis=0) + reach)
    if np.any(upper <= lower):
        return None
    return lattice_box(lower, upper, voxel_size, world_to_aligned)


# Peak memory of meshing a grid, per voxel: the TSDF's 24 bytes (tsdf, weight, RGB, colour weight, float32)
# plus the dense copies and masks marching cubes reads. Measured 36 B/voxel on a 27 M voxel grid (peak RSS
# of a fresh process above its imports; 43 B/voxel at 8 M voxels, where fusion's fixed ~100 MB of
# temporaries counts more).
MESH_BYTES_PER_VOXEL = 36


def mesh_bytes(grid: VoxelGrid) -> int:
    """Peak memory of fusing and marching ``grid`` (see MESH_BYTES_PER_VOXEL)."""
    return MESH_BYTES_PER_VOXEL * grid.num_voxels


def describe_grid(grid: VoxelGrid) -> str:
    return (f"{grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} voxels of {grid.voxel_size:.4g} "
            f"({grid.num_voxels / 1e6:.1f} M voxels, {mesh_bytes(grid) / 2**30:.2f} GB to mesh)")
