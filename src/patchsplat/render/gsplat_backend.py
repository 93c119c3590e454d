"""The gsplat backend: ``gsplat.rasterization(..., packed=False)``, outputs returned unchanged.

Contract: same arguments and outputs as :func:`patchsplat.render.rasterize` (see there). Needs a CUDA
device and gsplat's compiled extension; :func:`patchsplat.render.select_backend` checks both first.
``packed=False`` so that ``meta`` has the same [C, N, ...] layout as the torch backend's.
"""

from __future__ import annotations

from torch import Tensor

GSPLAT_TILE_SIZE = 16


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    eps2d: float = 0.3,
    tile_size: int | None = None,
    absgrad: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    # Imported here: importing gsplat is cheap and CUDA-free, but only this path needs its rasterizer.
    import gsplat

    return gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=GSPLAT_TILE_SIZE if tile_size is None else tile_size,
        backgrounds=backgrounds,
        render_mode=render_mode,
        absgrad=absgrad,
        camera_model="pinhole",
    )
