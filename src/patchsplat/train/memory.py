"""Peak-memory estimate and the plan that fits a budget.

Out-of-memory at 16 GB came from holding everything on the device at once. Training
keeps images on the CPU (see :mod:`patchsplat.train.data`) and, before starting,
estimates its peak from the Gaussian cap and the image size; if that exceeds the budget
it lowers the resolution, then the cap, says what it chose, and later reports the
estimate next to the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# Floats per Gaussian: means 3, scales 3, quats 4, opacity 1, SH DC 3, plus 3 per higher-order coefficient.
_BASE_FLOATS = 14
# Each parameter float lives 4 times: the value, its gradient, Adam's two moments.
_OPTIMISER_COPIES = 4
# Per-Gaussian intermediates of projection and compositing kept for the backward pass
# (2D mean, conic, depth, radius, colour, their gradients...), measured on both backends.
_RASTER_BYTES_PER_GAUSSIAN = 400
# Per-pixel buffers: rendered colour/alpha/depth, target, loss maps (L1, SSIM's five
# filtered maps and their gradients) in fp32.
_BYTES_PER_PIXEL = 240
# The torch backend composites tiles in padded batches: pixels x Gaussians-per-tile x this.
_TORCH_BYTES_PER_PIXEL_GAUSSIAN = 16
_TORCH_GAUSSIANS_PER_TILE_BOUND = 256


@dataclass(frozen=True)
class MemoryPlan:
    resolution_factor: int
    cap_max: int
    estimate_bytes: int
    budget_bytes: int
    changed: list[str]

    def describe(self) -> str:
        what = "; ".join(self.changed) if self.changed else "settings fit as they are"
        return (f"memory plan: estimated peak {self.estimate_bytes / 2**30:.2f} GiB of {self.budget_bytes / 2**30:.2f} GiB "
                f"at resolution 1/{self.resolution_factor}, cap {self.cap_max} Gaussians ({what})")


def estimate_peak_bytes(num_gaussians: int, width: int, height: int, sh_degree: int, backend: str, batch: int = 1) -> int:
    floats = _BASE_FLOATS + 3 * ((sh_degree + 1) ** 2 - 1)
    per_gaussian = floats * 4 * _OPTIMISER_COPIES + _RASTER_BYTES_PER_GAUSSIAN
    pixels = width * height * batch
    total = num_gaussians * per_gaussian + pixels * _BYTES_PER_PIXEL
    if backend == "torch":
        total += pixels * _TORCH_GAUSSIANS_PER_TILE_BOUND * _TORCH_BYTES_PER_PIXEL_GAUSSIAN
    return int(total)


def plan_memory(
    budget_gb: float, cap_max: int, width: int, height: int, sh_degree: int, backend: str, resolution_factor: int = 1
) -> MemoryPlan:
    """The resolution factor (powers of two above the configured one) and cap that fit ``budget_gb``."""
    budget = int(budget_gb * 2**30)
    changed: list[str] = []
    factor, cap = resolution_factor, cap_max

    def estimate() -> int:
        return estimate_peak_bytes(cap, max(1, width // factor), max(1, height // factor), sh_degree, backend)

    # Below ~16 pixels a side an image says little; past that only the cap can give.
    while estimate() > budget and factor < 64 and min(width, height) // (factor * 2) >= 16:
        factor *= 2
    if factor != resolution_factor:
        changed.append(f"resolution lowered to 1/{factor}")
    while estimate() > budget and cap > 1_000:
        cap //= 2
    if cap != cap_max:
        changed.append(f"Gaussian cap lowered to {cap}")
    return MemoryPlan(factor, cap, estimate(), budget, changed)


def _process_peak_bytes() -> int:
    """This process's peak resident memory (VmHWM; Linux), 0 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak memory of the training itself: CUDA's allocator peak on a GPU, else resident memory above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = 0
        else:
            self.baseline = _process_peak_bytes()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(0, _process_peak_bytes() - self.baseline)
