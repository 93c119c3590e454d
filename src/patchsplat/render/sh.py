"""View-dependent colour from spherical-harmonic coefficients, as gsplat evaluates it, with a lean backward pass.

:func:`spherical_harmonics` returns what ``gsplat.cuda._torch_impl._spherical_harmonics`` returns (the real SH
basis of Sloan, "Efficient Spherical Harmonic Evaluation", JCGT 2013, with gsplat's constants, bands 0-4), and
tests/test_render.py holds the two to each other in values and gradients. gsplat's torch version writes each
basis function into a slice of a zero-filled tensor; every such in-place write makes autograd clone the whole
gradient in the backward pass (16 clones of an [N, 16] tensor per step at degree 3, plus a zero-padded copy of
the coefficients' gradient). Here the basis functions are stacked instead, and only the bands in use touch the
coefficients: on the demo's 60k Gaussians, measured in bench/RESULTS.md (issue 15).

:func:`view_colours` is what the renderer calls: on a CPU it runs as one C++ pass per Gaussian, forward and
backward (``kernels``, see :mod:`patchsplat.render.native`), the basis and its derivatives from one templated
polynomial; tests/test_render.py holds it to :func:`spherical_harmonics`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from patchsplat.render import native


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """The (degree + 1)^2 real SH basis functions at unit directions dirs [..., 3] -> [..., (degree + 1)^2]."""
    if not 0 <= degree <= 4:
        raise ValueError(f"SH degree must be in 0..4, got {degree}")
    x, y, z = dirs.unbind(-1)
    basis: dict[int, Tensor] = {0: torch.full_like(x, 0.2820947917738781)}
    if degree >= 1:
        basis.update({1: -0.48860251190292 * y, 2: 0.48860251190292 * z, 3: -0.48860251190292 * x})
    if degree >= 2:
        z2 = z * z
        tmp_b = -1.092548430592079 * z
        c1, s1 = x * x - y * y, 2 * x * y
        basis.update({4: 0.5462742152960395 * s1, 5: tmp_b * y, 6: 0.9461746957575601 * z2 - 0.3153915652525201,
                      7: tmp_b * x, 8: 0.5462742152960395 * c1})
    if degree >= 3:
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        tmp_b = 1.445305721320277 * z
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        basis.update({9: -0.5900435899266435 * s2, 10: tmp_b * s1, 11: tmp_c * y,
                      12: z * (1.865881662950577 * z2 - 1.119528997770346), 13: tmp_c * x, 14: tmp_b * c1,
                      15: -0.5900435899266435 * c2})
    if degree >= 4:
        tmp_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tmp_c = 3.31161143515146 * z2 - 0.47308734787878
        tmp_b = -1.770130769779931 * z
        c3, s3 = x * c2 - y * s2, x * s2 + y * c2
        basis.update({16: 0.6258357354491763 * s3, 17: tmp_b * s2, 18: tmp_c * s1, 19: tmp_d * y,
                      20: 1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346)
                      - 1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201),
                      21: tmp_d * x, 22: tmp_c * c1, 23: tmp_b * c2, 24: 0.6258357354491763 * c3})
    return torch.stack([basis[index] for index in range((degree + 1) ** 2)], dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH bands 0..degree: dirs [..., 3] (normalised here), coeffs [..., K, 3] -> [..., 3].

    The raw SH value, as gsplat's; its rasterization adds 0.5 and clamps at 0 afterwards."""
    used = (degree + 1) ** 2
    if coeffs.shape[-2] < used:
        raise ValueError(f"SH degree {degree} needs {used} coefficients per colour, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, F.normalize(dirs, p=2, dim=-1))
    if used < coeffs.shape[-2]:
        coeffs = coeffs.narrow(-2, 0, used)
    return torch.einsum("...k,...kc->...c", basis, coeffs)


def view_colours(degree: int, means: Tensor, sh0: Tensor, shN: Tensor, camera_centres: Tensor,
                 kernels: str = "auto") -> Tensor:
    """Colours [C, N, 3] of Gaussians at means [N, 3] with SH coefficients sh0 [N, 1, 3] (band 0) and shN
    [N, K - 1, 3] (the rest, as the model keeps them), seen from camera_centres [C, 3]: bands 0..degree towards each
    camera, + 0.5, clamped at 0 (as gsplat's rasterization, after the INRIA one).

    ``kernels``: ``auto`` (the native C++ pass on a CPU where it could be built and the centres need no
    gradient; it reads the two coefficient tensors in place), ``native`` or ``torch``."""
    module = native.select(kernels, means, sh0, shN, fixed=(camera_centres,))
    if module is not None:
        return _NativeViewColours.apply(degree, means.contiguous(), sh0.contiguous(), shN.contiguous(),
                                        camera_centres.to(means.dtype).contiguous(), module)
    coeffs = torch.cat([sh0, shN], dim=1)
    dirs = means[None, :, :] - camera_centres[:, None, :]                  # [C, N, 3]
    expanded = coeffs[None].expand(camera_centres.shape[0], *coeffs.shape)
    return torch.clamp_min(spherical_harmonics(degree, dirs, expanded) + 0.5, 0.0)


class _NativeViewColours(torch.autograd.Function):
    """:func:`view_colours` in C++ (render/native/project.cpp): gradients for means and coefficients."""

    @staticmethod
    def forward(ctx, degree, means, sh0, shN, centres, module):
        if 1 + shN.shape[-2] < (degree + 1) ** 2:
            raise ValueError(f"SH degree {degree} needs {(degree + 1) ** 2} coefficients per colour, got {1 + shN.shape[-2]}")
        ctx.save_for_backward(means, sh0, shN, centres)
        ctx.degree, ctx.module = degree, module
        return module.sh_forward(degree, means, sh0, shN, centres)

    @staticmethod
    def backward(ctx, grad_colours):
        means, sh0, shN, centres = ctx.saved_tensors
        v_means, v_sh0, v_shN = ctx.module.sh_backward(ctx.degree, means, sh0, shN, centres, grad_colours)
        return None, v_means, v_sh0, v_shN, None, None
