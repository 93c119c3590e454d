"""Benchmark: do the preview profile's defaults cost quality? (issue 14 follow-up)

    python bench/profile_sweep.py --scene demo|large|cup77|fern_llff8|tello_lab --settings A,B,C,D,E [--seed 0]
        [--work DIR] [--threads N] [--cap-initial]

Each scene is trained as ONE patch (split grid 1 x 1) with the preview profile's steps, cap and schedules,
everything default except the four settings swept (params.yaml train.strategy.opacity_reg / scale_reg,
train.scales_lr / opacities_lr; lr None = the profile's, 4x the recipe's):

    A  regs 0.01 / 0.01, rates 4x (as today)     D  regs 0.01 / 0.01, rates 1x (5e-3 / 5e-2)
    B  regs 0 / 0,       rates 4x                E  regs 0 / 0,       rates 1x
    C  regs 0.001 / 0.001, rates 4x              F  opacity_reg 0, scale_reg 0.01, rates 4x
    G  regs 0.01 / 0.01, rates 2x                H  opacity_reg 0.01, scale_reg 0, rates 4x

A base workspace per scene (DIR/<scene>/base: scene, validate, split, prepare run once) is copied to
DIR/<scene>/<setting>-s<seed>, its params.yaml edited, then `patchsplat stage train p0` runs there (a fresh
copy: nothing to resume). The held-out figures are the train stage's data/trained/p0/metrics.json (mean over
the held-out views, every 8th image, at the training resolution; for one patch it is what `stage merge` +
`stage evaluate` report in metrics/evaluate.json: checked equal on fern_llff8 A, 26.54 dB / 0.866).
"train s" is the stage's wall time (machine load included).
``--cap-initial`` writes ``strategy.cap_max`` = the patch's initial Gaussians (folders ``...-capinit``): the regime of
a patch whose SfM points already fill the preview cap (the profile's ``max_cap``), with no room to grow.
A finished setting is not retrained (delete its folder). The demo scenes follow bench/partition_check.py
(`large` = its `_large` without the 3 x 3 cut); real captures come from /work/shared/data/real/<scene>.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"  # the real captures beside the checkout (never committed)
SETTINGS = {  # opacity_reg, scale_reg, scales_lr, opacities_lr (None: the profile's)
    "A": (0.01, 0.01, None, None),
    "B": (0.0, 0.0, None, None),
    "C": (0.001, 0.001, None, None),
    "D": (0.01, 0.01, 5e-3, 5e-2),
    "E": (0.0, 0.0, 5e-3, 5e-2),
    "F": (0.0, 0.01, None, None),
    "G": (0.01, 0.01, 1e-2, 1e-1),
    "H": (0.01, 0.0, None, None),
}


def cli(*args: str, cwd: Path, log: Path | None = None, env: dict | None = None) -> None:
    command = [sys.executable, "-m", "patchsplat.cli", *args]
    with open(log, "w") if log else open(os.devnull, "w") as out:
        subprocess.run(command, cwd=cwd, check=True, env=env, stdout=out if log else None, stderr=subprocess.STDOUT if log else None)


def edit_params(root: Path, change) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    change(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def one_patch(params: dict, scene: str) -> None:
    if scene == "large":
        demo = params["scene"]["demo"]
        demo["extent"] = round(demo["extent"] * 2 ** 0.5, 2)
        for key in ("num_cameras", "num_points", "num_boxes", "num_spheres"):
            demo[key] *= 2
    params["split"].update({"mode": "grid", "rows": 1, "cols": 1})
    params["tracking"]["enabled"] = False
    params["patch_overrides"] = {"p0": {}}


def base(work: Path, scene: str) -> Path:
    """The scene's workspace up to prepare (run once)."""
    root = work / scene / "base"
    if (root / "data" / "prepared" / "p0").is_dir():
        return root
    shutil.rmtree(root, ignore_errors=True)
    if scene in ("demo", "large"):
        root.mkdir(parents=True)
        shutil.copytree(ROOT / "stages", root / "stages")
        shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
        shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        cli("init", str(root), "--colmap", str(REAL / scene), cwd=root.parent)
    edit_params(root, lambda params: one_patch(params, scene))
    for stage in ("scene", "validate", "split", "prepare p0"):
        cli("stage", *stage.split(), cwd=root)
    return root


def run(work: Path, scene: str, setting: str, seed: int, threads: int, cap_initial: bool = False) -> dict:
    root = work / scene / (f"{setting}-s{seed}" + ("-capinit" if cap_initial else ""))
    metrics_file = root / "data" / "trained" / "p0" / "metrics.json"
    if not metrics_file.is_file():
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(base(work, scene), root, symlinks=True)
        opacity_reg, scale_reg, scales_lr, opacities_lr = SETTINGS[setting]

        def change(params: dict) -> None:
            params["train"]["strategy"].update({"opacity_reg": opacity_reg, "scale_reg": scale_reg})
            params["train"].update({"scales_lr": scales_lr, "opacities_lr": opacities_lr, "seed": seed})
            if cap_initial:
                prepared = json.loads((root / "data" / "prepared" / "p0" / "prepare.json").read_text())
                params["train"]["strategy"]["cap_max"] = prepared["num_gaussians"]

        edit_params(root, change)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        started = time.perf_counter()
        cli("stage", "train", "p0", cwd=root, log=root / "train.log", env=env)
        (root / "seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
    metrics = json.loads(metrics_file.read_text())
    train = json.loads((root / "data" / "trained" / "p0" / "settings.json").read_text())["train"]  # what it trained with
    return dict(metrics, seconds=float((root / "seconds.txt").read_text()), cap=train["strategy"]["cap_max"],
                regs=f"{train['strategy']['opacity_reg']:g}/{train['strategy']['scale_reg']:g}",
                rates=f"{train['scales_lr']:g}/{train['opacities_lr']:g}", seed=train["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", required=True, choices=["demo", "large", "cup77", "fern_llff8", "tello_lab"])
    parser.add_argument("--settings", default="A,B,C,D,E")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "profile-sweep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cap-initial", action="store_true", help="cap = the initial Gaussians (no room to grow)")
    arguments = parser.parse_args()
    rows = [(setting, run(arguments.work, arguments.scene, setting, arguments.seed, arguments.threads, arguments.cap_initial))
            for setting in arguments.settings.split(",")]
    print(f"\n{'scene':<10} {'set':<3} {'regs o/s':<11} {'lr scales/opa':<13} {'seed':>4} {'PSNR':>6} {'SSIM':>6} "
          f"{'Gaussians':>9} {'cap':>7} {'steps':>5} {'train s':>7} {'attempts':>8} {'recovered':>9}")
    for setting, m in rows:
        print(f"{arguments.scene:<10} {setting:<3} {m['regs']:<11} {m['rates']:<13} {m['seed']:>4} {m['heldout_psnr']:>6.2f} "
              f"{m['heldout_ssim']:>6.3f} {m['gaussians']:>9,} {m['cap']:>7,} {m['steps']:>5} {m['seconds']:>7.0f} "
              f"{m['attempts']:>8} {m['recovered']!s:>9}")


if __name__ == "__main__":
    main()
