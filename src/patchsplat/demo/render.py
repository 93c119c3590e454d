"""Render one view of the scene by ray casting, with 2x2 supersampling against aliasing.

Contract: :func:`render_view` returns an (H, W, 3) uint8 RGB image of camera ``index``, a pure
function of the layout. A pixel is the mean colour of four rays through its quarter-pixel points.
"""

from __future__ import annotations

import numpy as np

from patchsplat.demo.layout import SceneLayout, objects_in_view
from patchsplat.demo.raycast import cast_rays
from patchsplat.demo.textures import radiance

SUPERSAMPLE = 2
# Rows of the image cast per batch: bounds memory at large image sizes.
ROWS_PER_BATCH = 64


def render_view(layout: SceneLayout, index: int) -> np.ndarray:
    cameras = layout.cameras
    width, height = cameras.width, cameras.height
    object_ids = objects_in_view(layout, index)
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    sub_x = (np.arange(width)[:, None] + offsets[None, :]).ravel()  # W*S sample columns
    image = np.zeros((height, width, 3))
    for row0 in range(0, height, ROWS_PER_BATCH):
        rows = np.arange(row0, min(row0 + ROWS_PER_BATCH, height))
        sub_y = (rows[:, None] + offsets[None, :]).ravel()
        grid_u, grid_v = np.meshgrid(sub_x, sub_y)
        uv = np.stack([grid_u.ravel(), grid_v.ravel()], axis=1)
        dirs = cameras.pixel_directions(index, uv)
        hits = cast_rays(layout, cameras.centre[index], dirs, object_ids)
        colour = radiance(layout.objects, hits.surface, hits.point, hits.normal, dirs)
        colour = colour.reshape(len(rows), SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))
        image[rows] = colour
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
