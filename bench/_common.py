"""Shared pieces of the benchmarks: the large generated model they run on, and clean measurements.

Each measured function runs in a fresh Python process (``measure``), so its peak memory is its own
and not the benchmark's; peak RSS (VmHWM) is reported whole and above the process's resident size
after its imports (the work's own memory).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent / ".work"

OPENMP_WAITS = ("patchsplat", "passive", "gnu-default")


def openmp_environment(wait: str) -> dict[str, str]:
    """os.environ with the OpenMP wait settings of a measured process: "patchsplat", what its entry points set (a
    short spin, src/patchsplat/__init__.py); "passive", OMP_WAIT_POLICY=PASSIVE (its setting before issue 15's fifth
    round); or "gnu-default", GNU OpenMP's own default of 300,000 spins (OpenSplat's setting when it is run alone;
    given explicitly, since patchsplat would set its own in the child). Given to every trainer of a comparison alike."""
    from patchsplat import OPENMP_SPIN_COUNT

    if wait not in OPENMP_WAITS:
        raise ValueError(f"unknown OpenMP wait {wait!r}; known: {', '.join(OPENMP_WAITS)}")
    environment = {name: value for name, value in os.environ.items() if name not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if wait == "patchsplat":
        environment["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
    elif wait == "passive":
        environment["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        environment["GOMP_SPINCOUNT"] = "300000"
    return environment


def trainer_environment(wait: str, threads: int) -> dict[str, str]:
    """The environment of a patchsplat training measured in a child process: ``wait``'s OpenMP settings, ``threads``
    threads, MLflow off, and this checkout's patchsplat first on PYTHONPATH."""
    source = str(Path(__file__).resolve().parents[1] / "src")
    return {**openmp_environment(wait), "OMP_NUM_THREADS": str(threads), "PATCHSPLAT_TRACKING": "0",
            "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}


def large_model(num_images: int, num_points: int) -> Path:
    """A model-only demo scene (no PNGs) of this size, generated once and cached under bench/.work."""
    from patchsplat.demo import generate_demo_scene, with_overrides

    scene = WORK / f"scene-{num_images}img-{num_points}pts"
    if not (scene / "manifest.json").exists():
        # Keep the demo's density: the area and the number of objects grow with the camera count.
        growth = (num_images / 96) ** 0.5
        config = with_overrides(
            None,
            num_cameras=num_images, num_points=num_points, render_images=False,
            extent=24.0 * growth, num_boxes=int(10 * growth**2), num_spheres=int(6 * growth**2),
        )
        print(f"generating {scene.name} (once; cached) ...", flush=True)
        generate_demo_scene(config, scene, progress=True)
    # A model-only scene has no images; the stages that only reference them need the folder.
    (scene / "images").mkdir(exist_ok=True)
    return scene


def _memory_kb(field: str) -> int:
    """VmRSS / VmHWM (peak) of this process in kB. Not getrusage's ru_maxrss: Linux carries that
    high-water mark across exec, so a spawned child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(function: Callable[..., Any], args: tuple, imports: tuple[str, ...], queue) -> None:
    import importlib

    for module in imports:  # imports are start-up cost, not the measured work
        importlib.import_module(module)
    baseline = _memory_kb("VmRSS")
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    peak = _memory_kb("VmHWM")
    queue.put({"seconds": seconds, "peak_mb": peak / 1024, "peak_above_baseline_mb": (peak - baseline) / 1024,
               "result": json.loads(json.dumps(result, default=str))})


def measure(function: Callable[..., Any], *args: Any, imports: tuple[str, ...] = ()) -> dict:
    """Run ``function(*args)`` in a fresh process (spawned: nothing inherited); its time and peak RSS.

    ``imports`` are imported in that process before the clock and the memory baseline start.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, args, imports, queue))
    process.start()
    outcome = queue.get()
    process.join()
    return outcome
