"""Tile intersection: which Gaussians touch which image tiles, front to back (vectorised, no Python loops).

Contract: :func:`intersect_tiles` takes the projection of N Gaussians into C cameras (means2d [C, N, 2],
radii [C, N, 2] int, depths [C, N]) and returns a :class:`TileLists` equivalent to gsplat's
``isect_tiles`` + ``isect_offset_encode``: every (camera, tile, Gaussian) overlap, sorted by camera,
then tile (row-major), then depth, ties by Gaussian index (gsplat's radix sort is stable the same way).

A Gaussian covers the tiles [floor((x - rx) / s), ceil((x + rx) / s)) x (same in y), clipped to the
image's tile grid, where (x, y) is its 2D mean, (rx, ry) its radii and s the tile size; culled
Gaussians (a zero radius) cover nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from patchsplat.render import native


@dataclass
class TileLists:
    """Per-tile, depth-sorted Gaussian lists for C cameras on a tile_height x tile_width grid."""

    tile_size: int
    tile_width: int
    tile_height: int
    tiles_per_gauss: Tensor  # [C, N] int32: how many tiles each Gaussian covers
    flatten_ids: Tensor      # [n_isects] int64: index into the C * N (camera, Gaussian) rows, sorted
    tile_keys: Tensor        # [n_isects] int64: camera * tile_height * tile_width + tile row * tile_width + tile col
    isect_offsets: Tensor    # [C, tile_height, tile_width] int64: start of each tile's run in flatten_ids
    tile_counts: Tensor      # [C * tile_height * tile_width] int64: length of each tile's run
    # The same overlaps grouped row by row (each row's tiles contiguous, the rows in (camera, depth) order), which
    # is how they are generated before the sort: where each sorted overlap came from [n_isects], the rows that have
    # overlaps [G] and where each one's run starts [G]. The native compositor sums each row's gradients over its
    # run in that fixed order, so its backward pass needs no scatter-add.
    grouped_position: Tensor
    group_rows: Tensor
    group_starts: Tensor

    @property
    def n_tiles(self) -> int:
        return self.tile_counts.numel()


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """(tile_width, tile_height): tiles per row and per column, the last ones possibly partial."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)


@torch.no_grad()
def intersect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int, kernels: str = "auto"
) -> TileLists:
    """Build the sorted (tile, Gaussian) overlap lists (see the module docstring).

    ``kernels``: ``auto`` (the native C++ version, render/native/tiles.cpp, on a CPU where it builds; the same lists,
    element for element), ``native`` or ``torch`` (this function's own torch ops)."""
    module = native.select(kernels, means2d, depths)
    if module is not None:
        tiles_per_gauss, flatten_ids, tile_keys, tile_counts, offsets, grouped, group_rows, group_starts = \
            module.intersect_tiles(means2d.detach(), radii.to(torch.int32), depths.detach(), width, height, tile_size)
        tile_width, tile_height = tile_grid(width, height, tile_size)
        return TileLists(tile_size=tile_size, tile_width=tile_width, tile_height=tile_height,
                         tiles_per_gauss=tiles_per_gauss, flatten_ids=flatten_ids, tile_keys=tile_keys,
                         isect_offsets=offsets.reshape(depths.shape[0], tile_height, tile_width), tile_counts=tile_counts,
                         grouped_position=grouped, group_rows=group_rows, group_starts=group_starts)
    n_cameras, n_gaussians = depths.shape
    device = depths.device
    tile_width, tile_height = tile_grid(width, height, tile_size)
    tiles_per_camera = tile_width * tile_height

    means2d = means2d.detach().reshape(-1, 2)
    radii_f = radii.reshape(-1, 2).to(means2d.dtype)
    visible = (radii.reshape(-1, 2) > 0).all(dim=-1)

    # Each Gaussian's tile rectangle [min, max) on the grid, as in gsplat's intersect_tile kernel.
    lo = torch.floor((means2d - radii_f) / tile_size)
    hi = torch.ceil((means2d + radii_f) / tile_size)
    grid_max = torch.tensor([tile_width, tile_height], device=device, dtype=lo.dtype)
    lo = torch.minimum(lo.clamp_min(0), grid_max).to(torch.int64)
    hi = torch.minimum(hi.clamp_min(0), grid_max).to(torch.int64)
    extent = (hi - lo) * visible[:, None]                      # [C*N, 2] tiles in x and y
    counts = extent[:, 0] * extent[:, 1]                       # [C*N]

    # Order the rows by (camera, depth, index) before expanding, so that a stable sort by tile key
    # afterwards leaves each tile's run front to back.
    rows = torch.nonzero(counts > 0).squeeze(1)
    rows = rows[torch.argsort(depths.detach().reshape(-1)[rows], stable=True)]
    if n_cameras > 1:
        rows = rows[torch.argsort(rows // n_gaussians, stable=True)]

    # Expand each row into its rectangle's tiles, row-major. Per-row columns are gathered as
    # contiguous vectors with index_select (much faster than 2-D advanced indexing).
    row_counts = counts.index_select(0, rows)
    row_x0, row_y0 = lo[:, 0].index_select(0, rows), lo[:, 1].index_select(0, rows)
    row_w = extent[:, 0].index_select(0, rows)
    row_key0 = (rows // n_gaussians) * tiles_per_camera + row_y0 * tile_width + row_x0
    starts = torch.cumsum(row_counts, 0) - row_counts
    n_isects = int(starts[-1] + row_counts[-1]) if rows.numel() else 0
    flatten_ids = torch.repeat_interleave(rows, row_counts, output_size=n_isects)
    which = torch.repeat_interleave(torch.arange(rows.numel(), device=device), row_counts, output_size=n_isects)
    local = torch.arange(n_isects, device=device) - starts.index_select(0, which)
    rect_w = row_w.index_select(0, which)
    tile_keys = row_key0.index_select(0, which) + (local // rect_w) * tile_width + local % rect_w

    order = torch.argsort(tile_keys, stable=True)
    tile_keys = tile_keys.index_select(0, order)
    flatten_ids = flatten_ids.index_select(0, order)

    tile_counts = torch.bincount(tile_keys, minlength=n_cameras * tiles_per_camera)
    offsets = torch.cumsum(tile_counts, 0) - tile_counts
    return TileLists(
        tile_size=tile_size,
        tile_width=tile_width,
        tile_height=tile_height,
        tiles_per_gauss=counts.reshape(n_cameras, n_gaussians).to(torch.int32),
        flatten_ids=flatten_ids,
        tile_keys=tile_keys,
        isect_offsets=offsets.reshape(n_cameras, tile_height, tile_width),
        tile_counts=tile_counts,
        grouped_position=order,
        group_rows=rows,
        group_starts=starts,
    )
