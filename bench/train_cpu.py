"""Benchmark: training steps/s of the CPU (pure-torch) backend at the demo's size, and how it grows.

    python bench/train_cpu.py [--steps 150] [--threads 2]

The reference is the demo-size run (one demo patch at 160 x 120 with its ~10-15k initial Gaussians,
the params.yaml recipe); every other row changes one thing — the pixels (half and double the image
side) or the Gaussians (a third, and ~3x via a denser demo scene) — and prints its steps/s as a
ratio to the reference, measured in the same run. Densification is off so the Gaussian count of
each row stays what the row says; evaluation and checkpoints happen only at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import WORK


def demo_patch(name: str, **knobs) -> Path:
    from patchsplat.config import SplitConfig, ValidateConfig
    from patchsplat.demo import generate_demo_scene, with_overrides
    from patchsplat.split import split_scene

    root = WORK / f"train-{name}"
    if not (root / "patches" / "p0" / "patch.json").exists():
        generate_demo_scene(with_overrides(None, **knobs), root / "scene", progress=False)
        split_scene(root / "scene", root / "patches", SplitConfig(mode="grid", rows=2, cols=2), ValidateConfig(), progress=False)
    return root / "patches" / "p0"


def run(patch: Path, steps: int, resolution_factor: int = 1, max_points: int = 0) -> dict:
    import tempfile

    from patchsplat.config import TrainConfig, deep_merge, load_params
    from patchsplat.prepare import prepare_patch
    from patchsplat.train.loop import train_patch

    recipe = load_params(Path(__file__).resolve().parents[1] / "params.yaml").train.model_dump()
    config = TrainConfig.model_validate(deep_merge(recipe, {
        "steps": steps, "eval_every": steps, "checkpoint_every": steps, "resolution_factor": resolution_factor,
        "max_initial_points": max_points, "backend": "torch",
        "strategy": {"refine_start_iter": steps + 1, "refine_stop_iter": steps + 1},  # fixed Gaussian count
    }))
    with tempfile.TemporaryDirectory() as tmp:
        prepare_patch(patch, Path(tmp) / "prepared", config)
        started = time.perf_counter()
        metrics = train_patch(patch, Path(tmp) / "prepared", Path(tmp) / "out", config, progress=False, log=lambda m: None)
        wall = time.perf_counter() - started
    settings = json.loads((patch / "patch.json").read_text())
    return {"steps_per_second": metrics.steps_per_second, "gaussians": metrics.gaussians, "wall": wall,
            "cameras": settings["num_cameras"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import os

    os.environ.setdefault("PATCHSPLAT_TRACKING", "0")
    import torch
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(args.threads)
    demo = demo_patch("demo")                                         # the README demo: 160 x 120, 30k points
    small_images = demo_patch("80x60", width=80, height=60)
    large_images = demo_patch("320x240", width=320, height=240)
    dense = demo_patch("dense", num_points=90_000)

    rows = [
        ("demo patch, 160x120 (reference)", run(demo, args.steps), 160 * 120),
        ("pixels / 4: 80x60", run(small_images, args.steps), 80 * 60),
        ("pixels x 4: 320x240", run(large_images, args.steps), 320 * 240),
        ("Gaussians / 3", run(demo, args.steps, max_points=4_000), 160 * 120),
        ("Gaussians x ~3 (denser scene)", run(dense, args.steps), 160 * 120),
    ]
    reference = rows[0][1]["steps_per_second"]
    table = Table(title=f"CPU training throughput ({args.steps} steps, {torch.get_num_threads()} threads, torch backend)")
    for column in ("case", "pixels", "Gaussians", "steps/s", "vs reference", "ms/step"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for label, result, pixels in rows:
        table.add_row(label, f"{pixels:,}", f"{result['gaussians']:,}", f"{result['steps_per_second']:.1f}",
                      f"{result['steps_per_second'] / reference:.2f}x", f"{1000 / result['steps_per_second']:.0f}")
    Console().print(table)
    print(f"reference: {reference:.1f} steps/s -> the README demo's {4} patches x 1000 steps take ~{4000 / reference / 60:.1f} min of training")


if __name__ == "__main__":
    main()
