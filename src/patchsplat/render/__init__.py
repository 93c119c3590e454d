"""Rendering 3D Gaussians: one interface, two backends (gsplat's CUDA kernels, or pure torch anywhere).

Contract::

    from patchsplat.render import rasterize, select_backend, RenderOutput
    colors, alphas, meta = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height)

Arguments mean what they mean for ``gsplat.rasterization`` 1.5.3 (no batch dimensions, pinhole
cameras, "classic" mode): means [N, 3]; quats [N, 4] wxyz, any norm; scales [N, 3] and opacities [N]
activated; colors [N, D] or [C, N, D], or SH coefficients [N, K, 3] / [C, N, K, 3] with ``sh_degree``;
viewmats [C, 4, 4] world-to-camera; Ks [C, 3, 3]; backgrounds [C, D]; render_mode "RGB" | "D" | "ED" |
"RGB+D" | "RGB+ED" (ED = expected depth, accumulated depth / alpha). Returns a :class:`RenderOutput`
(a tuple): render_colors [C, H, W, channels], render_alphas [C, H, W, 1], meta — with what gsplat's
DefaultStrategy and MCMCStrategy read (means2d, radii [C, N, 2] int32, depths, width, height,
n_cameras, gaussian_ids = None; see :mod:`.torch_backend` for the full list).

``backend``: "auto" (gsplat when its CUDA kernels load and the tensors are on a GPU, else torch),
"gsplat" (RuntimeError if it cannot run) or "torch". ``tile_size=None`` lets the backend choose
(16 for gsplat, :data:`~.torch_backend.DEFAULT_TILE_SIZE` for torch); the image does not depend on it.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from patchsplat.render.backend import select_backend

__all__ = ["RenderOutput", "rasterize", "select_backend"]


class RenderOutput(NamedTuple):
    colors: Tensor   # [C, H, W, channels]
    alphas: Tensor   # [C, H, W, 1]
    meta: dict


def rasterize(
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
    backend: str = "auto",
    absgrad: bool = False,
) -> RenderOutput:
    """Render C views of N Gaussians with the chosen backend (see the module docstring)."""
    name = select_backend(backend, device=means.device)
    if name == "gsplat":
        from patchsplat.render.gsplat_backend import rasterization
    else:
        from patchsplat.render.torch_backend import rasterization
    render_colors, render_alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        sh_degree=sh_degree, near_plane=near_plane, far_plane=far_plane, backgrounds=backgrounds,
        render_mode=render_mode, eps2d=eps2d, tile_size=tile_size, absgrad=absgrad,
    )
    meta["backend"] = name
    return RenderOutput(render_colors, render_alphas, meta)
