"""gsplat 1.5.3's densification strategies, made to run on CPU and with the 1.5.3 bugs worked around.

What is wrong upstream, and what this module does about it:

1. ``MCMCStrategy`` calls two CUDA-only ops (there are no CPU kernels in gsplat):
   ``gsplat.relocation.compute_relocation`` (relocation / addition of Gaussians, eq. 9 of
   "3D Gaussian Splatting as Markov Chain Monte Carlo", arXiv:2404.09591, implemented in
   ``gsplat/cuda/csrc/RelocationCUDA.cu``) and ``gsplat.quat_scale_to_covar_preci`` (noise
   injection). On a CPU tensor they fail with ``ImportError`` (no compiled extension), or
   with a device check when the extension exists. :func:`relocation_torch` and
   :func:`covar_torch` are pure-torch ports with the same argument contracts, and
   :class:`CpuSafeMCMCStrategy` runs gsplat's own MCMC code with those two names routed per
   device: CUDA tensors still go to gsplat's kernels, CPU tensors to the ports.

   How: gsplat's ``relocate``, ``sample_add`` and ``inject_noise_to_position`` (in
   ``gsplat.strategy.ops``) look the two ops up as globals of that module at call time.
   :func:`cpu_fallback_ops` swaps those two module attributes for device-dispatching
   wrappers for the duration of a ``with`` block (reentrant, thread-safe, restored on exit
   even on error). Nothing else of gsplat is copied, so every other detail of the upstream
   strategy (sampling, optimizer-state surgery, the 5 % growth rule) is used as is. The noise
   itself, every step, runs as one native C++ pass on a CPU (:func:`_inject_noise_any_device`).

2. ``DefaultStrategy``'s opacity reset never fires in 1.5.3: the test is written
   ``if step % self.reset_every == 0 & step > 0``, which Python parses as the chained
   comparison ``step % reset_every == (0 & step) > 0``, i.e. ``... and 0 > 0``: always
   false. :class:`FixedDefaultStrategy` performs the reset where the upstream code meant
   to (``step > 0 and step % reset_every == 0``, only while ``step < refine_stop_iter``,
   after growing/pruning) and is otherwise the upstream class unchanged.

3. ``MCMCStrategy`` never removes Gaussians, so ``cap_max`` is only a bound on *growth*:
   if the initial point cloud already holds more than ``cap_max`` points, training runs
   with all of them (upstream issue #516). The trainer must subsample the initial points
   first; :func:`enforce_cap` returns the indices to keep.

All of this is pinned to gsplat 1.5.3 (the tests exercise it against that version).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gsplat.strategy.mcmc as gsplat_mcmc
import gsplat.strategy.ops as gsplat_ops
import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from torch import Tensor

# The functions gsplat's strategy ops call, captured before any patching: CUDA tensors are
# always handed to these.
_GSPLAT_COMPUTE_RELOCATION = gsplat_ops.compute_relocation
_GSPLAT_QUAT_SCALE_TO_COVAR_PRECI = gsplat_ops.quat_scale_to_covar_preci
_GSPLAT_INJECT_NOISE = gsplat_mcmc.inject_noise_to_position


# --------------------------------------------------------------------------------------------- relocation


def relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """Pure-torch ``gsplat.relocation.compute_relocation`` (MCMC paper eq. 9), any device.

    A Gaussian with opacity ``o`` and scales ``s`` that is to be split into ``n`` copies
    (``n = ratios[i]``) gets, for every copy::

        o_new = 1 - (1 - o) ** (1 / n)
        s_new = o / D * s,   D = sum_{i=1..n} sum_{k=0..i-1} binoms[i-1, k] * (-1)^k / sqrt(k+1) * o_new^(k+1)

    so that ``n`` overlapping copies render (approximately) like the original.

    Args (the CUDA op's contract):
        opacities: post-sigmoid opacities ``[N]`` (any shape with N elements; the output has
            the same shape, as the CUDA op's ``empty_like``).
        scales: post-exp scales ``[N, 3]``.
        ratios: number of copies ``[N]``; clamped to ``[1, n_max]`` and truncated to int as
            the CUDA wrapper does (the wrapper clamps the caller's tensor in place; this
            port does not modify its inputs).
        binoms: binomial-coefficient table ``[n_max, n_max]`` with ``binoms[n, k] = C(n, k)``
            for ``k <= n`` (``MCMCStrategy.initialize_state()["binoms"]``, n_max = 51). Only its
            lower triangle is read, as the kernel reads only ``k <= i - 1``.

    Returns ``(new_opacities, new_scales)`` in the dtype and on the device of the inputs.
    Computed in float64 (the CUDA kernel accumulates in float32; for large ``n`` the alternating
    sum loses some digits there, so results agree to float32 rounding, not bit for bit).
    """
    num = opacities.numel()
    if scales.shape != (num, 3):
        raise ValueError(f"scales must have shape [N, 3] with N={num}, got {tuple(scales.shape)}")
    if ratios.numel() != num:
        raise ValueError(f"ratios must have N={num} elements, got shape {tuple(ratios.shape)}")
    if binoms.dim() != 2 or binoms.shape[0] != binoms.shape[1]:
        raise ValueError(f"binoms must be a square [n_max, n_max] table, got {tuple(binoms.shape)}")
    n_max = binoms.shape[0]
    work = torch.float64
    device = opacities.device
    # Clamp, then truncate toward zero, exactly like ``ratios.clamp_(1, n_max).int()``.
    copies = ratios.reshape(-1).clamp(min=1, max=n_max).to(torch.int32).long()
    old_opacity = opacities.reshape(-1).to(work)
    new_opacity = 1.0 - torch.pow(1.0 - old_opacity, 1.0 / copies.to(work))

    # Coefficient of new_opacity^(k+1) in D for n copies: sum_{i=1..n} binoms[i-1, k], i.e. the
    # cumulative sum over rows of the (lower-triangular) table, read at row n-1.
    table = torch.tril(binoms.to(device=device, dtype=work))
    coefficients = torch.cumsum(table, dim=0)[copies - 1]  # [N, n_max]
    k = torch.arange(n_max, device=device, dtype=work)
    signed = torch.where(k % 2 == 0, 1.0, -1.0) / torch.sqrt(k + 1.0)  # (-1)^k / sqrt(k+1)
    powers = new_opacity[:, None] ** (k[None, :] + 1.0)  # [N, n_max]
    denominator = (coefficients * signed * powers).sum(dim=1)
    new_scales = (old_opacity / denominator)[:, None] * scales.to(work)
    return new_opacity.to(opacities.dtype).reshape(opacities.shape), new_scales.to(scales.dtype)


def _compute_relocation_any_device(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor):
    """``compute_relocation`` that uses gsplat's CUDA kernel for CUDA tensors, the torch port otherwise."""
    if opacities.is_cuda:
        return _GSPLAT_COMPUTE_RELOCATION(opacities=opacities, scales=scales, ratios=ratios, binoms=binoms)
    return relocation_torch(opacities, scales, ratios, binoms)


# --------------------------------------------------------------------------------------------- covariances


def _quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` of (not necessarily normalised) w-x-y-z quaternions ``[..., 4]``."""
    w, x, y, z = torch.unbind(F.normalize(quats, p=2, dim=-1), dim=-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def _upper_triangle(matrices: Tensor) -> Tensor:
    """``[..., 3, 3] -> [..., 6]`` (xx, xy, xz, yy, yz, zz), symmetrised as gsplat does."""
    flat = matrices.reshape(matrices.shape[:-2] + (9,))
    return (flat[..., [0, 1, 2, 4, 5, 8]] + flat[..., [0, 3, 6, 4, 7, 8]]) / 2.0


def covar_torch(
    quats: Tensor,
    scales: Tensor,
    compute_covar: bool = True,
    compute_preci: bool = True,
    triu: bool = False,
) -> tuple[Tensor | None, Tensor | None]:
    """Pure-torch ``gsplat.quat_scale_to_covar_preci`` (same arguments and returns), differentiable.

    ``quats [..., 4]`` (w, x, y, z; normalised here) and ``scales [..., 3]`` (post-exp) give
    ``covar = R S S R^T`` and ``preci = R S^-1 S^-1 R^T``, each ``[..., 3, 3]`` or ``[..., 6]``
    with ``triu=True``; ``None`` for the one not asked for.
    """
    if quats.shape[-1] != 4 or scales.shape != quats.shape[:-1] + (3,):
        raise ValueError(f"quats must be [..., 4] and scales [..., 3], got {tuple(quats.shape)} and {tuple(scales.shape)}")
    rotations = _quat_to_rotmat(quats)
    covars = precis = None
    if compute_covar:
        m = rotations * scales[..., None, :]
        covars = m @ m.transpose(-1, -2)
        covars = _upper_triangle(covars) if triu else covars
    if compute_preci:
        p = rotations * (1.0 / scales)[..., None, :]
        precis = p @ p.transpose(-1, -2)
        precis = _upper_triangle(precis) if triu else precis
    return covars, precis


def _quat_scale_to_covar_preci_any_device(
    quats: Tensor, scales: Tensor, compute_covar: bool = True, compute_preci: bool = True, triu: bool = False
):
    """``quat_scale_to_covar_preci`` that uses gsplat's CUDA kernel for CUDA tensors, the torch port otherwise."""
    if quats.is_cuda:
        return _GSPLAT_QUAT_SCALE_TO_COVAR_PRECI(
            quats, scales, compute_covar=compute_covar, compute_preci=compute_preci, triu=triu
        )
    return covar_torch(quats, scales, compute_covar=compute_covar, compute_preci=compute_preci, triu=triu)


def _inject_noise_any_device(params, optimizers, state: dict, scaler: float) -> None:
    """gsplat's ``inject_noise_to_position``; on a CPU with the native kernels, the same noise in one C++ pass.

    Upstream evaluates it every step as a dozen [N, 3, 3] torch ops and an einsum, on one core (bench/RESULTS.md,
    issue 15). The standard normal draws are taken here exactly as upstream takes them (``randn_like`` of the means),
    so a run consumes the same random numbers either way and only the rounding differs."""
    from patchsplat.render import native

    means = params["means"]
    module = None if means.is_cuda else native.select("auto", means)
    if module is None or not means.is_contiguous():
        _GSPLAT_INJECT_NOISE(params=params, optimizers=optimizers, state=state, scaler=scaler)
        return
    with torch.no_grad():
        normal = torch.randn_like(means)
        module.inject_position_noise(means.data, params["quats"].data.contiguous(), params["scales"].data.contiguous(),
                                     params["opacities"].data.reshape(-1).contiguous(), normal, float(scaler))


# --------------------------------------------------------------------------------------------- patching

_patch_lock = threading.RLock()
_patch_depth = 0


@contextlib.contextmanager
def cpu_fallback_ops() -> Iterator[None]:
    """Within the block, gsplat's strategy ops run on CPU tensors too.

    Replaces ``gsplat.strategy.ops.compute_relocation`` and
    ``gsplat.strategy.ops.quat_scale_to_covar_preci`` by wrappers that dispatch on the
    tensors' device (CUDA -> gsplat's kernels, unchanged behaviour; otherwise ->
    :func:`relocation_torch` / :func:`covar_torch`), and ``gsplat.strategy.mcmc``'s
    ``inject_noise_to_position`` by :func:`_inject_noise_any_device` (the native pass on a CPU).
    Reentrant and thread-safe (a depth count: the originals are restored when the outermost block
    exits, also on error). Nothing outside those two gsplat modules is touched.
    """
    global _patch_depth
    with _patch_lock:
        if _patch_depth == 0:
            gsplat_ops.compute_relocation = _compute_relocation_any_device
            gsplat_ops.quat_scale_to_covar_preci = _quat_scale_to_covar_preci_any_device
            gsplat_mcmc.inject_noise_to_position = _inject_noise_any_device
        _patch_depth += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                gsplat_ops.compute_relocation = _GSPLAT_COMPUTE_RELOCATION
                gsplat_ops.quat_scale_to_covar_preci = _GSPLAT_QUAT_SCALE_TO_COVAR_PRECI
                gsplat_mcmc.inject_noise_to_position = _GSPLAT_INJECT_NOISE


# --------------------------------------------------------------------------------------------- strategies


@dataclass
class CpuSafeMCMCStrategy(MCMCStrategy):
    """gsplat 1.5.3's ``MCMCStrategy``, usable on CPU tensors (same fields, same behaviour on CUDA).

    Every entry point that reaches the CUDA-only ops runs inside :func:`cpu_fallback_ops`.
    Note: ``cap_max`` bounds growth only; subsample the initial points with
    :func:`enforce_cap` first (upstream issue #516).
    """

    def step_post_backward(
        self,
        params: dict[str, torch.nn.Parameter] | torch.nn.ParameterDict,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        lr: float,
    ) -> None:
        with cpu_fallback_ops():
            super().step_post_backward(params, optimizers, state, step, info, lr)

    def _relocate_gs(self, params, optimizers, binoms: Tensor) -> int:
        with cpu_fallback_ops():
            return super()._relocate_gs(params, optimizers, binoms)

    growth_rate: float = 0.05
    """Each refinement adds this fraction of the current count (gsplat's fixed 5 %), up to ``cap_max``."""

    @torch.no_grad()
    def _add_new_gs(self, params, optimizers, binoms: Tensor) -> int:
        # Upstream's body with its hard-coded 1.05 as ``1 + growth_rate``: a short CPU run (a few thousand
        # steps) must grow from a capture's sparse points to its cap in a few dozen refinements.
        current = len(params["means"])
        added = max(0, min(self.cap_max, int((1.0 + self.growth_rate) * current)) - current)
        if added > 0:
            with cpu_fallback_ops():
                gsplat_ops.sample_add(params=params, optimizers=optimizers, state={}, n=added, binoms=binoms,
                                      min_opacity=self.min_opacity)
        return added


def opacity_reset_due(step: int, reset_every: int) -> bool:
    """Whether the opacity reset belongs to ``step``: what 1.5.3's ``step % reset_every == 0 & step > 0`` meant."""
    return step > 0 and step % reset_every == 0


@dataclass
class FixedDefaultStrategy(DefaultStrategy):
    """gsplat 1.5.3's ``DefaultStrategy`` with its opacity reset made to fire.

    Upstream (1.5.3, ``default.py``) ends ``step_post_backward`` with
    ``if step % self.reset_every == 0 & step > 0: reset_opa(...)``; ``&`` binds tighter
    than the comparisons, so this is ``step % reset_every == 0 > 0`` and never true. This
    subclass runs the upstream method and then, when ``step < refine_stop_iter`` (upstream
    returns early otherwise) and :func:`opacity_reset_due`, calls gsplat's own ``reset_opa``
    with the upstream value ``prune_opa * 2``: opacities are clamped to at most that value
    and their Adam moments zeroed. Nothing else differs. Should a later gsplat fire the reset
    itself, the second call is harmless (clamping and zeroing twice is idempotent).
    """

    def step_post_backward(
        self,
        params: dict[str, torch.nn.Parameter] | torch.nn.ParameterDict,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        packed: bool = False,
    ) -> None:
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if step < self.refine_stop_iter and opacity_reset_due(step, self.reset_every):
            gsplat_ops.reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)


# --------------------------------------------------------------------------------------------- cap


def enforce_cap(n_initial: int, cap_max: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of the initial points to keep so that MCMC starts with at most ``cap_max`` Gaussians.

    gsplat's MCMC never prunes, so an initial count above ``cap_max`` would stay above it for
    the whole run (upstream issue #516). Returns ``arange(n_initial)`` when the count is within
    the cap, else a uniformly random subset of ``cap_max`` indices, sorted (int64, CPU;
    reproducible with a seeded ``generator``). Use it to index every per-point array.
    """
    if n_initial < 0 or cap_max < 1:
        raise ValueError(f"need n_initial >= 0 and cap_max >= 1, got n_initial={n_initial}, cap_max={cap_max}")
    if n_initial <= cap_max:
        return torch.arange(n_initial)
    return torch.randperm(n_initial, generator=generator)[:cap_max].sort().values
