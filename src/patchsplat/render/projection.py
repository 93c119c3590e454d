"""Project 3D Gaussians into pinhole cameras, culling and bounding them like gsplat 1.5.3's CUDA kernel.

Contract: :func:`project_gaussians` takes means [N, 3], quats [N, 4] (wxyz, any norm), scales [N, 3]
(activated), opacities [N] (activated), viewmats [C, 4, 4] (world-to-camera) and Ks [C, 3, 3] and
returns a :class:`Projection` laid out like ``gsplat.fully_fused_projection(..., packed=False)``: one
row per (camera, Gaussian). It is differentiable through autograd w.r.t. means, quats and scales;
radii are integers and carry no gradient.

Per (camera, Gaussian), as in ``csrc/ProjectionEWA3DGSFused.cu`` (and ``persp_proj`` in Utils.cuh):

* culled when the camera-space depth z is outside [near_plane, far_plane];
* mean2d = (fx x / z + cx, fy y / z + cy) (the kernel ignores K's skew, so does this);
* 2D covariance = J W Sigma W^T J^T + eps2d I, the Jacobian J taken at the mean clamped to 1.3x the
  field of view; culled when its determinant is <= 0;
* culled when opacity < 1/255 (it can never reach the compositing threshold);
* radius per axis = ceil(extend * sqrt(covariance diagonal)) with the opacity-aware extent
  extend = min(3.33, sqrt(2 ln(255 opacity))): the ellipse where alpha falls to 1/255 lies inside
  this box, so no pixel that would be composited is outside it;
* culled when the box lies entirely outside the image.

Culled rows have radii == 0 and means2d, depths, conics == 0 (gsplat leaves them undefined). No opacity
compensation is applied ("classic" rasterize mode). The math is written out per matrix entry rather
than with einsum/bmm over tiny 3x3 matrices, which is several times slower on a CPU;
tests/test_render.py checks it against gsplat's own pure-torch reference (``_fully_fused_projection``).

On a CPU the same math runs as one C++ pass per Gaussian, forward and backward (``kernels``, see
:mod:`patchsplat.render.native`): the ~150 elementwise torch operations here and their backward passes were a
fifth of a training step, on one core (bench/RESULTS.md, issue 15). tests/test_render.py holds the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from patchsplat.render import native

# gsplat's ALPHA_THRESHOLD (include/Common.h): contributions below it are skipped.
ALPHA_THRESHOLD = 1.0 / 255.0
# Largest extent of the bounding box in standard deviations (gsplat 1.5.3's kernel).
MAX_EXTEND = 3.33


@dataclass
class Projection:
    """Per (camera, Gaussian) projection results; C cameras, N Gaussians."""

    radii: Tensor      # [C, N, 2] int32, 0 where culled
    means2d: Tensor    # [C, N, 2] pixel coordinates (pixel (i, j) has its centre at (j + 0.5, i + 0.5))
    depths: Tensor     # [C, N] camera-space z
    conics: Tensor     # [C, N, 3] inverse 2D covariance (a, b, c): [[a, b], [b, c]]

    @property
    def visible(self) -> Tensor:
        """[C, N] bool: not culled."""
        return (self.radii > 0).all(dim=-1)


def world_covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances R S S^T R^T as their 6 entries (xx, xy, xz, yy, yz, zz) [N, 6].

    quats [N, 4] wxyz (normalised here, rotation matrix as gsplat's ``_quat_to_rotmat``), scales [N, 3].
    """
    w, x, y, z = torch.nn.functional.normalize(quats, p=2, dim=-1).T.contiguous()
    sx, sy, sz = scales.T.contiguous()
    # Columns of R, each scaled by its axis' scale: R S.
    c0 = (sx * (1 - 2 * (y * y + z * z)), sx * (2 * (x * y + w * z)), sx * (2 * (x * z - w * y)))
    c1 = (sy * (2 * (x * y - w * z)), sy * (1 - 2 * (x * x + z * z)), sy * (2 * (y * z + w * x)))
    c2 = (sz * (2 * (x * z + w * y)), sz * (2 * (y * z - w * x)), sz * (1 - 2 * (x * x + y * y)))

    def entry(i: int, j: int) -> Tensor:
        return c0[i] * c0[j] + c1[i] * c1[j] + c2[i] * c2[j]

    return torch.stack([entry(0, 0), entry(0, 1), entry(0, 2), entry(1, 1), entry(1, 2), entry(2, 2)], dim=-1)


_SYM_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _congruence_matrices(rotations: Tensor) -> Tensor:
    """[C, 6, 6] T with sym6(W S W^T) = T @ sym6(S) for symmetric S, sym6 = entries (xx, xy, xz, yy, yz, zz)."""
    rows = []
    for i, j in _SYM_PAIRS:
        row = []
        for k, l in _SYM_PAIRS:
            term = rotations[:, i, k] * rotations[:, j, l]
            if k != l:
                term = term + rotations[:, i, l] * rotations[:, j, k]
            row.append(term)
        rows.append(torch.stack(row, dim=-1))
    return torch.stack(rows, dim=-2)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    kernels: str = "auto",
) -> Projection:
    """Project, cull and bound every Gaussian in every camera (see the module docstring).

    ``kernels``: ``auto`` (the native C++ pass on a CPU where it could be built and no camera needs a gradient),
    ``native`` or ``torch``."""
    module = native.select(kernels, means, fixed=(viewmats, Ks))
    if module is not None:
        tensors = [t.contiguous() for t in (means, quats, scales, opacities.detach(), viewmats.to(means.dtype),
                                            Ks.to(means.dtype))]
        radii, means2d, depths, conics = _NativeProjection.apply(
            *tensors, (width, height, float(eps2d), float(near_plane), float(far_plane)), module)
        return Projection(radii=radii, means2d=means2d, depths=depths, conics=conics)
    # Per-component [C, N] tensors are kept contiguous: torch's elementwise ops on strided views
    # (x = means_cam[..., 0]) are several times slower.
    rotations, translations = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_cam = torch.matmul(means[None], rotations.transpose(1, 2)) + translations[:, None, :]  # [C, N, 3]
    x, y, z = means_cam.permute(2, 0, 1).contiguous()
    depths = z
    in_depth_range = (z >= near_plane) & (z <= far_plane)
    # Rows outside the depth range are projected from z = 1 instead: dividing by a depth near 0 would
    # put inf/NaN into the graph, and 0 * inf in the backward pass is NaN even for unused rows.
    z = torch.where(in_depth_range, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]                          # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    inv_z = 1.0 / z
    means2d = torch.stack([fx * x * inv_z + cx, fy * y * inv_z + cy], dim=-1)

    # EWA: Jacobian of the projection at the mean, clamped to 1.3x the field of view (gsplat's persp_proj).
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.minimum(torch.maximum(x * inv_z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y * inv_z, -lim_y_neg), lim_y_pos)
    j00, j11 = fx * inv_z, fy * inv_z
    j02, j12 = -fx * tx * inv_z * inv_z, -fy * ty * inv_z * inv_z
    # Camera-space covariances W Sigma W^T for all Gaussians with one matrix product per camera.
    sym_cam = torch.matmul(world_covariances(quats, scales)[None], _congruence_matrices(rotations).transpose(1, 2))
    sxx, sxy, sxz, syy, syz, szz = sym_cam.permute(2, 0, 1).contiguous()
    cov_xx = j00 * j00 * sxx + 2 * j00 * j02 * sxz + j02 * j02 * szz + eps2d
    cov_xy = j00 * j11 * sxy + j00 * j12 * sxz + j02 * j11 * syz + j02 * j12 * szz
    cov_yy = j11 * j11 * syy + 2 * j11 * j12 * syz + j12 * j12 * szz + eps2d
    det = cov_xx * cov_yy - cov_xy * cov_xy

    with torch.no_grad():
        extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp_max(MAX_EXTEND)                              # [N]
        radius_x = torch.ceil(extend * torch.sqrt(cov_xx.clamp_min(0.0)))
        radius_y = torch.ceil(extend * torch.sqrt(cov_yy.clamp_min(0.0)))
        on_image = (
            (means2d[..., 0] + radius_x > 0)
            & (means2d[..., 0] - radius_x < width)
            & (means2d[..., 1] + radius_y > 0)
            & (means2d[..., 1] - radius_y < height)
        )
        visible = (
            in_depth_range & (det > 0) & (opacities >= ALPHA_THRESHOLD)
            & ((radius_x > 0) | (radius_y > 0)) & on_image
        )
        radii = (torch.stack([radius_x, radius_y], dim=-1) * visible[..., None]).to(torch.int32)

    # Culled rows get det = 1 so that the conic stays finite (see the depth above), then are zeroed.
    inv_det = 1.0 / torch.where(visible, det, torch.ones_like(det))
    conics = torch.stack([cov_yy * inv_det, -cov_xy * inv_det, cov_xx * inv_det], dim=-1)
    zero = torch.zeros((), dtype=means2d.dtype, device=means2d.device)
    return Projection(
        radii=radii,
        means2d=torch.where(visible[..., None], means2d, zero),
        depths=torch.where(visible, depths, zero),
        conics=torch.where(visible[..., None], conics, zero),
    )


class _NativeProjection(torch.autograd.Function):
    """:func:`project_gaussians` in C++ (render/native/project.cpp): gradients for means, quats and scales."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, settings, module):
        radii, means2d, depths, conics = module.project_forward(means, quats, scales, opacities, viewmats, Ks, *settings)
        ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks, radii)
        ctx.settings, ctx.module = settings, module
        ctx.mark_non_differentiable(radii)
        return radii, means2d, depths, conics

    @staticmethod
    def backward(ctx, _grad_radii, grad_means2d, grad_depths, grad_conics):
        means, quats, scales, opacities, viewmats, Ks, radii = ctx.saved_tensors
        rows = radii.shape[:2]
        grads = [g if g is not None else means.new_zeros(*rows, *tail) for g, tail in
                 ((grad_means2d, (2,)), (grad_depths, ()), (grad_conics, (3,)))]
        v_means, v_quats, v_scales = ctx.module.project_backward(means, quats, scales, opacities, viewmats, Ks,
                                                                 *ctx.settings, radii, *grads)
        return v_means, v_quats, v_scales, None, None, None, None, None
