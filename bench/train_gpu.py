"""Benchmark (GPU machine): patchsplat's training against gsplat's simple_trainer recipe, same data.

    python bench/train_gpu.py [--steps 7000] [--scene PATH] [--strategy default|mcmc]
    python bench/train_gpu.py --cpu --steps 50      # checks the script's logic on a CPU (torch backend)

Both sides train the same patch (the demo scene split 1 x 1 unless --scene points at a COLMAP
folder), at the same resolution and step count, from the same initial points and the same
held-out views (every 8th image). The reference is a faithful minimal copy of gsplat
examples/simple_trainer.py's loop (gsplat.rasterization, the strategy, one Adam per parameter
with the recipe's learning rates, 0.8 L1 + 0.2 (1 - SSIM), SH degree every 1000 steps) without
patchsplat's monitor, checkpoints, image cache or recovery — the overhead we want to measure.

Target (issue 4): patchsplat >= 0.95x the reference's steps/s at equal held-out PSNR (within 0.1 dB).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import WORK


def scene_patch(scene: Path | None) -> Path:
    from patchsplat.config import SplitConfig, ValidateConfig
    from patchsplat.demo import generate_demo_scene, with_overrides
    from patchsplat.split import split_scene

    root = WORK / ("gpu-" + (scene.name if scene else "demo"))
    if not (root / "patches" / "p0" / "patch.json").exists():
        if scene is None:
            scene = root / "scene"
            generate_demo_scene(with_overrides(None), scene, progress=False)
        split_scene(scene, root / "patches", SplitConfig(mode="grid", rows=1, cols=1, min_cameras=1), ValidateConfig(), progress=False)
    return root / "patches" / "p0"


def recipe(patch: Path, steps: int, strategy: str, backend: str):
    from patchsplat.config import TrainConfig
    from patchsplat.profiles import PatchFacts, resolve_train

    # gsplat's simple_trainer recipe (the `full` profile) run for `steps` as simple_trainer's --max_steps does it:
    # its schedule's step counts as they are, not stretched (only refine_stop within the run).
    written = TrainConfig.model_validate({
        "steps": steps, "backend": backend, "eval_every": steps, "checkpoint_every": steps, "resolution_factor": 1,
        "sh_degree_interval": 1000,
        "strategy": {"kind": strategy, "refine_start_iter": 500, "refine_every": 100, "reset_every": 3000,
                     "refine_stop_iter": int(steps * 0.8)}})
    return resolve_train(written, PatchFacts.of_patch(patch), profile="full").config


def reference_train(patch: Path, prepared: Path, config, device) -> dict:
    """simple_trainer's loop, minimal: returns steps/s and held-out PSNR."""
    import torch
    from gsplat.strategy import DefaultStrategy

    from patchsplat import metrics
    from patchsplat.render import rasterize
    from patchsplat.prepare import PreparedPatch
    from patchsplat.train.data import PatchViews
    from patchsplat.train.model import initial_splats, learning_rates, make_optimisers, means_lr_at
    from patchsplat.train.strategies import CpuSafeMCMCStrategy

    prepared_patch = PreparedPatch.load(prepared)
    views = PatchViews(patch, prepared_patch.frame, config.resolution_factor, cache_images=10_000)
    images = {view.name: views.image(view).to(device) for view in views.all_views}  # simple_trainer preloads
    params = initial_splats(prepared_patch.gaussians, config, 1.0, config.strategy.cap_max, device)
    optimisers = make_optimisers(params, learning_rates(config, 1.0))
    settings = config.strategy
    if settings.kind == "mcmc":
        strategy = CpuSafeMCMCStrategy(cap_max=settings.cap_max, refine_start_iter=settings.refine_start_iter,
                                       refine_stop_iter=settings.refine_stop_iter, refine_every=settings.refine_every)
        state = strategy.initialize_state()
    else:
        strategy = DefaultStrategy(refine_start_iter=settings.refine_start_iter, refine_stop_iter=settings.refine_stop_iter,
                                   refine_every=settings.refine_every, verbose=False)
        state = strategy.initialize_state(scene_scale=1.0)
    generator = torch.Generator().manual_seed(config.seed)
    backend = "gsplat" if device.type == "cuda" else "torch"
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(config.steps):
        view = views.train_views[int(torch.randint(len(views.train_views), (1,), generator=generator))]
        sh_degree = min(step // config.sh_degree_interval, config.sh_degree)
        colours = torch.cat([params["sh0"], params["shN"]], 1)
        rendered, _, info = rasterize(params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
                                      colours, view.viewmat[None].to(device), view.K[None].to(device), view.width, view.height,
                                      sh_degree=sh_degree, backend=backend)
        strategy.step_pre_backward(params, optimisers, state, step, info)
        prediction = rendered[..., :3].permute(0, 3, 1, 2)
        target = images[view.name].permute(2, 0, 1)[None]
        loss = 0.8 * metrics.l1(prediction, target, False).mean() + 0.2 * (1 - metrics.ssim(prediction, target, False).mean())
        if settings.kind == "mcmc":
            loss = loss + settings.opacity_reg * torch.sigmoid(params["opacities"]).mean() + settings.scale_reg * torch.exp(params["scales"]).mean()
        loss.backward()
        lr = means_lr_at(step, config, 1.0)
        for group in optimisers["means"].param_groups:
            group["lr"] = lr
        for optimiser in optimisers.values():
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
        if settings.kind == "mcmc":
            strategy.step_post_backward(params, optimisers, state, step, info, lr=lr)
        else:
            strategy.step_post_backward(params, optimisers, state, step, info, packed=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        psnrs = []
        for view in views.test_views:
            rendered, _, _ = rasterize(params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
                                       torch.cat([params["sh0"], params["shN"]], 1), view.viewmat[None].to(device), view.K[None].to(device),
                                       view.width, view.height, sh_degree=sh_degree, backend=backend)
            psnrs.append(float(metrics.psnr(rendered[..., :3].clamp(0, 1).permute(0, 3, 1, 2), images[view.name].permute(2, 0, 1)[None])[0]))
    return {"steps_per_second": config.steps / seconds, "heldout_psnr": float(np.mean(psnrs)), "gaussians": int(params["means"].shape[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--scene", type=Path, default=None, help="A COLMAP folder (default: the demo scene).")
    parser.add_argument("--strategy", choices=("default", "mcmc"), default="default")
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU with the torch backend (checks the script only).")
    args = parser.parse_args()

    import os

    import torch

    os.environ.setdefault("PATCHSPLAT_TRACKING", "0")
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (use --cpu to check the script). Nothing measured.")
        return
    device = torch.device("cpu" if args.cpu else "cuda")
    backend = "torch" if args.cpu else "gsplat"
    from rich.console import Console
    from rich.table import Table

    from patchsplat.prepare import prepare_patch
    from patchsplat.train.loop import train_patch

    patch = scene_patch(args.scene)
    config = recipe(patch, args.steps, args.strategy, backend)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        prepare_patch(patch, prepared, config)
        reference = reference_train(patch, prepared, config, device)
        started = time.perf_counter()
        ours = train_patch(patch, prepared, Path(tmp) / "out", config, progress=False, log=lambda m: None)
        ours_wall = time.perf_counter() - started
    ratio = ours.steps_per_second / reference["steps_per_second"]
    table = Table(title=f"{args.steps} steps, {args.strategy} strategy, {backend} on {device}")
    for column in ("", "steps/s", "held-out PSNR", "Gaussians"):
        table.add_column(column, justify="right")
    table.add_row("gsplat simple_trainer recipe (reference)", f"{reference['steps_per_second']:.1f}", f"{reference['heldout_psnr']:.2f}", str(reference["gaussians"]))
    table.add_row("patchsplat train", f"{ours.steps_per_second:.1f}", f"{ours.heldout_psnr:.2f}", str(ours.gaussians))
    Console().print(table)
    gap = ours.heldout_psnr - reference["heldout_psnr"]
    print(f"throughput {ratio:.3f}x the reference (target >= 0.95x): {'PASS' if ratio >= 0.95 else 'FAIL'}; "
          f"PSNR {gap:+.2f} dB (target within 0.1 dB: {'PASS' if abs(gap) <= 0.1 else 'FAIL'}); "
          f"patchsplat wall time incl. evaluation and outputs {ours_wall:.1f} s")
    print(json.dumps({"reference": reference, "patchsplat": {k: getattr(ours, k) for k in ("steps_per_second", "heldout_psnr", "gaussians")}}))


if __name__ == "__main__":
    main()
