"""Benchmark: what the Prefect flow (`patchsplat run`) adds to plain `dvc repro` on the same pipeline.

    python bench/orchestration.py [--small] [--jobs 1]

Two fresh copies of the project (under bench/.work) run the same pipeline from nothing — one with
``dvc repro``, one with ``patchsplat run --jobs J`` — and then once more with nothing to do. Each
command is a fresh process timed from outside (wall clock), so the flow's figures include starting
Prefect's temporary local server, as a user's ``patchsplat run`` does. With ``--jobs 1`` (the
default) the flow trains the patches one at a time like ``dvc repro``, so the difference is the
orchestration's cost alone; the flow's concurrency is a separate row. ``--small`` uses the tests'
small demo (seconds instead of minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import WORK

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from project_copy import copy_project, edit_params, small_demo  # noqa: E402 - the tests' own project copy


def fresh_workspace(name: str, small: bool) -> Path:
    """A new copy of the project under bench/.work (MLflow tracking as params.yaml has it: on)."""
    workspace = WORK / f"orchestration-{name}"
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    copy_project(workspace)
    if small:
        edit_params(workspace, small_demo)
    return workspace


def timed(workspace: Path, *command: str) -> float:
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   "PYTHONPATH": str(workspace / "src"), "DVC_NO_ANALYTICS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    environment.pop("PREFECT_API_URL", None)  # what a user without a Prefect server gets
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=workspace, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {workspace}:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the tests' small demo instead of the demo")
    parser.add_argument("--jobs", type=int, default=1, help="patches the flow trains at once (1 = like dvc repro)")
    parser.add_argument("--concurrent", action="store_true", help="also time the flow at one patch per core")
    args = parser.parse_args()
    python = sys.executable
    rows = []

    plain = fresh_workspace("dvc", args.small)
    flow = fresh_workspace("flow", args.small)
    print("full pipeline: dvc repro ...", flush=True)
    dvc_full = timed(plain, python, "-m", "dvc", "repro")
    print(f"  {dvc_full:.1f} s\nfull pipeline: patchsplat run --jobs {args.jobs} ...", flush=True)
    flow_full = timed(flow, python, "-m", "patchsplat.cli", "run", "--jobs", str(args.jobs))
    print(f"  {flow_full:.1f} s", flush=True)
    rows.append(("whole pipeline", dvc_full, flow_full))

    dvc_noop = timed(plain, python, "-m", "dvc", "repro")
    flow_noop = timed(flow, python, "-m", "patchsplat.cli", "run", "--jobs", str(args.jobs))
    rows.append(("nothing to do", dvc_noop, flow_noop))

    if args.concurrent:
        concurrent = fresh_workspace("flow-concurrent", args.small)
        flow_concurrent = timed(concurrent, python, "-m", "patchsplat.cli", "run", "--jobs", "0")
        rows.append(("whole pipeline, flow at one patch per core", dvc_full, flow_concurrent))

    scene = "small demo (32 images, 48x36, 20 steps)" if args.small else "demo (params.yaml)"
    print(f"\n{scene}, {os.cpu_count()} cores; flow trains {args.jobs} patch(es) at a time unless stated")
    print(f"{'':44s} {'dvc repro':>10s} {'patchsplat run':>15s} {'flow adds':>10s} {'ratio':>7s}")
    for name, reference, measured in rows:
        print(f"{name:44s} {reference:9.1f}s {measured:14.1f}s {measured - reference:+9.1f}s {measured / reference:6.2f}x")


if __name__ == "__main__":
    main()
