"""The pure-torch rasterizer: ``gsplat.rasterization(..., packed=False)`` for pinhole cameras, on any device.

Contract: :func:`rasterization` takes the arguments of :func:`patchsplat.render.rasterize` (gsplat 1.5.3
meanings, shapes and conventions, no batch dimensions) and returns ``(render_colors [C, H, W, X],
render_alphas [C, H, W, 1], meta)``, differentiable through autograd w.r.t. means, quats, scales,
opacities, colors (and backgrounds). ``meta`` holds what gsplat's own rasterization returns for
``packed=False`` and what its densification strategies read:

    radii [C, N, 2] int32 (0 = culled), means2d [C, N, 2] (a non-leaf tensor: call ``retain_grad()``
    before backward, as ``DefaultStrategy.step_pre_backward`` does, to read dL/dmeans2d in pixels),
    depths [C, N], conics [C, N, 3], opacities [C, N], gaussian_ids / camera_ids / batch_ids = None,
    tiles_per_gauss [C, N] int32, flatten_ids [n_isects] int64, isect_offsets [C, th, tw] int64,
    tile_width, tile_height, tile_size, width, height, n_cameras = C, n_batches = 1;
    with ``absgrad=True``, ``means2d.absgrad`` [C, N, 2] is filled during backward.

The pipeline is: project and cull (:mod:`.projection`), colours (SH evaluated per camera, + 0.5, clamped
at 0, as gsplat does), per-tile depth-sorted lists (:mod:`.tiles`), chunked front-to-back compositing
(:mod:`.composite`), background and expected depth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from patchsplat.render.composite import DEFAULT_CHUNK_ELEMENTS, composite_tiles
from patchsplat.render.sh import spherical_harmonics, view_colours
from patchsplat.render.projection import project_gaussians
from patchsplat.render.tiles import intersect_tiles

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
# Tile side used when the caller leaves it to the backend: on a CPU small tiles waste far fewer
# Gaussian x pixel evaluations than gsplat's 16 (measured in bench/render_cpu.py).
DEFAULT_TILE_SIZE = 8


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, render_mode) -> None:
    n = means.shape[0]
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3] (no batch dimensions), got {tuple(means.shape)}")
    for name, tensor, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)}, got {tuple(tensor.shape)}")
    c = viewmats.shape[0]
    if viewmats.shape != (c, 4, 4) or Ks.shape != (c, 3, 3):
        raise ValueError(f"viewmats must be [C, 4, 4] and Ks [C, 3, 3], got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if sh_degree is None:
        if not (colors.dim() == 2 and colors.shape[0] == n) and not (colors.dim() == 3 and colors.shape[:2] == (c, n)):
            raise ValueError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {tuple(colors.shape)}")
    else:
        ok = (colors.dim() == 3 and colors.shape[0] == n) or (colors.dim() == 4 and colors.shape[:2] == (c, n))
        if not ok or colors.shape[-1] != 3 or colors.shape[-2] < (sh_degree + 1) ** 2:
            raise ValueError(
                f"colors must be SH coefficients [N, K, 3] or [C, N, K, 3] with K >= {(sh_degree + 1) ** 2} "
                f"for sh_degree={sh_degree}, got {tuple(colors.shape)}"
            )


def _view_colors(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: int | None, kernels: str) -> Tensor:
    """Per-camera colours [C, N, D]: post-activation colours broadcast, or SH evaluated towards each camera."""
    n_cameras, n = viewmats.shape[0], means.shape[0]
    if sh_degree is None:
        return colors if colors.dim() == 3 else colors[None].expand(n_cameras, n, colors.shape[-1])
    camera_centres = torch.inverse(viewmats)[:, :3, 3]                    # [C, 3]
    if colors.dim() == 3:
        return view_colours(sh_degree, means, colors[:, :1], colors[:, 1:], camera_centres, kernels)
    # Per-camera coefficients [C, N, K, 3]; gsplat adds 0.5 and clamps at 0 to match the INRIA CUDA rasterizer.
    dirs = means[None, :, :] - camera_centres[:, None, :]                  # [C, N, 3]
    return torch.clamp_min(spherical_harmonics(sh_degree, dirs, colors) + 0.5, 0.0)


def _tiles_to_image(per_tile: Tensor, n_cameras: int, tile_width: int, tile_height: int,
                    tile_size: int, width: int, height: int) -> Tensor:
    """[C * th * tw, ts * ts, D] tile blocks -> [C, height, width, D] image (partial edge tiles cropped)."""
    channels = per_tile.shape[-1]
    image = per_tile.reshape(n_cameras, tile_height, tile_width, tile_size, tile_size, channels)
    image = image.permute(0, 1, 3, 2, 4, 5).reshape(n_cameras, tile_height * tile_size, tile_width * tile_size, channels)
    return image[:, :height, :width]


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
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    kernels: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render C views of N Gaussians (see the module docstring); ``tile_size=None`` -> DEFAULT_TILE_SIZE.

    ``kernels`` picks how projection, SH colours and compositing run: ``auto`` (the native C++ passes on a CPU
    where they build, :mod:`patchsplat.render.native`), ``native`` or ``torch`` (the pure-torch functions)."""
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, render_mode)
    tile_size = DEFAULT_TILE_SIZE if tile_size is None else int(tile_size)
    n_cameras, n = viewmats.shape[0], means.shape[0]

    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, kernels=kernels,
    )
    view_colors = _view_colors(means, colors, viewmats, sh_degree, kernels)
    depth_channel = proj.depths[..., None]
    if render_mode in ("RGB+D", "RGB+ED"):
        view_colors = torch.cat([view_colors, depth_channel], dim=-1)
    elif render_mode in ("D", "ED"):
        view_colors = depth_channel
    channels = view_colors.shape[-1]

    tiles = intersect_tiles(proj.means2d, proj.radii, proj.depths, width, height, tile_size, kernels)
    view_opacities = opacities[None, :].expand(n_cameras, n)
    absgrad_out = None
    if absgrad and proj.means2d.requires_grad:
        absgrad_out = torch.zeros(n_cameras * n, 2, dtype=proj.means2d.dtype, device=proj.means2d.device)
        proj.means2d.absgrad = absgrad_out.view(n_cameras, n, 2)
    tile_colors, tile_transmittance = composite_tiles(
        proj.means2d.reshape(-1, 2),
        proj.conics.reshape(-1, 3),
        view_opacities.reshape(-1),
        view_colors.reshape(-1, channels),
        tiles,
        chunk_elements=chunk_elements,
        absgrad_out=absgrad_out,
        kernels=kernels,
    )
    grid = (n_cameras, tiles.tile_width, tiles.tile_height, tile_size, width, height)
    render_colors = _tiles_to_image(tile_colors, *grid)
    transmittance = _tiles_to_image(tile_transmittance[..., None], *grid)
    render_alphas = 1.0 - transmittance

    if backgrounds is not None:
        # gsplat composites no background into depth channels.
        if render_mode in ("D", "ED"):
            backgrounds = torch.zeros_like(backgrounds[..., :1])
        elif render_mode in ("RGB+D", "RGB+ED"):
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[..., :1])], dim=-1)
        render_colors = render_colors + transmittance * backgrounds[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        # Expected depth: accumulated depth / accumulated alpha.
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )

    meta = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": view_opacities,
        "tile_width": tiles.tile_width,
        "tile_height": tiles.tile_height,
        "tiles_per_gauss": tiles.tiles_per_gauss,
        "flatten_ids": tiles.flatten_ids,
        "isect_offsets": tiles.isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": n_cameras,
    }
    return render_colors, render_alphas, meta
