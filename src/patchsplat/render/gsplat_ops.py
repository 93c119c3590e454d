"""The pure-torch pieces of gsplat 1.5.3 that patchsplat uses, behind one module.

They are private names (``gsplat.cuda._torch_impl._*``) and may move or change between gsplat
releases, so nothing else imports them: ``tests/test_render.py`` uses :func:`spherical_harmonics` and
:func:`reference_projection` to check that patchsplat's faster SH evaluation (:mod:`patchsplat.render.sh`)
and projection (:mod:`patchsplat.render.projection`) compute what gsplat's reference implementation computes. Those
tests also pin these functions' behaviour, so a gsplat upgrade that changes them fails loudly.

Importing this module does not load gsplat's compiled CUDA extension (``_torch_impl`` is plain torch).
"""

from __future__ import annotations

from torch import Tensor

from gsplat.cuda import _torch_impl as _impl


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH bands 0..degree: dirs [..., 3] (normalised here), coeffs [..., K, 3] -> [..., 3].

    Returns the raw SH value; gsplat's rasterization adds 0.5 and clamps at 0 afterwards.
    """
    return _impl._spherical_harmonics(degree, dirs, coeffs)


def reference_covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """gsplat's world-space covariances R S S^T R^T [N, 3, 3] (quats wxyz, normalised inside)."""
    covars, _ = _impl._quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    return covars


def reference_projection(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor,
                         width: int, height: int, eps2d: float = 0.3, near_plane: float = 0.01,
                         far_plane: float = 1e10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gsplat's pure-torch ``_fully_fused_projection`` (pinhole): (radii [C, N, 2] with a fixed 3.33-sigma
    extent, means2d [C, N, 2], depths [C, N], conics [C, N, 3])."""
    covars = reference_covariances(quats, scales)
    radii, means2d, depths, conics, _ = _impl._fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane
    )
    return radii, means2d, depths, conics
