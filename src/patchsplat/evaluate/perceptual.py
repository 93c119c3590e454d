"""LPIPS, only where it can be computed offline; otherwise an honest "unavailable" and the reason.

The ``lpips`` package (Zhang et al. 2018) combines its own small linear heads (shipped inside the
package) with an ImageNet backbone from torchvision, whose weights torchvision downloads into the
torch hub cache on first use. Without the package, without torchvision, or without the cached
backbone weights, LPIPS is reported as unavailable: never a substitute number, and never a download
attempt (which would hang or fail on a machine without internet).

Backbone: AlexNet, gsplat's default (INRIA 3DGS and LichtFeld report VGG: numbers from different
backbones are not comparable, so the report names the one used).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

LPIPS_NET = "alex"

LpipsFunction = Callable[[Tensor, Tensor], Tensor]


def lpips_metric(enabled: bool) -> tuple[LpipsFunction | None, str]:
    """(function, status). The function maps two NCHW [B, 3, H, W] tensors in [0, 1] to LPIPS per image
    ``[B]`` (lower is better); it is None when LPIPS is disabled or cannot run here, and ``status``
    says which and why ("disabled: ...", "unavailable: ...", or "computed: ...")."""
    if not enabled:
        return None, "disabled: evaluate.lpips is false"
    try:
        import lpips  # noqa: F401 - availability probe
    except ImportError as error:
        return None, (
            f"unavailable: the lpips package cannot be imported ({error}); it also needs torchvision and "
            "backbone weights downloaded from the internet"
        )
    try:
        import torchvision
    except ImportError as error:
        return None, f"unavailable: torchvision cannot be imported ({error}); lpips needs its pretrained backbone"

    weights_file = _backbone_weights_file(torchvision)
    if weights_file is None:
        return None, "unavailable: cannot tell which AlexNet weights file this torchvision version uses"
    if not weights_file.is_file():
        return None, (
            f"unavailable: the AlexNet backbone weights are not in the torch hub cache ({weights_file}); "
            "downloading them needs the internet"
        )
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{LPIPS_NET}.pth"
    if not heads.is_file():
        return None, f"unavailable: the lpips linear heads are missing ({heads})"
    try:
        model = lpips.LPIPS(net=LPIPS_NET, version="0.1", pretrained=True, verbose=False).eval()
    except Exception as error:  # noqa: BLE001 - any failure to build the network means "unavailable"
        return None, f"unavailable: lpips failed to load ({type(error).__name__}: {error})"

    @torch.no_grad()
    def compute(prediction: Tensor, target: Tensor) -> Tensor:
        device = next(model.parameters()).device
        # normalize=True: lpips expects [-1, 1]; our images are [0, 1].
        return model(prediction.float().to(device), target.float().to(device), normalize=True).reshape(-1).cpu()

    return compute, f"computed: lpips v0.1, {LPIPS_NET} backbone (not comparable with VGG-based LPIPS)"


def _backbone_weights_file(torchvision) -> Path | None:
    """Where torchvision keeps the AlexNet ImageNet weights once downloaded (without downloading them)."""
    try:
        url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    except AttributeError:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
