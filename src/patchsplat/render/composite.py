"""Front-to-back alpha compositing of projected Gaussians over image tiles, in plain torch.

Contract: :func:`composite_tiles` takes per-(camera, Gaussian) rows (means2d [R, 2], conics [R, 3],
opacities [R], colors [R, D]; R = C * N) and the depth-sorted tile lists of :mod:`.tiles`, and returns
``(colors [n_tiles, P, D], transmittance [n_tiles, P])`` for every tile's P = tile_size^2 pixels (row
major inside the tile), without background. It is differentiable w.r.t. the four row tensors.

Semantics are those of gsplat's CUDA kernel (``csrc/RasterizeToPixels3DGSFwd.cu``), per pixel centre
p and Gaussian g in front-to-back order:

    sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy      with (dx, dy) = mean2d - p, conic (a, b, c)
    alpha = min(0.999, opacity * exp(-sigma));  skipped when alpha < 1/255
    stop (excluding g) once T * (1 - alpha) <= 1e-4;  else color += alpha * T * c_g;  T *= 1 - alpha

(the kernel's "sigma < 0" skip never fires for the conic of a blurred covariance, which is positive
definite, so it is not repeated here).

Two loops implement it: on a CPU the native one (:mod:`patchsplat.render.native`, C++: each tile's list in one
pass, tiles shared among torch's threads; a training step on the demo 1.5x faster, bench/RESULTS.md issue 15),
and this module's pure-torch one, the fallback wherever the native one cannot be built and on other devices.
tests/test_render.py holds both to the same dense reference. The rest of this docstring is about the torch one.

How, and why this way (each choice was measured on a 2-core CPU; see bench/render_cpu.py):

* log(alpha) = -sigma + log(opacity) is a quadratic in the pixel's offset (u, v) from its tile's
  centre. Each (tile, Gaussian) overlap gets its 6 coefficients over the features
  (u^2, v^2, uv, u, v, 1) once, with ordinary autograd ops; a block of overlaps then gets all its
  exponents from ONE matrix product [overlaps, 6] @ [6, P], instead of a dozen broadcast passes
  (slow in torch for small inner sizes). In float32 this costs a little precision (max alpha error
  ~3e-6 at tile size 8, ~1e-5 at 16, against ~2e-7 for the per-pixel formula); float64 is exact.
* The compositing itself is a custom autograd Function over (coefficients, colours) of the overlaps.
  Work is cut into chunks of at most ``chunk_elements`` (overlap x pixel) evaluations: step j handles
  slots [j k, (j + 1) k) of every tile whose list is that long, carrying each pixel's transmittance
  from step j - 1, and a tile whose pixels have all stopped drops out (early termination). Small
  chunks keep the working set in cache and let the allocator recycle memory: a pass over a freshly
  allocated multi-MB tensor costs ~20x a pass over a recycled, cached one.
* Masks are applied with ``threshold_`` (zero below a value) rather than boolean masks (~10x slower per
  element); exponents are clamped at -30 before exp() because subnormal results are ~10x slower too;
  transmittance is a running product (``cumprod``), like the kernel's.
* The backward pass walks the chunks in reverse and recomputes each chunk's alphas instead of storing
  them; the gradients of the 6 coefficients of a whole block come from one more matrix product.

Peak memory: what is proportional to the number of (tile, Gaussian) overlaps n_isects (their tile
lists, coefficients, colours, gradients and the autograd graph of the coefficients: measured ~0.4-0.5 KB
per overlap in float32, projection included), the per-tile outputs and carried state
(n_tiles * P * (D + 2)), the transmittance saved at each chunk's entry (about n_isects * P / k values),
plus ONE chunk's working set: 6 reused buffers of chunk_elements values and a few temporaries of that
size (~10 MB at the default 2^18 in float32), whatever the number of Gaussians or pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from patchsplat.render import native
from patchsplat.render.projection import ALPHA_THRESHOLD
from patchsplat.render.tiles import TileLists

# gsplat stops compositing a pixel once its transmittance would drop to this value or below.
TRANSMITTANCE_STOP = 1e-4
MAX_ALPHA = 0.999
DEFAULT_CHUNK_ELEMENTS = 1 << 18
# Slots per tile per step: at least MIN_SLOTS, and enough that the longest list takes at most
# MAX_STEPS steps (bounded Python overhead).
MIN_SLOTS = 16
MAX_STEPS = 24
# log(alpha) of padding slots, and the floor log(alpha) is clamped to before exp() (see above).
_NEVER = -1e30
_EXP_FLOOR = -30.0


def exponent_coefficients(means2d: Tensor, conics: Tensor, opacities: Tensor, centres: Tensor) -> Tensor:
    """Coefficients [M, 6] with log(alpha) = coef . (u^2, v^2, uv, u, v, 1) (before the clamp and threshold).

    means2d [M, 2], conics [M, 3] (a, b, c), opacities [M], centres [M, 2] (tile centres, pixels);
    (u, v) is a pixel centre's offset from the tile centre. Expanding
    -0.5 a (u - mu)^2 - b (u - mu)(v - mv) - 0.5 c (v - mv)^2 + log(opacity), (mu, mv) = mean - centre.
    """
    mu, mv = (means2d - centres).unbind(-1)
    a, b, c = conics.unbind(-1)
    const = torch.log(opacities) - 0.5 * (a * mu * mu + c * mv * mv) - b * mu * mv
    return torch.stack([-0.5 * a, -0.5 * c, -b, a * mu + b * mv, c * mv + b * mu, const], dim=-1)


def _largest_below(value: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` below ``value``: ``threshold_(x, it, 0)`` keeps exactly x >= value."""
    v = torch.tensor(value, dtype=dtype)
    return torch.nextafter(v, torch.zeros((), dtype=dtype)).item()


@dataclass
class _Chunk:
    """One unit of work: ``tiles`` (global tile indices) x slots [start, start + slots) of their lists."""

    tiles: Tensor        # [Tc] int64
    start: int
    t_in: Tensor         # [Tc, P] transmittance entering the chunk; 0 where the pixel has stopped


class _TilePlan:
    """Index bookkeeping and constants shared by the forward and backward passes (no autograd)."""

    def __init__(self, tiles: TileLists, may_clamp: Tensor, chunk_elements: int, dtype: torch.dtype,
                 absgrad_out: Tensor | None):
        ts = tiles.tile_size
        device = tiles.tile_counts.device
        self.n_pixels = ts * ts
        self.n_isects = tiles.flatten_ids.numel()
        self.flatten_ids = tiles.flatten_ids
        self.counts = tiles.tile_counts
        self.offsets = tiles.isect_offsets.reshape(-1)
        # Pixel features (u^2, v^2, uv, u, v, 1) [6, P] of a tile's pixels, row-major, u, v from the centre.
        offsets = torch.arange(ts, device=device, dtype=dtype) + 0.5 - 0.5 * ts
        self.pixel_u = offsets[None, :].expand(ts, ts).reshape(-1)
        self.pixel_v = offsets[:, None].expand(ts, ts).reshape(-1)
        u, v = self.pixel_u, self.pixel_v
        self.features = torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)])
        # Per overlap (+ a padding entry at the end): may this Gaussian reach the 0.999 alpha clamp?
        self.may_clamp = torch.cat([may_clamp, may_clamp.new_zeros(1)])
        self.max_count = int(self.counts.max().item()) if self.counts.numel() else 0
        self.slots = max(MIN_SLOTS, math.ceil(self.max_count / MAX_STEPS))
        self.tiles_per_chunk = max(1, chunk_elements // (self.slots * self.n_pixels))
        self.alpha_floor = _largest_below(ALPHA_THRESHOLD, dtype)
        self.absgrad_out = absgrad_out

    def slot_positions(self, tile_ids: Tensor, start: int) -> Tensor:
        """Overlap indices [Tc * k] of slots [start, start + k) of the tiles; n_isects (padding) past a list's end."""
        slot = torch.arange(start, start + self.slots, device=tile_ids.device)
        position = self.offsets[tile_ids, None] + slot[None, :]
        return torch.where(slot[None, :] < self.counts[tile_ids, None], position, self.n_isects).reshape(-1)


class _Workspace:
    """Reusable [Tc, k, P] buffers for one chunk at a time.

    Every chunk-sized result is written into one of these with ``out=`` or in place: a freshly allocated
    MB-sized tensor costs page faults on every pass (measured ~20x the cost of the arithmetic).
    """

    def __init__(self, plan: _TilePlan, dtype: torch.dtype, device: torch.device):
        self._size = plan.tiles_per_chunk * plan.slots * plan.n_pixels
        self._dtype, self._device = dtype, device
        self._buffers: dict[str, Tensor] = {}
        self.one = torch.ones((), dtype=dtype, device=device)

    def get(self, name: str, n_tiles: int, plan: _TilePlan) -> Tensor:
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = torch.empty(self._size, dtype=self._dtype, device=self._device)
        return buffer[: n_tiles * plan.slots * plan.n_pixels].view(n_tiles, plan.slots, plan.n_pixels)


def _chunk_forward(coefs: Tensor, t_in: Tensor, clamped: bool, plan: _TilePlan, work: _Workspace):
    """One chunk: coefs [Tc * k, 6] of its overlaps, t_in [Tc, P].

    Returns alpha, r = alpha / (1 - alpha) and the blending weights w (each [Tc, k, P], views of the
    workspace, valid until the next chunk) and the transmittance after the chunk [Tc, P] (0 where the
    pixel has stopped, else the running product).
    """
    n_tiles = t_in.shape[0]
    alpha = work.get("alpha", n_tiles, plan)
    torch.matmul(coefs, plan.features, out=alpha.view(-1, plan.n_pixels))
    alpha.clamp_min_(_EXP_FLOOR).exp_()
    if clamped:
        alpha.clamp_max_(MAX_ALPHA)
    F.threshold_(alpha, plan.alpha_floor, 0.0)                 # skip alpha < 1/255
    keep = torch.sub(work.one, alpha, out=work.get("keep", n_tiles, plan))
    transmittance = torch.cumprod(keep, dim=1, out=work.get("transmittance", n_tiles, plan))
    transmittance.mul_(t_in[:, None, :])
    # Zero from the first Gaussian that would take T to <= 1e-4 onwards (T only decreases along k).
    F.threshold_(transmittance, TRANSMITTANCE_STOP, 0.0)
    ratio = torch.div(alpha, keep, out=keep)
    # w_k = alpha_k T_before_k = alpha_k / (1 - alpha_k) * T_after_k, which is 0 once stopped.
    weights = torch.mul(ratio, transmittance, out=work.get("weights", n_tiles, plan))
    return alpha, ratio, weights, transmittance[:, -1, :]


class _CompositeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coefs: Tensor, colors: Tensor, plan: _TilePlan):
        """coefs [n_isects, 6], colors [n_isects, D] (in tile-list order) -> (colors [T, P, D], T [T, P])."""
        n_tiles, n_pixels = plan.counts.numel(), plan.n_pixels
        dtype, device = coefs.dtype, coefs.device
        coefs_p = torch.cat([coefs, coefs.new_tensor([[0.0] * 5 + [_NEVER]])])
        colors_p = torch.cat([colors, colors.new_zeros(1, colors.shape[1])])
        out_color = torch.zeros(n_tiles, n_pixels, colors.shape[1], dtype=dtype, device=device)
        transmittance = torch.ones(n_tiles, n_pixels, dtype=dtype, device=device)
        carry = torch.ones(n_tiles, n_pixels, dtype=dtype, device=device)   # 0 once a pixel stopped
        chunks: list[_Chunk] = []
        work = _Workspace(plan, dtype, device)

        # Longest lists first, so the tiles still active at step j are a prefix of this order.
        by_count = torch.argsort(plan.counts, descending=True)
        sorted_counts = plan.counts[by_count]
        for start in range(0, plan.max_count, plan.slots):
            active = by_count[: int((sorted_counts > start).sum().item())]
            active = active[(carry[active] > 0).any(dim=1)]          # early termination, whole tiles
            for first in range(0, active.numel(), plan.tiles_per_chunk):
                tile_ids = active[first:first + plan.tiles_per_chunk]
                chunk = _Chunk(tile_ids, start, carry[tile_ids])
                positions = plan.slot_positions(tile_ids, start)
                clamped = bool(plan.may_clamp[positions].any())
                chunk_coefs = coefs_p.index_select(0, positions)
                _, _, weights, t_last = _chunk_forward(chunk_coefs, chunk.t_in, clamped, plan, work)
                chunk_colors = colors_p.index_select(0, positions).view(tile_ids.numel(), plan.slots, -1)
                # sum_k w_k c_k as [Tc, D, k] @ [Tc, k, P]: the fast layout for torch's bmm here.
                out_color.index_add_(0, tile_ids, torch.bmm(chunk_colors.transpose(1, 2), weights).transpose(1, 2))
                # Stopped pixels keep T_in - sum(w) (= T_in * prod(1 - alpha): the sum telescopes);
                # the others the running product, which the next chunk's stop test continues.
                leaving = torch.where(t_last > 0, t_last, chunk.t_in - weights.sum(dim=1))
                still_open = chunk.t_in > 0
                transmittance.index_copy_(0, tile_ids, torch.where(still_open, leaving, transmittance[tile_ids]))
                carry.index_copy_(0, tile_ids, t_last)
                chunks.append(chunk)

        ctx.plan = plan
        ctx.chunks = chunks
        ctx.save_for_backward(coefs_p, colors_p)
        return out_color, transmittance

    @staticmethod
    def backward(ctx, grad_color: Tensor, grad_transmittance: Tensor):
        coefs_p, colors_p = ctx.saved_tensors
        plan: _TilePlan = ctx.plan
        grad_coefs = torch.zeros_like(coefs_p)
        grad_colors = torch.zeros_like(colors_p)
        absgrads = coefs_p.new_zeros(coefs_p.shape[0], 2) if plan.absgrad_out is not None else None
        # dL/d(transmittance leaving the chunk being processed), per tile and pixel.
        grad_t = grad_transmittance.clone()
        grad_color_t = grad_color.transpose(1, 2).contiguous()          # [T, D, P]
        work = _Workspace(plan, coefs_p.dtype, coefs_p.device)
        for chunk in reversed(ctx.chunks):
            tile_ids = chunk.tiles
            positions = plan.slot_positions(tile_ids, chunk.start)
            clamped = bool(plan.may_clamp[positions].any())
            chunk_coefs = coefs_p.index_select(0, positions)
            alpha, ratio, weights, _ = _chunk_forward(chunk_coefs, chunk.t_in, clamped, plan, work)
            n_tiles = tile_ids.numel()
            g_color_t = grad_color_t[tile_ids]                          # [Tc, D, P]
            g_t_out = grad_t[tile_ids]                                  # [Tc, P]
            chunk_colors = colors_p.index_select(0, positions).view(n_tiles, plan.slots, -1)

            # dL/dc_k = sum over pixels of w_k dL/dcolor
            g_chunk_colors = torch.bmm(g_color_t, weights.transpose(1, 2)).transpose(1, 2)   # [Tc, k, D]
            grad_colors.index_copy_(0, positions, g_chunk_colors.reshape(positions.numel(), -1))
            # dL/dw_k = c_k . dL/dcolor - dL/dT_out   (T_out = T_in - sum_k w_k)
            contrib = torch.baddbmm(-g_t_out[:, None, :], chunk_colors, g_color_t,
                                    out=work.get("contrib", n_tiles, plan)).mul_(weights)
            total = contrib.sum(dim=1)                                  # [Tc, P]
            after = torch.cumsum(contrib, dim=1, out=work.get("after", n_tiles, plan))
            after.neg_().add_(total[:, None, :])                        # sum over later slots
            # dL/dlog(alpha_k) = alpha_k dL/dalpha_k = w_k dL/dw_k - alpha_k / (1 - alpha_k) * after_k
            # (0 for skipped and stopped slots: their w, ratio and "after" are all 0).
            g_log_alpha = contrib.sub_(after.mul_(ratio))
            if clamped:
                g_log_alpha.masked_fill_(alpha >= MAX_ALPHA, 0.0)
            g_log_alpha = g_log_alpha.view(-1, plan.n_pixels)
            grad_coefs.index_copy_(0, positions, torch.matmul(g_log_alpha, plan.features.T))
            if absgrads is not None:
                absgrads.index_copy_(0, positions, _abs_mean_grads(g_log_alpha, chunk_coefs, plan))
            # dL/dT_in: T_out = T_in - sum(w) directly, and every w is proportional to T_in.
            safe_t_in = chunk.t_in.clamp_min(torch.finfo(coefs_p.dtype).tiny)
            grad_t.index_copy_(0, tile_ids, g_t_out + total / safe_t_in)
        if absgrads is not None:
            plan.absgrad_out.index_add_(0, plan.flatten_ids, absgrads[:-1].to(plan.absgrad_out.dtype))
        return grad_coefs[:-1], grad_colors[:-1], None


def _abs_mean_grads(g_log_alpha: Tensor, coefs: Tensor, plan: _TilePlan) -> Tensor:
    """AbsGS (gsplat's ``absgrad``): sum over pixels of |dL/dmean2d| at each pixel, per overlap [M, 2].

    d log(alpha) / d mean_x at pixel (u, v) is lin_u - a u - b v = coef_u + 2 coef_uu u + coef_uv v.
    """
    u, v = plan.pixel_u, plan.pixel_v
    per_x = coefs[:, 3, None] + 2.0 * coefs[:, 0, None] * u + coefs[:, 2, None] * v
    per_y = coefs[:, 4, None] + 2.0 * coefs[:, 1, None] * v + coefs[:, 2, None] * u
    return torch.stack([(g_log_alpha * per_x).abs().sum(-1), (g_log_alpha * per_y).abs().sum(-1)], dim=-1)


def composite_tiles(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    tiles: TileLists,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    absgrad_out: Tensor | None = None,
    kernels: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Composite rows (see the module docstring) -> (colors [n_tiles, P, D], transmittance [n_tiles, P]).

    ``absgrad_out`` [R, 2], when given, receives the sum over pixels of |dL/dmean2d| during backward.
    ``kernels``: ``auto`` (the native C++ loop on a CPU when it could be built, see
    :mod:`patchsplat.render.native`; else the torch chunks below), ``native`` or ``torch`` (``chunk_elements``
    applies to the torch one only).
    """
    native_module = native.select(kernels, means2d, conics, opacities, colors)
    if native_module is not None:
        out_color, transmittance, _ = _NativeCompositeFunction.apply(means2d, conics, opacities, colors, tiles,
                                                                      native_module, absgrad_out)
        return out_color, transmittance
    ids = tiles.flatten_ids
    ts = tiles.tile_size
    tile_in_camera = tiles.tile_keys % (tiles.tile_width * tiles.tile_height)
    centres = torch.stack([tile_in_camera % tiles.tile_width, tile_in_camera // tiles.tile_width], dim=-1)
    centres = centres.to(means2d.dtype) * ts + 0.5 * ts
    # index_select, not [ids]: the same values, but its backward is a plain index_add_ where advanced indexing's
    # is an accumulating index_put_, which torch's deterministic mode sorts first (~1.6x the time, measured).
    isect_opacities = opacities.index_select(0, ids)
    coefs = exponent_coefficients(means2d.index_select(0, ids), conics.index_select(0, ids), isect_opacities, centres)
    may_clamp = isect_opacities.detach() > 0.99 * MAX_ALPHA
    plan = _TilePlan(tiles, may_clamp, chunk_elements, means2d.dtype, absgrad_out)
    return _CompositeFunction.apply(coefs, colors.index_select(0, ids), plan)


class _NativeCompositeFunction(torch.autograd.Function):
    """The same compositing as :class:`_CompositeFunction`, one C++ loop per tile (render/native/composite.cpp).

    It takes the rows themselves: each overlap's coefficients are computed in the loop from its row, and each
    row's gradients summed over its overlaps in C++ (in the tile lists' row-grouped order), so the per-overlap
    copies of the rows, :func:`exponent_coefficients` and their scatter-adds backward, about a tenth of a
    training step and all on one core, are not needed (bench/RESULTS.md, issue 15)."""

    @staticmethod
    def forward(ctx, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, tiles: TileLists, module,
                absgrad_out: Tensor | None):
        rows = [t.contiguous() for t in (means2d, conics, opacities, colors)]
        lists = (tiles.flatten_ids, tiles.isect_offsets.reshape(-1).contiguous(), tiles.tile_counts.contiguous(),
                 tiles.tile_size, tiles.tile_width, tiles.tile_height)
        out_color, transmittance, last = module.composite_forward(*rows, *lists)
        ctx.save_for_backward(*rows, transmittance, last)
        ctx.mark_non_differentiable(last)
        ctx.module, ctx.lists, ctx.tiles, ctx.absgrad_out = module, lists, tiles, absgrad_out
        return out_color, transmittance, last

    @staticmethod
    def backward(ctx, grad_color: Tensor, grad_transmittance: Tensor, _grad_last):
        *rows, transmittance, last = ctx.saved_tensors
        tiles = ctx.tiles
        g_means2d, g_conics, g_opacities, g_colors, absgrads = ctx.module.composite_backward(
            *rows, *ctx.lists, transmittance, last, grad_color, grad_transmittance, ctx.absgrad_out is not None,
            tiles.grouped_position, tiles.group_rows, tiles.group_starts)
        if ctx.absgrad_out is not None:
            ctx.absgrad_out.add_(absgrads.to(ctx.absgrad_out.dtype))
        return g_means2d, g_conics, g_opacities, g_colors, None, None, None
