"""Training profiles: the training settings a capture and a machine call for, unless params.yaml says otherwise.

``train.profile`` is ``auto`` (``full`` on a CUDA machine, ``preview`` on a CPU), ``preview`` or ``full``.
Every profile-controlled setting of ``train`` (the fields documented "None: the profile's") that
params.yaml leaves ``null`` — and that the patch's override does not set — takes the profile's
value *for that patch*: the profiles scale step counts and schedules with the patch's number of
training images, the resolution with its image size and the Gaussian cap with its content. A value
written in params.yaml or in ``patch_overrides.<id>`` always wins, and the values derived from it
follow it (write ``steps: 5000`` and the densification schedule stretches to 5000 steps).

    resolved = resolve_train(params.train, PatchFacts.of_patch(patch_dir), params.patch_overrides.get("p0"), "p0")
    resolved.config     # a TrainConfig with every setting filled in
    resolved.origins    # "steps" -> "profile preview: 8 per training image (92), in [500, 1500]"

``full`` is gsplat's ``simple_trainer`` recipe (30k steps, its learning rates and schedules, MCMC
capped at 1M Gaussians), images at most 1,600 px on the long side like nerfstudio, and every
step count scaled by ``max(1, images / 300)`` like LichtFeld-Studio. ``preview`` is sized for a
CPU: images at most 400 px on the long side, step counts from the number of images, learning
rates and a growth schedule that reach a useful model in a few thousand steps (see PREVIEW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from patchsplat.config import TrainConfig, deep_merge

PROFILE_NAMES = ("preview", "full")


@dataclass(frozen=True)
class PreviewProfile:
    """``preview``: a CPU run sized so a 100-image capture trains in about 10 minutes on 2 cores while the
    Gaussian count still grows to the patch's content (bench/real_scenes.py measures the real captures:
    cup77, 67 training images of 400x300, trained 700 steps to 27.0 dB held out in 12 minutes, 25.7 dB
    already at step 350; the cap of 26k Gaussians there costs ~1 s per step on 2 cores)."""

    max_image_size: int = 400           # long side in pixels; images are downscaled by an integer factor to fit
    megapixels_per_patch: float = 3.0   # split.mode auto: a wide capture is cut above this many training megapixels
                                        # per patch (the demo, 1.8 Mpx, stays whole; tello_lab's 5.2 Mpx make 2 patches)
    steps_per_image: int = 8            # steps = this x training images, in [min_steps, max_steps]
    min_steps: int = 500
    max_steps: int = 1500
    scales_lr: float = 0.02             # 4x the recipe's: +2.9 dB at 1k steps on the demo (measured)
    opacities_lr: float = 0.2           # 4x the recipe's, same measurement
    lr_reference_steps: int = 1000      # every Gaussian rate (those two included) x sqrt(this / steps) within [1, max_lr_scale]:
    max_lr_scale: float = 2.0           # a shorter run wants larger steps (x1.41 at 500 steps; x2, the best measured, from
                                        # 250 down). Measured on five scenes: bench/RESULTS.md "A learning-rate control"
    opacity_reg: float = 0.0            # MCMC's opacity penalty off: at these rates gsplat's 0.01 cost 0.75 dB on the
                                        # demo and 5.9 dB on a scene twice its size, where the cap binds; real captures
                                        # within their seed-to-seed spread (bench/profile_sweep.py, bench/RESULTS.md)
    refine_start: float = 0.05          # densification from this fraction of the steps ...
    refine_stop: float = 0.8            # ... to this fraction (gsplat: 500 and 25k of 30k)
    refine_every: int = 50
    grown_by: float = 0.6               # growth reaches the cap by this fraction of the steps
    gaussians_per_kilopixel: float = 20.0   # cap = this x the patch's distinct content (kilopixels), in [min_cap, max_cap]
    initial_growth: float = 2.0         # ... and at least this x the initial points (MCMC needs room to grow)
    min_cap: int = 15_000
    max_cap: int = 60_000
    sh_degree_interval: float = 0.15    # one SH band every this fraction of the steps
    evaluations: int = 4                # held-out PSNR this many times per run
    checkpoints: int = 10               # checkpoints per run (an interrupted preview loses at most a tenth)


@dataclass(frozen=True)
class FullProfile:
    """``full``: gsplat's simple_trainer recipe on a GPU (examples/simple_trainer.py, MCMC preset)."""

    max_image_size: int = 1600          # nerfstudio's default downscale target
    megapixels_per_patch: float = 400.0 # split.mode auto: ~200 images of 1600x1200 per patch (Hierarchical-3DGS
                                        # trains chunks of 100-1500 cameras; VastGaussian ~8 cells for a city block)
    steps: int = 30_000
    images_per_scale: int = 300         # steps and schedules x max(1, images / this) (LichtFeld-Studio)
    refine_start_iter: int = 500
    refine_stop_iter: int = 25_000
    refine_every: int = 100
    reset_every: int = 3_000
    sh_degree_interval: int = 1_000
    eval_every: int = 7_000             # gsplat evaluates at 7k and 30k
    checkpoint_every: int = 1_000
    cap_max: int = 1_000_000            # gsplat's MCMC preset
    growth_rate: float = 0.05           # gsplat's fixed 5 % per refinement
    scales_lr: float = 5e-3
    opacities_lr: float = 5e-2
    lr_scale: float = 1.0
    opacity_reg: float = 0.01           # gsplat's MCMC preset


PREVIEW = PreviewProfile()
FULL = FullProfile()


@dataclass(frozen=True)
class PatchFacts:
    """What the profiles scale with: one patch's training images, their size and its content."""

    train_images: int
    width: int                  # the largest camera of the patch, full resolution
    height: int
    initial_points: int
    mean_track_length: float    # observations per point: how many of its views see a point

    @staticmethod
    def of_patch(patch_dir: Path) -> PatchFacts:
        from patchsplat.colmap_io.arrays import parse_cameras, read_model_arrays
        from patchsplat.split import PatchDescription

        arrays = read_model_arrays(Path(patch_dir) / "sparse" / "0")
        cameras = parse_cameras(arrays.cameras_bin)
        held_out = set(PatchDescription.load(Path(patch_dir)).heldout_image_names)
        train_images = sum(1 for name in arrays.image_names if name not in held_out)
        num_points = len(arrays.point_ids)
        return PatchFacts(
            train_images=train_images,
            width=max(camera.width for camera in cameras.values()),
            height=max(camera.height for camera in cameras.values()),
            initial_points=num_points,
            mean_track_length=len(arrays.obs_point) / num_points if num_points else 1.0,
        )


# Where an NVIDIA driver shows itself on Linux; without any of these there is no CUDA device.
_NVIDIA_DEVICE_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia")


def machine_profile() -> str:
    """``full`` where training will run on a CUDA device, else ``preview``."""
    import os
    import sys

    if sys.platform.startswith("linux") and "torch" not in sys.modules and not any(map(os.path.exists, _NVIDIA_DEVICE_PATHS)):
        return "preview"  # no NVIDIA driver: no need to import torch (seconds) to know there is no CUDA
    import torch

    return "full" if torch.cuda.is_available() else "preview"


def resolution_for(width: int, height: int, max_image_size: int) -> int:
    """The smallest integer downscale that brings the long side to at most ``max_image_size`` pixels."""
    return max(1, math.ceil(max(width, height) / max_image_size))


def distinct_kilopixels(train_images: int, width: int, height: int, factor: int, mean_track_length: float) -> float:
    """The content of a set of views: training pixels over the number of views that see each point."""
    return train_images * (width // factor) * (height // factor) / max(mean_track_length, 1.0) / 1000.0


@dataclass(frozen=True)
class ResolvedTrain:
    config: TrainConfig
    profile: str
    origins: dict[str, str]     # dotted setting -> where its value came from


def _written(model, prefix: str = "") -> dict[str, Any]:
    """The settings a config model was given explicitly (params.yaml), dotted, nested models included."""
    written: dict[str, Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        if hasattr(value, "model_fields_set"):
            written.update(_written(value, f"{prefix}{name}."))
        elif value is not None:
            written[f"{prefix}{name}"] = value
    return written


def _dotted(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        elif value is not None:
            flat[f"{prefix}{key}"] = value
    return flat


def _nested(flat: dict[str, Any]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return nested


def _taker(chosen: dict[str, Any], values: dict[str, tuple[Any, str]]) -> Callable[[str, Any, str], Any]:
    """``take(key, value, why)``: the value written in params.yaml if ``key`` was, else the profile's ``value``
    (recorded in ``values`` with why it was chosen)."""

    def take(key: str, value: Any, why: str) -> Any:
        if key in chosen:
            return chosen[key]
        values[key] = (value, why)
        return value

    return take


def _preview(facts: PatchFacts, chosen: dict[str, Any], strategy_kind: str) -> dict[str, tuple[Any, str]]:
    p = PREVIEW
    values: dict[str, tuple[Any, str]] = {}

    take = _taker(chosen, values)

    size = take("max_image_size", p.max_image_size, "long side at most 400 px on a CPU")
    factor = take("resolution_factor", resolution_for(facts.width, facts.height, size),
                  f"{facts.width}x{facts.height} -> long side <= {size} px")
    steps = take("steps", round(min(p.max_steps, max(p.min_steps, p.steps_per_image * facts.train_images)), -2),
                 f"{p.steps_per_image} per training image ({facts.train_images}), in [{p.min_steps}, {p.max_steps}]")
    take("scales_lr", p.scales_lr, "4x the recipe's for a short run")
    take("opacities_lr", p.opacities_lr, "4x the recipe's for a short run")
    take("lr_scale", round(min(p.max_lr_scale, max(1.0, math.sqrt(p.lr_reference_steps / steps))), 3),
         f"sqrt({p.lr_reference_steps} / {steps} steps) in [1, {p.max_lr_scale:g}]: a shorter run takes larger steps")
    take("strategy.opacity_reg", p.opacity_reg, "off at the preview rates (measured)")
    take("sh_degree_interval", max(1, round(p.sh_degree_interval * steps)), f"{p.sh_degree_interval:.0%} of the steps")
    take("eval_every", max(1, steps // p.evaluations), f"{p.evaluations} evaluations per run")
    take("checkpoint_every", max(1, steps // p.checkpoints), f"{p.checkpoints} checkpoints per run")
    content = distinct_kilopixels(facts.train_images, facts.width, facts.height, factor, facts.mean_track_length)
    wanted = max(p.gaussians_per_kilopixel * content, p.initial_growth * facts.initial_points)
    cap = take("strategy.cap_max", int(min(p.max_cap, max(p.min_cap, wanted))),
               f"{p.gaussians_per_kilopixel:g} per distinct kilopixel ({content:.0f}) or {p.initial_growth:g} x the "
               f"{facts.initial_points} initial points, in [{p.min_cap}, {p.max_cap}]")
    start = take("strategy.refine_start_iter", round(p.refine_start * steps), f"{p.refine_start:.0%} of the steps")
    take("strategy.refine_stop_iter", round(p.refine_stop * steps), f"{p.refine_stop:.0%} of the steps")
    every = take("strategy.refine_every", p.refine_every, "preview schedule")
    refinements = max(1, (round(p.grown_by * steps) - start) // max(every, 1))
    growth = (cap / max(facts.initial_points, 1)) ** (1.0 / refinements) - 1.0
    take("strategy.growth_rate", round(min(0.5, max(0.05, growth)), 4),
         f"{facts.initial_points} -> {cap} Gaussians by {p.grown_by:.0%} of the steps")
    take("strategy.reset_every", max(1, steps // 3), "a third of the steps (default strategy only)")
    return values


def _full(facts: PatchFacts, chosen: dict[str, Any], strategy_kind: str) -> dict[str, tuple[Any, str]]:
    f = FULL
    values: dict[str, tuple[Any, str]] = {}
    scale = max(1.0, facts.train_images / f.images_per_scale)
    scaled = f" x {scale:.2f} ({facts.train_images} images / {f.images_per_scale})" if scale > 1 else ""

    take = _taker(chosen, values)

    size = take("max_image_size", f.max_image_size, "long side at most 1600 px (nerfstudio)")
    take("resolution_factor", resolution_for(facts.width, facts.height, size), f"{facts.width}x{facts.height} -> long side <= {size} px")
    steps = take("steps", round(f.steps * scale), "gsplat's 30k" + scaled)
    ratio = steps / f.steps  # schedules follow the steps, also when steps were written
    for key, value in (("sh_degree_interval", f.sh_degree_interval), ("eval_every", f.eval_every),
                       ("checkpoint_every", f.checkpoint_every), ("strategy.refine_start_iter", f.refine_start_iter),
                       ("strategy.refine_stop_iter", f.refine_stop_iter), ("strategy.refine_every", f.refine_every),
                       ("strategy.reset_every", f.reset_every)):
        take(key, max(1, round(value * ratio)), f"gsplat's {value} at 30k steps, x {ratio:.3g}")
    take("scales_lr", f.scales_lr, "gsplat's recipe")
    take("opacities_lr", f.opacities_lr, "gsplat's recipe")
    take("lr_scale", f.lr_scale, "gsplat's recipe as it is")
    take("strategy.cap_max", f.cap_max, "gsplat's MCMC preset")
    take("strategy.opacity_reg", f.opacity_reg, "gsplat's MCMC preset")
    take("strategy.growth_rate", f.growth_rate, "gsplat's 5 % per refinement")
    return values


def resolve_train(train: TrainConfig, facts: PatchFacts, override: dict | None = None, patch_id: str | None = None,
                  profile: str | None = None) -> ResolvedTrain:
    """The effective training settings of one patch: defaults < profile < ``train`` (params.yaml) < ``override``
    (its ``patch_overrides`` entry). ``profile`` forces one (else ``train.profile``, ``auto`` = this machine's)."""
    override_keys = _dotted(override or {})
    written = _written(train)
    chosen = {**written, **override_keys}
    name = profile or chosen.get("profile", "auto")
    if name == "auto":
        name = machine_profile()
    kind = chosen.get("strategy.kind", train.strategy.kind)
    profiled = (_full if name == "full" else _preview)(facts, chosen, kind)
    merged = deep_merge(deep_merge(train.model_dump(), _nested({k: v for k, (v, _) in profiled.items()})), _nested(chosen))
    config = TrainConfig.model_validate(merged)
    origins = {key: "default" for key in _dotted_all(TrainConfig().model_dump())}
    origins.update({key: f"profile {name}: {why}" for key, (_, why) in profiled.items()})
    origins.update({key: "params.yaml" for key in written})
    origins.update({key: f"patch_overrides.{patch_id}" if patch_id else "override" for key in override_keys})
    return ResolvedTrain(config, name, origins)


def split_budget(train: TrainConfig, megapixels_per_patch: float | None = None, profile: str | None = None):
    """What one patch trains in ``train``'s profile (on this machine), for ``split.mode: auto``."""
    from patchsplat.split.auto import SplitBudget

    name = profile or train.profile
    if name == "auto":
        name = machine_profile()
    settings = FULL if name == "full" else PREVIEW
    return SplitBudget(name, megapixels_per_patch or settings.megapixels_per_patch,
                       train.max_image_size or settings.max_image_size, train.resolution_factor)


def is_resolved(config: TrainConfig) -> bool:
    """Whether every profile-controlled setting has a value (training needs that)."""
    return all(value is not None for value in _dotted_all(config.model_dump()).values())


def _dotted_all(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_dotted_all(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
