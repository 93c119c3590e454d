"""Benchmark: where a CPU training step's time goes, and how much of it uses both cores (issue 15).

    python bench/cpu_phases.py [--steps 300] [--threads 1 2] [--omp-wait patchsplat passive] [--busy-process]

The demo patch of bench/cpu_vs_opensplat.py (generated there once), trained as that script trains it (params.yaml's
settings, preview profile, torch backend), for --steps steps once per thread count, each in a fresh process. Every
phase of the loop is timed by wrapping the function that does it: wall time and the process's CPU time
(``time.process_time``, all threads) spent inside, and their ratio, the phase's CPU utilisation (200% = both cores
busy). Phases: render (projection, SH colours, tile lists, compositing forward), loss (L1 + SSIM and the
regularisers), backward, Adam, the MCMC step (noise every step, relocation every 100), the health checks, the held-out
evaluation, the checkpoints (the profile's ten per run; the training thread's share: copying the state, and, until
the writer thread, serialising and renaming the files), writing the outputs; "rest of the loop" is the loop's wall
time outside them (Python, progress). The whole process's wall and CPU time are printed too, with the loop's:
start-up (imports, preparation) and the writing of the outputs run on one core.

--omp-wait: the OpenMP wait of the processes, each thread count measured under each: "patchsplat", what its entry
points set (a short spin before a waiting thread sleeps, src/patchsplat/__init__.py), "passive" (sleep at once), or
"gnu-default" (GNU OpenMP's own 300,000 spins). --busy-process: another process busy on one core throughout (a Python
loop), as when a second program or a parallel stage shares the machine: the case a spinning thread makes slower.

Printed per thread count (and wait); the last column compares the first and the last: a phase whose time does not
halve from 1 to 2 threads runs (partly) on one core.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from _common import OPENMP_WAITS, trainer_environment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PHASES = (("render", "patchsplat.train.loop:_Run.render"), ("loss", "patchsplat.train.loop:_Run.loss"),
          ("backward", "torch:Tensor.backward"), ("Adam", "torch.optim:Adam.step"),
          ("MCMC step", "patchsplat.train.strategies:CpuSafeMCMCStrategy.step_post_backward"),
          ("health checks", "patchsplat.train.health:check_step"),
          ("evaluation", "patchsplat.train.loop:_Run.evaluate"),
          ("checkpoints", "patchsplat.train.loop:_Run.save_checkpoint"),
          ("writing outputs", "patchsplat.train.loop:_write_outputs"))


def _wrap(target: str, label: str, wall: dict, cpu: dict, where: dict) -> None:
    """Replace ``module:Class.attribute`` (or ``module:function``) by a timed twin that adds to wall[label], cpu[label]
    (``label + " after the loop"`` when called outside the training loop, e.g. the final evaluation)."""
    import importlib

    module_name, path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    is_loop = label == "loop"

    def timed(*args, **kwargs):
        if where["phase"] and not is_loop:   # inside another phase (a render within the evaluation): counted there
            return original(*args, **kwargs)
        key = label if is_loop or where["in_loop"] else f"{label} after the loop"
        started, started_cpu = time.perf_counter(), time.process_time()
        where["in_loop"] = where["in_loop"] or is_loop
        where["phase"] = None if is_loop else label
        try:
            return original(*args, **kwargs)
        finally:
            where["in_loop"] = where["in_loop"] and not is_loop
            where["phase"] = None
            wall[key] += time.perf_counter() - started
            cpu[key] += time.process_time() - started_cpu

    setattr(owner, name, timed)


def child(threads: int, steps: int, out: Path) -> None:
    """One measured training, in this (fresh) process."""
    process_started = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    import cpu_vs_opensplat

    from patchsplat.config import load_params
    from patchsplat.prepare import prepare_patch
    from patchsplat.profiles import PatchFacts, resolve_train
    from patchsplat.train import loop

    wall, cpu, where = defaultdict(float), defaultdict(float), {"in_loop": False, "phase": None}
    for label, target in PHASES:
        _wrap(target, label, wall, cpu, where)
    _wrap("patchsplat.train.loop:_Run.run_attempt", "loop", wall, cpu, where)
    patch = cpu_vs_opensplat.workspace()
    params = load_params(ROOT / "params.yaml")
    override = {**(params.patch_overrides.get("p0") or {}), "steps": steps, "backend": "torch", "eval_every": steps}
    settings = resolve_train(params.train, PatchFacts.of_patch(patch), override, "p0", profile="preview")
    run = out.with_suffix("")
    prepare_patch(patch, run / "prepared", settings.config, "p0")
    loop.train_patch(patch, run / "prepared", run / "out", settings.config, checkpoint_dir=run / "checkpoints",
                     progress=False, log=lambda message: None, profile=settings.profile, origins=settings.origins)
    total_wall, total_cpu = time.perf_counter() - process_started, time.process_time()
    out.write_text(json.dumps({"threads": threads, "steps": steps, "wall": wall, "cpu": cpu,
                               "process_wall": total_wall, "process_cpu": total_cpu}), encoding="utf-8")


def measure(threads: int, steps: int, wait: str) -> dict:
    out = HERE / ".work" / "cpu-phases" / f"threads-{threads}-{wait}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = trainer_environment(wait, threads)
    subprocess.run([sys.executable, __file__, "--child", str(threads), str(steps), str(out)], env=env, check=True)
    return {**json.loads(out.read_text(encoding="utf-8")), "wait": wait}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--omp-wait", nargs="+", default=["patchsplat"], choices=OPENMP_WAITS,
                        help="OpenMP waits to measure each thread count under: patchsplat's short spin, PASSIVE, GNU's default")
    parser.add_argument("--busy-process", action="store_true", help="keep another process busy on one core meanwhile")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        threads, steps, out = arguments.child
        child(int(threads), int(steps), Path(out))
        return
    from rich.console import Console
    from rich.table import Table

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if arguments.busy_process else None
    try:
        results = [measure(threads, arguments.steps, wait) for wait in arguments.omp_wait for threads in arguments.threads]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    labels = [label for label, _ in PHASES]
    table = Table(title=f"the demo patch, {arguments.steps} steps: wall s / CPU s (utilisation) per phase"
                        + (", another process busy on one core" if arguments.busy_process else ""))
    table.add_column("phase")
    for result in results:
        table.add_column(f"{result['threads']} thread(s), {result['wait']}", justify="right")
    if len(results) > 1:
        table.add_column("wall first / last", justify="right")

    def cells(wall_of, cpu_of):
        row = [f"{wall_of(r):.2f} / {cpu_of(r):.2f} ({100 * cpu_of(r) / max(wall_of(r), 1e-9):.0f}%)" for r in results]
        if len(results) > 1:
            row.append(f"{wall_of(results[0]) / max(wall_of(results[-1]), 1e-9):.2f}x")
        return row

    inner = [label for label in labels if any(label in r["wall"] for r in results)]
    for label in inner:
        table.add_row(label, *cells(lambda r, k=label: r["wall"].get(k, 0.0), lambda r, k=label: r["cpu"].get(k, 0.0)))
    table.add_row("rest of the loop", *cells(lambda r: r["wall"]["loop"] - sum(r["wall"].get(k, 0.0) for k in inner),
                                             lambda r: r["cpu"]["loop"] - sum(r["cpu"].get(k, 0.0) for k in inner)))
    table.add_row("the loop", *cells(lambda r: r["wall"]["loop"], lambda r: r["cpu"]["loop"]))
    after = sorted({key for r in results for key in r["wall"] if key.endswith("after the loop")})
    for label in after:
        table.add_row(label, *cells(lambda r, k=label: r["wall"].get(k, 0.0), lambda r, k=label: r["cpu"].get(k, 0.0)))
    table.add_row("the process", *cells(lambda r: r["process_wall"], lambda r: r["process_cpu"]))
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    print("the loop: train_patch's training attempt (the phases above it); after the loop: the same functions called "
          "once training has ended; the process: from its start, imports and preparation included")


if __name__ == "__main__":
    main()
