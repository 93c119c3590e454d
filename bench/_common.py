"""Shared pieces of the benchmarks: the large generated model they run on, and clean measurements.

Each measured function runs in a fresh Python process (``measure``), so its peak memory is its own
and not the benchmark's; peak RSS (VmHWM) is reported whole and above the process's resident size
after its imports (the work's own memory).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent / ".work"


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
