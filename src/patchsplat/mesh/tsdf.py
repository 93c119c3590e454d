"""TSDF fusion on a dense voxel grid, vectorised in torch (CPU or GPU), in bounded memory.

Each view's depth map is integrated as in KinectFusion and Open3D: a voxel in front of the camera
that projects into a pixel with a depth measurement gets the signed distance from the voxel to the
measured surface along the pixel's ray, ``sdf = (depth - z) * |ray| / z`` (positive in front of the
surface), truncated to ``t = min(1, sdf / sdf_trunc)``; voxels more than ``sdf_trunc`` behind the
surface are left alone (hidden, not known to be solid). The volume keeps the running averages
``tsdf <- (W tsdf + t) / (W + 1)`` and the weight ``W <- W + 1``; the pixel's colour is averaged the
same way but only over the views that see the voxel within the band (|sdf| < sdf_trunc), so a voxel
in front of a surface does not take the colour of whatever a grazing ray hits behind it. Voxels no
view updated keep weight 0 (unobserved).

Which voxels a view touches (the part that makes it fast): the grid is cut into blocks of
``BLOCK``^3 voxels and, like Open3D's ``ScalableTSDFVolume``, a block takes part once some view has
measured a surface within ``sdf_trunc`` of it ("allocated"). Each view then updates every voxel of
the allocated blocks inside its frustum, free space included, so a floater one view saw is carved
away by the views that see through it, but empty space far from any surface costs nothing. The
storage itself is dense (blocks x voxels, 24 bytes a voxel) so marching cubes reads it directly.

Memory: besides the volume, a view is integrated ``chunk_voxels`` voxels at a time (about 100 bytes
of temporaries per voxel), whatever the size of the grid or of the image.

Contract::

    volume = TsdfVolume(grid, sdf_trunc, device)
    volume.integrate(depth (H, W), colour (H, W, 3), K (3, 3), rotation (3, 3), translation (3,))
    volume.tsdf_grid(), volume.observed_grid() -> numpy (nx, ny, nz) float32 / bool, for marching cubes
    volume.sample_colour(index (N, 3)) -> (N, 3) colours at fractional voxel indices

``depth`` is the camera-space z of the surface in world units (a rasterizer's "ED" channel); a pixel
with depth <= 0 or not finite has no measurement (mask pixels by setting them to 0). Cameras are
world-frame pinholes, COLMAP convention: ``x_cam = rotation @ x_world + translation``; pixel
(row, col) covers u in [col, col + 1), v in [row, row + 1) (its centre is at col + 0.5).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from patchsplat.mesh.grid import VoxelGrid

BLOCK = 8
BLOCK_VOXELS = BLOCK**3
# 1 M voxels per chunk: ~100 MB of temporaries, and large enough that per-chunk overhead is small.
DEFAULT_CHUNK_VOXELS = 1 << 20


class TsdfVolume:
    """A truncated signed distance volume over ``grid``, fused view by view (see the module docstring)."""

    implementation = "patchsplat (torch, block-allocated dense grid)"

    def __init__(self, grid: VoxelGrid, sdf_trunc: float, device: torch.device | str = "cpu",
                 chunk_voxels: int = DEFAULT_CHUNK_VOXELS) -> None:
        if sdf_trunc <= 0:
            raise ValueError("sdf_trunc must be positive")
        self.grid = grid
        self.sdf_trunc = float(sdf_trunc)
        self.device = torch.device(device)
        # The grid padded up to whole blocks; the padding is cut off again by the *_grid() readers.
        self.blocks_shape = tuple(math.ceil(n / BLOCK) for n in grid.shape)
        num_blocks = int(np.prod(self.blocks_shape))
        self.tsdf = torch.ones(num_blocks, BLOCK_VOXELS, dtype=torch.float32, device=self.device)
        self.weight = torch.zeros(num_blocks, BLOCK_VOXELS, dtype=torch.float32, device=self.device)
        self.colour = torch.zeros(num_blocks, BLOCK_VOXELS, 3, dtype=torch.float32, device=self.device)
        self.colour_weight = torch.zeros(num_blocks, BLOCK_VOXELS, dtype=torch.float32, device=self.device)
        self.allocated = torch.zeros(num_blocks, dtype=torch.bool, device=self.device)
        self._blocks_per_chunk = max(1, chunk_voxels // BLOCK_VOXELS)
        offsets = torch.arange(BLOCK, dtype=torch.float64)
        oi, oj, ok = torch.meshgrid(offsets, offsets, offsets, indexing="ij")
        # (BLOCK^3, 3) voxel offsets inside a block, in the storage order of a block's row.
        self._offsets = torch.stack([oi.reshape(-1), oj.reshape(-1), ok.reshape(-1)], dim=1)

    @property
    def num_allocated_voxels(self) -> int:
        return int(self.allocated.sum()) * BLOCK_VOXELS

    def _block_coords(self, block_ids: torch.Tensor) -> torch.Tensor:
        """(B, 3) integer block coordinates of flat block ids."""
        _, nby, nbz = self.blocks_shape
        return torch.stack([block_ids // (nby * nbz), (block_ids // nbz) % nby, block_ids % nbz], dim=1)

    @torch.no_grad()
    def integrate(self, depth: np.ndarray | torch.Tensor, colour: np.ndarray | torch.Tensor, K: np.ndarray,
                  rotation: np.ndarray, translation: np.ndarray) -> int:
        """Fuse one view; returns how many voxels it updated."""
        height, width = depth.shape[:2]
        depth = torch.as_tensor(depth, dtype=torch.float32, device=self.device).reshape(height, width)
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
        colour = torch.as_tensor(colour, dtype=torch.float32, device=self.device).reshape(-1, 3)
        # One extra pixel past the end, with no measurement, for voxels outside the image.
        flat_depth = torch.cat([depth.reshape(-1), depth.new_zeros(1)])
        flat_colour = torch.cat([colour, colour.new_zeros(1, 3)])
        intrinsics = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))

        # Camera coordinates of voxel index q (i, j, k): base + step @ q, step = cam_from_aligned * voxel.
        grid = self.grid
        cam_from_aligned = np.asarray(rotation, np.float64) @ grid.world_to_aligned.T
        base = cam_from_aligned @ grid.origin + np.asarray(translation, np.float64)
        step = cam_from_aligned * grid.voxel_size

        self._allocate(depth, intrinsics, base, step)
        blocks = self._blocks_in_view(intrinsics, width, height, base, step, float(depth.max()))
        updated = 0
        for first in range(0, len(blocks), self._blocks_per_chunk):
            updated += self._integrate_blocks(blocks[first : first + self._blocks_per_chunk], flat_depth, flat_colour,
                                              intrinsics, width, height, base, step)
        return updated

    def _allocate(self, depth: torch.Tensor, intrinsics, base: np.ndarray, step: np.ndarray) -> None:
        """Mark the blocks holding a voxel within sdf_trunc (per axis) of a measured surface point."""
        fx, fy, cx, cy = intrinsics
        rows, cols = torch.nonzero(depth > 0, as_tuple=True)
        if rows.numel() == 0:
            return
        z = depth[rows, cols].double()
        cam = torch.stack([((cols.double() + 0.5) - cx) / fx * z, ((rows.double() + 0.5) - cy) / fy * z, z], dim=1)
        # Voxel index coordinates of the surface points: step^-1 (cam - base) (step is a scaled rotation).
        inverse = torch.as_tensor(np.linalg.inv(step), device=self.device)
        index = (cam - torch.as_tensor(base, device=self.device)) @ inverse.T
        shape = torch.as_tensor(self.grid.shape, dtype=torch.float64, device=self.device)
        reach = self.sdf_trunc / self.grid.voxel_size
        near_grid = torch.all((index >= -reach - 1) & (index <= shape + reach), dim=1)
        index = torch.round(index[near_grid]).long()
        if index.numel() == 0:
            return
        # Per surface point, the box of blocks holding voxels within `reach` of it: first and last block
        # per axis. Neighbouring pixels share boxes, so the boxes are deduplicated before being filled.
        reach_voxels = math.ceil(reach)
        blocks_shape = torch.as_tensor(self.blocks_shape, device=self.device)
        first = torch.div(index - reach_voxels, BLOCK, rounding_mode="floor").clamp_(min=0)
        last = torch.minimum(torch.div(index + reach_voxels, BLOCK, rounding_mode="floor"), blocks_shape - 1)
        span = last - first  # 0 .. most_span - 1 blocks past the first, per axis (or < 0: outside)
        most_span = 2 * reach_voxels // BLOCK + 2
        keep = torch.all(span >= 0, dim=1)
        first, span = first[keep], span[keep]
        if first.numel() == 0:
            return
        _, nby, nbz = self.blocks_shape
        first_id = (first[:, 0] * nby + first[:, 1]) * nbz + first[:, 2]
        span_code = (span[:, 0] * most_span + span[:, 1]) * most_span + span[:, 2]
        boxes = torch.unique(first_id * most_span**3 + span_code)
        first_id, span_code = boxes // most_span**3, boxes % most_span**3
        first = self._block_coords(first_id)
        span = torch.stack([span_code // most_span**2, (span_code // most_span) % most_span, span_code % most_span], dim=1)
        steps = torch.arange(most_span, device=self.device)
        di, dj, dk = torch.meshgrid(steps, steps, steps, indexing="ij")
        fan = torch.stack([di.reshape(-1), dj.reshape(-1), dk.reshape(-1)], dim=1)
        inside = torch.all(fan[None] <= span[:, None, :], dim=2)            # (boxes, most_span^3)
        block = (first[:, None, :] + fan[None])[inside]
        # Setting True through repeated indices is well defined: no unique needed.
        self.allocated[(block[:, 0] * nby + block[:, 1]) * nbz + block[:, 2]] = True

    def _blocks_in_view(self, intrinsics, width: int, height: int, base: np.ndarray, step: np.ndarray,
                        max_depth: float) -> torch.Tensor:
        """Allocated blocks whose voxel centres may project into the image at depths that can be updated
        (a conservative test on each block's bounding sphere against the frustum's planes)."""
        fx, fy, cx, cy = intrinsics
        ids = torch.nonzero(self.allocated).squeeze(1)
        if ids.numel() == 0:
            return ids
        centre_index = self._block_coords(ids).double() * BLOCK + (BLOCK - 1) / 2
        centre = centre_index @ torch.as_tensor(step.T, device=self.device) + torch.as_tensor(base, device=self.device)
        radius = math.sqrt(3) * (BLOCK - 1) / 2 * self.grid.voxel_size
        # Inward normals of the side planes through the camera centre: u >= 0, u <= W, v >= 0, v <= H.
        planes = torch.tensor([[fx, 0.0, cx], [-fx, 0.0, width - cx], [0.0, fy, cy], [0.0, -fy, height - cy]],
                              dtype=torch.float64, device=self.device)
        planes = planes / planes.norm(dim=1, keepdim=True)
        inside = torch.all(centre @ planes.T >= -radius, dim=1)
        # Voxels farther than the farthest measurement plus the truncation band cannot be updated.
        z = centre[:, 2]
        inside &= (z >= -radius) & (z <= max_depth + self.sdf_trunc + radius)
        return ids[inside]

    def _integrate_blocks(self, blocks: torch.Tensor, depth: torch.Tensor, colour: torch.Tensor, intrinsics,
                          width: int, height: int, base: np.ndarray, step: np.ndarray) -> int:
        fx, fy, cx, cy = intrinsics
        step_t = torch.as_tensor(step.T, device=self.device)
        # float64 for the block corners (large world offsets), float32 for the per-voxel work.
        corner = ((self._block_coords(blocks).double() * BLOCK) @ step_t + torch.as_tensor(base, device=self.device)).float()
        offset = (self._offsets.to(self.device) @ step_t).float()
        x = corner[:, 0:1] + offset[:, 0]                         # (B, BLOCK^3) camera coordinates
        y = corner[:, 1:2] + offset[:, 1]
        z = corner[:, 2:3] + offset[:, 2]
        inverse_z = torch.reciprocal(z)
        x.mul_(inverse_z)                                         # x / z, y / z from here on
        y.mul_(inverse_z)
        col = torch.floor(x * fx + cx)
        row = torch.floor(y * fy + cy)
        visible = (z > 1e-9) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        # Invisible voxels read the extra zero pixel at the end: "no measurement".
        pixel = torch.where(visible, row * width + col, torch.full_like(row, width * height)).long()
        measured = depth[pixel]
        sdf = (measured - z).mul_(torch.sqrt(1.0 + x * x + y * y))
        update = (measured > 0) & (sdf >= -self.sdf_trunc)
        count = int(update.sum())
        if count == 0:
            return 0
        # Voxels behind the camera have non-finite sdf: replaced, as the update must not see them at all.
        new_tsdf = torch.where(update, torch.clamp(sdf.div_(self.sdf_trunc), max=1.0), torch.zeros_like(sdf))
        old_weight = self.weight[blocks]
        total = old_weight + update.float()
        scale = torch.where(update, torch.reciprocal(total), torch.zeros_like(total))
        # Averages in incremental form: a += (new - a) / W_total (a no-op where scale is 0).
        tsdf = self.tsdf[blocks]
        self.tsdf[blocks] = tsdf.add_((new_tsdf - tsdf).mul_(scale))
        self.weight[blocks] = total
        # Colour only from views that see the voxel near their surface (|sdf| < sdf_trunc): a voxel
        # just in front of one surface must not take the colour of what a grazing ray hits behind it.
        near = update & (new_tsdf < 1.0)
        colour_total = self.colour_weight[blocks] + near.float()
        colour_scale = torch.where(near, torch.reciprocal(colour_total), torch.zeros_like(colour_total))
        old_colour = self.colour[blocks]
        self.colour[blocks] = old_colour.add_((colour[pixel] - old_colour).mul_(colour_scale[..., None]))
        self.colour_weight[blocks] = colour_total
        return count

    def _dense(self, values: torch.Tensor) -> np.ndarray:
        """(blocks, BLOCK^3, ...) storage -> (nx, ny, nz, ...) array, padding removed."""
        nbx, nby, nbz = self.blocks_shape
        extra = values.shape[2:]
        dense = values.reshape(nbx, nby, nbz, BLOCK, BLOCK, BLOCK, *extra)
        dense = dense.permute(0, 3, 1, 4, 2, 5, *range(6, 6 + len(extra)))
        dense = dense.reshape(nbx * BLOCK, nby * BLOCK, nbz * BLOCK, *extra)
        nx, ny, nz = self.grid.shape
        return dense[:nx, :ny, :nz].contiguous().cpu().numpy()

    def tsdf_grid(self) -> np.ndarray:
        """(nx, ny, nz) float32 truncated signed distance in units of sdf_trunc (1 where unobserved)."""
        return self._dense(self.tsdf)

    def observed_grid(self) -> np.ndarray:
        """(nx, ny, nz) bool: some view updated the voxel."""
        return self._dense(self.weight > 0)

    @torch.no_grad()
    def sample_colour(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) colours at fractional voxel indices (N, 3): trilinear over the surrounding voxels that
        have a colour (renormalised), read from the block storage (no dense colour grid is made)."""
        points = torch.as_tensor(np.asarray(index, np.float64), device=self.device)
        upper = torch.as_tensor(self.grid.shape, device=self.device) - 1
        base = torch.floor(points).long().clamp(min=0)
        base = torch.minimum(base, (upper - 1).clamp(min=0))
        fraction = (points - base).clamp(0.0, 1.0).float()
        total = torch.zeros(len(points), 3, device=self.device)
        norm = torch.zeros(len(points), device=self.device)
        _, nby, nbz = self.blocks_shape
        for corner in range(8):
            step = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=self.device)
            voxel = torch.minimum(base + step, upper)
            block = ((voxel[:, 0] // BLOCK) * nby + voxel[:, 1] // BLOCK) * nbz + voxel[:, 2] // BLOCK
            offset = ((voxel[:, 0] % BLOCK) * BLOCK + voxel[:, 1] % BLOCK) * BLOCK + voxel[:, 2] % BLOCK
            weight = torch.prod(torch.where(step.bool(), fraction, 1.0 - fraction), dim=1)
            weight = weight * (self.colour_weight[block, offset] > 0)
            total += weight[:, None] * self.colour[block, offset]
            norm += weight
        colours = total / norm.clamp(min=1e-12)[:, None]
        return colours.clamp(0.0, 1.0).cpu().numpy()
