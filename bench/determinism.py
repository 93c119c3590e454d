"""Benchmark: is CPU training repeatable bit for bit, and what does `train.deterministic` cost?

    python bench/determinism.py [--steps 60] [--repeats 2]

Trains one demo patch (160 x 120, 24 views, 5,000 points, preview profile) for ``--steps`` steps at
torch's default thread count, ``--repeats`` times with `train.deterministic: true` and as many times
with `false`, alternating, each run in a fresh process. Prints each run's seconds and the hash of its
splats.ply, whether each setting's runs agree, and the time ratio (deterministic / not) measured in
the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from _common import WORK

ROOT = WORK / "determinism"

TRAIN_ONCE = """
import json, sys, time
from pathlib import Path
from patchsplat.config import TrainConfig
from patchsplat.prepare import prepare_patch
from patchsplat.train.loop import train_patch
patch, out, steps, deterministic = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
config = TrainConfig.model_validate({"profile": "preview", "steps": steps, "eval_every": 10**6,
                                     "checkpoint_every": 10**6, "deterministic": deterministic})
prepare_patch(patch, out / "prepared", config)
started = time.perf_counter()
train_patch(patch, out / "prepared", out / "out", config, checkpoint_dir=out / "checkpoints", progress=False,
            log=lambda message: None)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def demo_patch() -> Path:
    from patchsplat.config import DemoSceneConfig, SplitConfig, ValidateConfig
    from patchsplat.demo.generate import generate_demo_scene
    from patchsplat.split import split_scene

    if not (ROOT / "patches" / "p0" / "patch.json").exists():
        generate_demo_scene(DemoSceneConfig(num_cameras=24, width=160, height=120, num_points=5000), ROOT / "scene",
                            progress=False)
        split_scene(ROOT / "scene", ROOT / "patches", SplitConfig(mode="grid", rows=1, cols=1, min_cameras=1),
                    ValidateConfig(), progress=False)
    return ROOT / "patches" / "p0"


def train_once(patch: Path, steps: int, deterministic: bool, index: int) -> dict:
    import shutil

    out = ROOT / f"run-{index}"
    shutil.rmtree(out, ignore_errors=True)
    completed = subprocess.run([sys.executable, "-c", TRAIN_ONCE, str(patch), str(out), str(steps),
                                "1" if deterministic else "0"], capture_output=True, text=True, check=True)
    seconds = json.loads(completed.stdout.strip().splitlines()[-1])["seconds"]
    digest = hashlib.sha1((out / "out" / "splats.ply").read_bytes()).hexdigest()[:12]
    return {"deterministic": deterministic, "seconds": seconds, "splats": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    import torch

    patch = demo_patch()
    runs = []
    for index in range(arguments.repeats * 2):
        runs.append(train_once(patch, arguments.steps, deterministic=index % 2 == 0, index=index))
        run = runs[-1]
        print(f"deterministic={str(run['deterministic']).lower():5}  {run['seconds']:6.1f} s  splats {run['splats']}")
    print(f"torch threads: {torch.get_num_threads()}, {arguments.steps} steps per run")
    for setting in (True, False):
        chosen = [run for run in runs if run["deterministic"] is setting]
        same = len({run["splats"] for run in chosen}) == 1
        mean = sum(run["seconds"] for run in chosen) / len(chosen)
        print(f"deterministic: {str(setting).lower():5}  runs agree bit for bit: {'yes' if same else 'NO'}  "
              f"mean {mean:.1f} s")
    on = sum(run["seconds"] for run in runs if run["deterministic"]) / arguments.repeats
    off = sum(run["seconds"] for run in runs if not run["deterministic"]) / arguments.repeats
    print(f"time ratio deterministic / not: {on / off:.2f}x (reference: 1.00x, the same training without it)")


if __name__ == "__main__":
    main()
