"""Image metrics (PSNR, SSIM, L1, colour-corrected PSNR) that refuse inputs they would silently get wrong.

Why this module exists: a "PSNR" of 8 dB came out of a tensor-layout mix-up. Metric code
happily averages over whatever axes it is given, so an NHWC image fed to an NCHW metric,
or a 0-255 image compared with a 0-1 one, yields a plausible-looking wrong number. Every
function here therefore goes through :func:`check_images` first, which raises a
``ValueError`` naming the argument, the shape (or range, or dtype) seen, what was expected
and how to fix it.

Contract shared by all metrics:

* ``prediction`` and ``target`` are float tensors of the same shape ``[B, C, H, W]``
  (NCHW) with ``C`` in {1, 3}, finite, with values in [0, 1] (a tolerance of
  :data:`RANGE_TOLERANCE` absorbs rounding). No broadcasting.
* The result is one value per image, shape ``[B]``.
* Arithmetic is done in float32 (float64 if an input is float64) with autocast disabled,
  so a bf16/fp16 autocast region around the training loss does not degrade the loss:
  the inputs are ``.float()``-ed and the convolutions run in fp32.
* Rendered predictions can legitimately leave [0, 1] during training (gsplat's SH colours
  are clamped at 0 only), so ``check_prediction_range=False`` skips the range check of the
  prediction (never of the target, which is data). Evaluation keeps the default (strict),
  and should clamp renders to [0, 1] first, as gsplat's evaluation does.

:func:`colour_corrected` is the exception to "one value per image": it returns the prediction after
a per-image affine colour map fitted to the target (same shape); :func:`colour_corrected_psnr` is the
PSNR of that, one value per image. Both are for evaluation and not differentiable.

SSIM is the standard definition of Wang et al. (2004): Gaussian window of size 11 and
sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population (not sample) statistics,
averaged over the "valid" region (pixels whose whole window lies inside the image). This
is what gsplat's training (``fused_ssim(..., padding="valid")``) and
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` compute; skimage filters with reflection and
then crops the 5-pixel border, which leaves exactly the valid region.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Values up to this far outside [0, 1] are accepted (float rounding of resampled or
# composited images); anything further is a units mistake.
RANGE_TOLERANCE = 1e-3
SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# The stabilising constants (K * data range)^2, the data range being 1.
SSIM_C1 = (SSIM_K1 * 1.0) ** 2
SSIM_C2 = (SSIM_K2 * 1.0) ** 2
VALID_CHANNELS = (1, 3)


def _describe(x: Tensor) -> str:
    return f"shape {tuple(x.shape)}"


def _check_layout(x: object, name: str) -> Tensor:
    """Reject anything that is not a 4-D NCHW float tensor with 1 or 3 channels."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, C, H, W] (NCHW), got {type(x).__name__}")
    if x.dtype == torch.bool or not (x.is_floating_point()):
        raise ValueError(
            f"{name} has integer/bool dtype {x.dtype} ({_describe(x)}); metrics expect a float image in [0, 1]: "
            "use x.float() / 255 for 8-bit images"
        )
    if x.dim() == 3:
        if x.shape[-1] in VALID_CHANNELS and x.shape[0] not in VALID_CHANNELS:
            raise ValueError(
                f"{name} has {_describe(x)}, which looks like NHWC/HWC (channels last); "
                "expected [B, C, H, W] with C in {1, 3}: permute to NCHW, e.g. x.permute(2, 0, 1).unsqueeze(0)"
            )
        raise ValueError(
            f"{name} has {_describe(x)} (3-D); expected 4-D [B, C, H, W] with C in {{1, 3}}: "
            "add the batch dimension with x.unsqueeze(0)"
        )
    if x.dim() != 4:
        raise ValueError(f"{name} has {_describe(x)} ({x.dim()}-D); expected 4-D [B, C, H, W] (NCHW) with C in {{1, 3}}")
    if x.shape[1] not in VALID_CHANNELS:
        if x.shape[-1] in VALID_CHANNELS:
            raise ValueError(
                f"{name} has {_describe(x)}, which looks like NHWC/HWC (channels last); "
                "expected [B, C, H, W] with C in {1, 3}: permute to NCHW, e.g. x.permute(0, 3, 1, 2)"
            )
        raise ValueError(f"{name} has {_describe(x)}; expected [B, C, H, W] (NCHW) with C in {{1, 3}}, got C={x.shape[1]}")
    if x.numel() == 0:
        raise ValueError(f"{name} has {_describe(x)}, which is empty; expected [B, C, H, W] with B, H, W > 0")
    return x


@torch.no_grad()
def _check_values(x: Tensor, name: str, check_range: bool) -> None:
    """Reject non-finite values and (optionally) values outside [0, 1].

    One reduction over ``x`` when it is good (the training loss checks every step): its minimum and maximum, or
    without the range check its sum, are finite exactly when every value is (barring a sum's overflow, which the
    exact count below then clears); the count of bad values is only made for the message."""
    if check_range:
        low, high = (float(value) for value in torch.aminmax(x))
        suspect = not (math.isfinite(low) and math.isfinite(high))
    else:
        suspect = not math.isfinite(float(x.sum()))
    if suspect and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} ({_describe(x)}) has {n_bad} non-finite value(s) (NaN/Inf); expected finite values in [0, 1]")
    if not check_range:
        return
    if high > 1.0 + RANGE_TOLERANCE:
        hint = "looks like 0-255; divide by 255" if high <= 255.0 + RANGE_TOLERANCE else "values are not an image in [0, 1]"
        raise ValueError(f"{name} ({_describe(x)}) has values in [{low:.4g}, {high:.4g}]; expected [0, 1]: {hint}")
    if low < -RANGE_TOLERANCE:
        hint = (
            "looks like [-1, 1]; map it with (x + 1) / 2"
            if low >= -1.0 - RANGE_TOLERANCE
            else "values are not an image in [0, 1]"
        )
        raise ValueError(f"{name} ({_describe(x)}) has values in [{low:.4g}, {high:.4g}]; expected [0, 1]: {hint}")


def check_images(
    prediction: Tensor,
    target: Tensor,
    name: str = "image metric",
    check_prediction_range: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``prediction`` and ``target`` are a valid NCHW image pair.

    Rejected (each with a message naming the argument, what was seen and what was expected):
    non-tensors; integer/bool dtypes; anything not 4-D ``[B, C, H, W]`` with C in {1, 3}
    (channels-last inputs get "looks like NHWC/HWC; permute to NCHW"); empty tensors;
    shapes that differ; NaN/Inf; values outside [0, 1] by more than :data:`RANGE_TOLERANCE`
    ("looks like 0-255; divide by 255" / "looks like [-1, 1]"). ``check_prediction_range=False``
    skips only the range check of ``prediction`` (for training losses on unclamped renders).
    ``name`` is the caller (e.g. "psnr") and prefixes every message.
    """
    pred_name, target_name = f"{name}: prediction", f"{name}: target"
    _check_layout(prediction, pred_name)
    _check_layout(target, target_name)
    if prediction.shape != target.shape:
        raise ValueError(
            f"{name}: prediction has shape {tuple(prediction.shape)} but target has shape {tuple(target.shape)}; "
            "expected identical [B, C, H, W] shapes (no broadcasting)"
        )
    if prediction.device != target.device:
        raise ValueError(f"{name}: prediction is on {prediction.device} but target is on {target.device}")
    _check_values(prediction, pred_name, check_prediction_range)
    _check_values(target, target_name, True)


def _working_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (never half precision)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def l1(prediction: Tensor, target: Tensor, check_prediction_range: bool = True) -> Tensor:
    """Mean absolute error per image: ``[B, C, H, W] x 2 -> [B]`` (differentiable)."""
    check_images(prediction, target, name="l1", check_prediction_range=check_prediction_range)
    dtype = _working_dtype(prediction, target)
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        return (prediction.to(dtype) - target.to(dtype)).abs().mean(dim=(1, 2, 3))


def mse(prediction: Tensor, target: Tensor, check_prediction_range: bool = True) -> Tensor:
    """Mean squared error per image: ``[B, C, H, W] x 2 -> [B]`` (differentiable)."""
    check_images(prediction, target, name="mse", check_prediction_range=check_prediction_range)
    return _mse(prediction, target)


def _mse(prediction: Tensor, target: Tensor) -> Tensor:
    dtype = _working_dtype(prediction, target)
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        return (prediction.to(dtype) - target.to(dtype)).square().mean(dim=(1, 2, 3))


def psnr(prediction: Tensor, target: Tensor, check_prediction_range: bool = True) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, data range 1: ``10 * log10(1 / MSE)`` -> ``[B]``.

    The MSE is taken over all channels and pixels of each image (the convention of gsplat,
    INRIA 3DGS and torchmetrics with ``dim=(1, 2, 3)``). Identical images give ``+inf``
    (no cap): an infinite PSNR is the honest answer and averaging callers should notice it.
    """
    check_images(prediction, target, name="psnr", check_prediction_range=check_prediction_range)
    return -10.0 * torch.log10(_mse(prediction, target))


@torch.no_grad()
def colour_corrected(prediction: Tensor, target: Tensor, check_prediction_range: bool = True) -> Tensor:
    """``prediction`` after the affine colour map that best fits it to ``target``, per image: ``[B, C, H, W]``.

    What is fitted: for each image of the batch, the ``(C + 1) x C`` matrix ``A`` (4 x 3 for RGB: a
    3 x 3 colour matrix and an offset) minimising ``|| [p, 1] A - t ||^2`` over all pixels, where the
    rows ``p`` are the prediction's pixels (N x C) and ``t`` the target's (N x C): ordinary least
    squares of the target on the prediction (:func:`torch.linalg.lstsq`). The result is ``[p, 1] A``
    clamped to [0, 1].

    Why from prediction to target and not the reverse: the colour-corrected PSNR is the PSNR of the
    mapped prediction against the untouched target, so the map that minimises exactly that MSE is the
    least-squares fit of the target on the prediction. Fitting the reverse (prediction on target, as
    gsplat's ``color_correct_affine`` does per channel) and inverting the map minimises the error in
    the prediction's colours instead; with any noise it over-stretches the contrast (regression
    dilution) and scores worse than the forward fit. With the forward fit the identity map is one of
    the candidates, so the MSE can only go down; clamping to [0, 1] moves pixels towards the target's
    range and cannot raise it either. Should float rounding, or clamping where the target is a rounding
    step outside [0, 1] (within :data:`RANGE_TOLERANCE`), leave the fitted image with a larger MSE than
    the prediction itself, the prediction is returned unchanged: a colour-corrected PSNR is never below
    the plain one and an exact match stays an exact match.

    Why at all: real captures vary in exposure and white balance from photo to photo, which a splat
    model (one colour per direction) cannot reproduce; the gap between this PSNR and the plain one is
    the part of the error that is only a global colour change of the view. Such a figure is reported
    for large captures (VastGaussian, as cited in issue 14) and by gsplat's examples (``cc_psnr``); gsplat's
    ``gsplat/color_correct.py`` offers a quadratic fit (after multinerf) and the per-channel reverse
    affine fit above, this is the full affine (cross-channel) forward fit. No such map can remove
    noise, blur or misplaced structure.

    Evaluation only: not differentiable. The fit runs on the CPU in float64 with the SVD driver
    (``gelsd``), which also handles a rank-deficient design (a flat or grey render); the result comes
    back on the prediction's device in float32 (float64 if an input is float64).
    """
    check_images(prediction, target, name="colour_corrected", check_prediction_range=check_prediction_range)
    return _colour_corrected(prediction, target)


def _colour_corrected(prediction: Tensor, target: Tensor) -> Tensor:
    batch, channels, height, width = prediction.shape
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        # [B, C, H, W] -> [B, N, C]: one row per pixel.
        x = prediction.detach().to("cpu", torch.float64).reshape(batch, channels, -1).transpose(1, 2)
        y = target.detach().to("cpu", torch.float64).reshape(batch, channels, -1).transpose(1, 2)
        design = torch.cat([x, torch.ones_like(x[..., :1])], dim=2)                  # [B, N, C + 1]
        maps = torch.linalg.lstsq(design, y, driver="gelsd").solution               # [B, C + 1, C]
        fitted = (design @ maps).clamp(0.0, 1.0)
        improved = (fitted - y).square().mean(dim=(1, 2)) < (x - y).square().mean(dim=(1, 2))
        corrected = torch.where(improved[:, None, None], fitted, x)
        corrected = corrected.transpose(1, 2).reshape(batch, channels, height, width)
        return corrected.to(prediction.device, _working_dtype(prediction, target))


def colour_corrected_psnr(prediction: Tensor, target: Tensor, check_prediction_range: bool = True) -> Tensor:
    """PSNR in dB per image after the per-image affine colour map of :func:`colour_corrected` -> ``[B]``.

    The plain :func:`psnr` of ``colour_corrected(prediction, target)`` against ``target``: how good the
    prediction is once a global exposure / white-balance difference is forgiven. It is at least the
    plain PSNR (up to float rounding of the final MSE); ``+inf`` for an exact match, like :func:`psnr`.
    Not differentiable (evaluation only).
    """
    check_images(prediction, target, name="colour_corrected_psnr", check_prediction_range=check_prediction_range)
    return -10.0 * torch.log10(_mse(_colour_corrected(prediction, target), target))


def gaussian_window(
    size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """Normalised 1-D Gaussian window of ``size`` taps centred on the middle tap: ``[size]``."""
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    weights = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return (weights / weights.sum()).to(dtype)


def _filter_valid(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filter of every channel, keeping only the valid region: ``[B,C,H,W] -> [B,C,H-10,W-10]``."""
    channels = x.shape[1]
    size = window.numel()
    horizontal = window.reshape(1, 1, 1, size).expand(channels, 1, 1, size)
    vertical = window.reshape(1, 1, size, 1).expand(channels, 1, size, 1)
    x = F.conv2d(x, horizontal, groups=channels)
    return F.conv2d(x, vertical, groups=channels)


def ssim_map(prediction: Tensor, target: Tensor) -> Tensor:
    """The SSIM map on the valid region, no checks: ``[B, C, H, W] -> [B, C, H-10, W-10]``.

    Inputs are assumed checked (see :func:`ssim`); computed in float32/float64 with
    autocast disabled.
    """
    dtype = _working_dtype(prediction, target)
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        x = prediction.to(dtype)
        y = target.to(dtype)
        window = gaussian_window(dtype=dtype, device=x.device)
        c1, c2 = SSIM_C1, SSIM_C2
        # The five filtered maps in one grouped convolution: five small ones each ran on one core (issue 15).
        mu_x, mu_y, mean_xx, mean_yy, mean_xy = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1),
                                                               window).chunk(5, dim=1)
        # Population (biased) second moments: E[x^2] - E[x]^2, as Wang et al. and gsplat.
        var_x = mean_xx - mu_x * mu_x
        var_y = mean_yy - mu_y * mu_y
        cov_xy = mean_xy - mu_x * mu_y
        numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
        denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        return numerator / denominator


def _check_window(prediction: Tensor, name: str) -> None:
    """SSIM needs every image to hold at least one whole window."""
    height, width = prediction.shape[-2:]
    if height < SSIM_WINDOW_SIZE or width < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"{name}: images of shape {tuple(prediction.shape)} are smaller than the {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE} "
            "window; expected H and W >= 11"
        )


def l1_and_ssim(prediction: Tensor, target: Tensor, check_prediction_range: bool = True,
                kernels: str = "auto") -> tuple[Tensor, Tensor]:
    """``(l1(prediction, target), ssim(prediction, target))``, each ``[B]``, in one pass: the training loss's terms.

    ``kernels``: ``auto`` (on a CPU, the native C++ pass of :mod:`patchsplat.render.native` where it built, the
    gradient w.r.t. ``prediction`` only), ``native`` or ``torch`` (:func:`l1` and :func:`ssim` themselves). The two
    agree to rounding (tests/test_metrics.py); the native one is what made the loss phase of a CPU training step
    several times cheaper (bench/RESULTS.md, issue 15)."""
    from patchsplat.render import native

    check_images(prediction, target, name="l1_and_ssim", check_prediction_range=check_prediction_range)
    _check_window(prediction, "l1_and_ssim")
    dtype = _working_dtype(prediction, target)
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        x, y = prediction.to(dtype), target.to(dtype)
        module = native.select(kernels, x, y, fixed=(y,))
        if module is None:
            return l1(x, y, check_prediction_range=False), ssim_map(x, y).mean(dim=(1, 2, 3))
        return _NativeImageLoss.apply(x.contiguous(), y.contiguous(), module)


class _NativeImageLoss(torch.autograd.Function):
    """L1 and SSIM per image in one C++ pass (render/native/image_loss.cpp), the gradient w.r.t. the prediction."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, module):
        window = gaussian_window(dtype=x.dtype)
        c1, c2 = SSIM_C1, SSIM_C2
        l1_values, ssim_values, maps = module.image_loss_forward(x, y, window, c1, c2)
        ctx.save_for_backward(x, y, window, maps)
        ctx.module, ctx.constants = module, (c1, c2)
        return l1_values, ssim_values

    @staticmethod
    def backward(ctx, grad_l1: Tensor, grad_ssim: Tensor):
        x, y, window, maps = ctx.saved_tensors
        zeros = torch.zeros(x.shape[0], dtype=x.dtype)
        grad = ctx.module.image_loss_backward(x, y, window, *ctx.constants, maps,
                                              zeros if grad_l1 is None else grad_l1,
                                              zeros if grad_ssim is None else grad_ssim)
        return grad, None, None


def ssim(prediction: Tensor, target: Tensor, check_prediction_range: bool = True) -> Tensor:
    """Structural similarity per image (Wang et al. 2004, Gaussian 11 / 1.5, data range 1) -> ``[B]``.

    Differentiable (training uses ``1 - ssim(...).mean()``). The mean is over channels and
    the valid region, so images must be at least 11 x 11 pixels. Identical images give 1.
    """
    check_images(prediction, target, name="ssim", check_prediction_range=check_prediction_range)
    _check_window(prediction, "ssim")
    return ssim_map(prediction, target).mean(dim=(1, 2, 3))

