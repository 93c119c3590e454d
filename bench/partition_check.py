"""Benchmark: what splitting costs — the merged patches against one model of the same scene (issue 14).

    python bench/partition_check.py [--scene demo|large|both] [--steps N] [--budget steps|pipeline]
                                   [--split-steps-factor F] [--seed N]

For each scene a workspace under bench/.work/partition-<scene> (this project's params.yaml with the
scene's changes, the scene stage run once) and `patchsplat check-partition` in it: the scene trained as
one patch and as the split, with the single model's steps and Gaussian budget, scored on the same
held-out views. Printed per scene, with the targets in the same table: single and merged PSNR, merged
minus single overall (target: at least -0.3 dB) and on border views (at least -0.5 dB).

Scenes: ``demo``, the built-in demo as params.yaml has it (2 x 2 patches); ``large``, the demo grown to
twice its area (side x sqrt 2; cameras, points and objects x 2) and cut 3 x 3. A second run re-scores
without training (the check resumes); delete bench/.work/partition-* to train again. ``--budget pipeline``
trains each patch as a pipeline run would (the profile's steps and cap per patch) instead of sharing the single
model's budget; it retrains the split only. ``--split-steps-factor F`` gives the split F times the single model's
steps (its cap unchanged): how many steps the split needs to match one model. ``--seed N`` sets ``train.seed``
(default: params.yaml's): the seed spread is the size of the price, so a figure wants more than one. The training
steps and seconds of both variants are printed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from _common import WORK

ROOT = Path(__file__).resolve().parents[1]
OVERALL_TARGET_DB, BORDER_TARGET_DB = 0.3, 0.5


def _large(params: dict) -> None:
    demo = params["scene"]["demo"]
    demo["extent"] = round(demo["extent"] * 2 ** 0.5, 2)
    for key in ("num_cameras", "num_points", "num_boxes", "num_spheres"):
        demo[key] *= 2
    params["split"].update({"mode": "grid", "rows": 3, "cols": 3})


SCENES = {"demo": lambda params: None, "large": _large}


def workspace(name: str, seed: int | None = None) -> Path:
    """The scene's workspace, its scene generated once; ``seed``, when given, replaces ``train.seed``."""
    root = WORK / f"partition-{name}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    SCENES[name](params)
    if seed is not None:
        params["train"]["seed"] = seed
    params["tracking"]["enabled"] = False
    params["patch_overrides"] = {}
    root.mkdir(parents=True, exist_ok=True)
    for folder in ("stages",):
        shutil.copytree(ROOT / folder, root / folder, dirs_exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    text = yaml.safe_dump(params, sort_keys=False)
    if not (root / "params.yaml").is_file() or (root / "params.yaml").read_text(encoding="utf-8") != text:
        (root / "params.yaml").write_text(text, encoding="utf-8")
    if not (root / "data" / "scene" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "patchsplat.cli", "stage", "scene"], cwd=root, check=True)
    return root


def check(root: Path, steps: int | None, budget: str, split_steps_factor: float) -> tuple[object, float]:
    from patchsplat.partition_check import PartitionCheck

    started = time.perf_counter()
    command = [sys.executable, "-m", "patchsplat.cli", "check-partition", ".", "--budget", budget,
               "--split-steps-factor", str(split_steps_factor)] + (["--steps", str(steps)] if steps else [])
    subprocess.run(command, cwd=root, check=True)
    return PartitionCheck.load(root / "reports" / "partition.json"), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", choices=[*SCENES, "both"], default="both")
    parser.add_argument("--steps", type=int, default=None, help="single model's steps (default: the profile's)")
    parser.add_argument("--budget", choices=("steps", "pipeline"), default="steps",
                        help="steps: the split with the single model's budget (the target's); pipeline: as a run trains it")
    parser.add_argument("--split-steps-factor", type=float, default=1.0,
                        help="with --budget steps: the split's steps as a multiple of the single model's (1: equal)")
    parser.add_argument("--seed", type=int, default=None, help="train.seed for both variants (default: params.yaml's)")
    arguments = parser.parse_args()
    names = list(SCENES) if arguments.scene == "both" else [arguments.scene]
    rows = []
    for name in names:
        record, seconds = check(workspace(name, arguments.seed), arguments.steps, arguments.budget, arguments.split_steps_factor)
        rows.append((name, record, seconds))
    print()
    print(f"{'scene':<7} {'split':<34} {'budget':<8} {'steps single/merged':>19} {'single dB':>9} {'merged dB':>9} "
          f"{'diff dB':>8} {'target':>7} {'border':>6} {'diff dB':>8} {'target':>7} {'Gaussians single/merged':>24} "
          f"{'train s single/merged':>21} {'verdict':>8} {'wall s':>7}")
    for name, record, seconds in rows:
        border = "-" if record.border_psnr_difference is None else f"{record.border_psnr_difference:+.2f}"
        train_s = "/".join("-" if value is None else f"{value:.0f}" for value in (record.single.train_seconds, record.merged.train_seconds))
        budget = record.budget if record.split_steps_factor == 1 else f"steps x{record.split_steps_factor:g}"
        print(f"{name:<7} {record.split:<34} {budget:<8} {record.single.steps:>9,}/{record.merged.steps:<9,} "
              f"{record.single.psnr:>9.2f} {record.merged.psnr:>9.2f} "
              f"{record.psnr_difference:>+8.2f} {-OVERALL_TARGET_DB:>+7.1f} {record.num_border_views:>6} {border:>8} "
              f"{-BORDER_TARGET_DB:>+7.1f} {record.single.gaussians:>11,}/{record.merged.gaussians:<12,} "
              f"{train_s:>21} {'within' if record.within_target else 'OUTSIDE':>8} {seconds:>7.0f}")


if __name__ == "__main__":
    main()
