"""The training health monitor: notices what used to go unnoticed, and names it.

Every step (cheap): the loss and each parameter group's gradient must be finite; a
finite loss with NaN gradients (mixed precision) is caught here. Every
``check_every`` steps: gradient norms per group, the Gaussian count and its trend,
the fraction of near-transparent Gaussians, scale statistics and peak memory — all
returned as metrics to log, and checked against the thresholds of
:class:`patchsplat.config.HealthConfig`.

A detected failure is raised as :class:`TrainingFailure`, whose ``kind`` picks the
recovery ladder (see :mod:`patchsplat.train.loop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from patchsplat.config import HealthConfig

# Failure kinds, each with its own recovery ladder in RecoveryConfig.
SCALE = "scale"                  # vanishing scales, or the rasterizer failing (the motivating crash)
NONFINITE = "nonfinite"          # NaN/Inf loss or gradients, exploding scales or gradients
COLLAPSE = "collapse"            # the Gaussians die out
OUT_OF_MEMORY = "out_of_memory"


class TrainingFailure(Exception):
    """A failure the monitor detected: ``kind`` selects the recovery ladder, ``reason`` says what was seen."""

    def __init__(self, kind: str, reason: str, step: int) -> None:
        self.kind = kind
        self.reason = reason
        self.step = step
        super().__init__(f"step {step}: {reason}")


def check_step(loss: torch.Tensor, params: dict[str, torch.nn.Parameter], step: int) -> None:
    """The every-step check: finite loss and finite gradients in every parameter group."""
    if not torch.isfinite(loss):
        raise TrainingFailure(NONFINITE, f"the loss is {loss.item()}", step)
    for name, parameter in params.items():
        # The sum is finite when every value is (barring overflow, which the exact test below then clears):
        # one reduction instead of a boolean tensor per group on every step.
        if parameter.grad is not None and not torch.isfinite(parameter.grad.sum()) and not torch.isfinite(parameter.grad).all():
            bad = int((~torch.isfinite(parameter.grad)).sum())
            raise TrainingFailure(
                NONFINITE, f"{bad} non-finite gradient values in '{name}' while the loss is finite ({loss.item():.4g})", step
            )


def transparent_fraction(opacity_logits: torch.Tensor, below: float) -> float:
    """The fraction of Gaussians whose opacity is under ``below`` (1.0 when there are none: nothing is drawn)."""
    with torch.no_grad():
        return float((torch.sigmoid(opacity_logits) < below).float().mean()) if opacity_logits.numel() else 1.0


@dataclass
class HealthMonitor:
    """The periodic checks. ``spacing`` is the initial points' median NN spacing (canonical units)."""

    config: HealthConfig
    spacing: float
    peak_count: int = 0
    history: list[dict] = field(default_factory=list)

    def periodic(self, params: dict[str, torch.nn.Parameter], step: int, peak_memory_bytes: int) -> dict[str, float]:
        """Metrics of the state after ``step``'s backward; raises :class:`TrainingFailure` when unhealthy."""
        with torch.no_grad():
            count = int(params["means"].shape[0])
            self.peak_count = max(self.peak_count, count)
            scales = torch.exp(params["scales"]).max(dim=-1).values
            metrics: dict[str, float] = {
                "gaussians": float(count),
                "transparent_fraction": transparent_fraction(params["opacities"], self.config.transparent_opacity),
                "scale_median": float(scales.median()) if count else 0.0,
                "scale_max": float(scales.max()) if count else 0.0,
                "peak_memory_mb": peak_memory_bytes / 2**20,
            }
            for name, parameter in params.items():
                if parameter.grad is not None:
                    metrics[f"grad_norm/{name}"] = float(parameter.grad.norm())
        self.history.append({"step": step, **metrics})

        if count == 0 or count < self.config.collapse_fraction * self.peak_count:
            raise TrainingFailure(COLLAPSE, f"the Gaussian count fell to {count} from a peak of {self.peak_count}", step)
        if metrics["transparent_fraction"] > self.config.max_transparent_fraction:
            raise TrainingFailure(
                COLLAPSE, f"{metrics['transparent_fraction']:.1%} of the Gaussians are near-transparent", step
            )
        if not torch.isfinite(scales).all() or metrics["scale_median"] > self.config.max_scale:
            raise TrainingFailure(
                NONFINITE, f"scales exploded: median {metrics['scale_median']:.3g} (the patch is 1 in canonical units)", step
            )
        if metrics["scale_median"] < self.config.min_scale_to_spacing * self.spacing:
            raise TrainingFailure(
                SCALE,
                f"scales vanished: median Gaussian scale {metrics['scale_median']:.3g} is "
                f"{metrics['scale_median'] / self.spacing:.3g}x the points' spacing {self.spacing:.3g} "
                f"(the initial scale does not fit this patch)",
                step,
            )
        for name, value in metrics.items():
            if name.startswith("grad_norm/") and value > self.config.max_grad_norm:
                raise TrainingFailure(NONFINITE, f"gradient norm of '{name[10:]}' is {value:.3g}", step)
        return metrics
