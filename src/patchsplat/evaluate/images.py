"""Image metrics of the merged splats on the held-out views.

Contract:

* :func:`hwc_to_nchw` is the one place an image changes layout: (H, W, 3) array -> [1, 3, H, W] tensor.
* :func:`view_metrics` takes NCHW tensors in [0, 1] and goes through :mod:`patchsplat.metrics` in
  strict mode (renders are clamped to [0, 1] before, as gsplat's evaluation does), so an HWC array,
  a 0-255 image or a shape mismatch raises ``ValueError`` instead of producing a plausible number.
* :func:`evaluate_views` renders every given camera at ``resolution_factor`` (each side divided by it,
  as training does) and scores it against its photo downscaled the same way (box filter, as training).
* :func:`mean_of` averages per-view values and refuses to average an infinite PSNR into a number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from patchsplat.metrics import check_images, colour_corrected_psnr, l1, psnr, ssim
from patchsplat.prepare import CanonicalFrame
from patchsplat.scene_views import Camera, load_image, render_world


def hwc_to_nchw(image: np.ndarray) -> Tensor:
    """(H, W, 3) float image in [0, 1] -> float32 tensor [1, 3, H, W]. ValueError for any other shape."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)


def view_metrics(render: Tensor, truth: Tensor, lpips: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict:
    """PSNR (dB, ``10 log10(1 / MSE)`` over all pixels and channels), colour-corrected PSNR, SSIM, L1 and
    LPIPS of ONE view.

    ``render`` and ``truth`` are NCHW float tensors ``[1, 3, H, W]`` with values in [0, 1], checked
    strictly (:func:`patchsplat.metrics.check_images`). Returns floats; ``psnr`` is ``inf`` for an exact
    match; ``psnr_colour_corrected`` is the PSNR after the affine colour map fitted from this render to
    this photo (:func:`patchsplat.metrics.colour_corrected`), at least ``psnr`` and ``inf`` for an exact
    match too; ``lpips`` is None when no LPIPS function is given.
    """
    check_images(render, truth, name="evaluation")
    if render.shape[0] != 1:
        raise ValueError(f"evaluation: one view at a time, got a batch of {render.shape[0]} ({tuple(render.shape)})")
    return {
        "psnr": float(psnr(render, truth)[0]),
        "psnr_colour_corrected": float(colour_corrected_psnr(render, truth)[0]),
        "ssim": float(ssim(render, truth)[0]),
        "l1": float(l1(render, truth)[0]),
        "lpips": float(lpips(render, truth)[0]) if lpips is not None else None,
    }


def mean_of(values: Iterable[float | None], name: str) -> tuple[float | None, str | None]:
    """(mean, note): the mean of ``values``, or None and a note saying why there is none.

    An infinite value (a PSNR of an exact match) makes the mean infinite, which JSON cannot hold and
    which would hide the other views: the mean is then None and the note counts the exact matches.
    """
    values = list(values)
    if not values or any(v is None for v in values):
        return None, f"{name}: not available for every view"
    infinite = sum(1 for v in values if math.isinf(v))
    if infinite:
        return None, f"{name}: {infinite} of {len(values)} views match exactly (infinite); no finite mean"
    return float(np.mean(values)), None


@dataclass
class ViewResult:
    """The scores of one held-out view; ``truth``/``render`` (H, W, 3) are kept only for grid views."""

    name: str
    patch: str | None
    metrics: dict
    coverage: float              # mean accumulated opacity of the render (1 = no see-through pixels)
    width: int                   # the evaluated size (the camera's divided by the resolution factor)
    height: int
    seconds: float
    truth: np.ndarray | None = field(default=None, repr=False)
    render: np.ndarray | None = field(default=None, repr=False)


def evaluate_views(
    splats: dict[str, Tensor],
    cameras: list[Camera],
    frame: CanonicalFrame,
    patch_of: dict[str, str | None],
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
    keep_images: set[str] = frozenset(),
    backend: str = "auto",
    device: torch.device | None = None,
    advance: Callable[[], None] | None = None,
    resolution_factor: int = 1,
) -> list[ViewResult]:
    """Render world-frame ``splats`` at each camera, downscaled by ``resolution_factor``, and score it against
    its photo downscaled to the same size (box filter, as :func:`patchsplat.train.data.load_image_file`).

    ``patch_of`` maps view names to patch ids (missing -> None); images of the views named in
    ``keep_images`` are kept on the result for the comparison grid. ``advance`` is called after each view.
    """
    results = []
    for camera in cameras:
        start = time.perf_counter()
        render, _, alpha = render_world(splats, camera, frame, resolution_factor=resolution_factor, backend=backend,
                                        device=device)
        height, width = render.shape[:2]
        truth = load_image(camera, width, height)
        # render_world clamps to [0, 1] already; clip again so float noise cannot trip the strict check.
        render = np.clip(render, 0.0, 1.0).astype(np.float32)
        metrics = view_metrics(hwc_to_nchw(render), hwc_to_nchw(truth), lpips)
        keep = camera.name in keep_images
        results.append(ViewResult(
            camera.name, patch_of.get(camera.name), metrics, float(alpha.mean()), width, height,
            time.perf_counter() - start, truth if keep else None, render if keep else None,
        ))
        if advance is not None:
            advance()
    return results
