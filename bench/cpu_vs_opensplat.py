"""Benchmark: patchsplat's CPU training against OpenSplat's CPU build on the same data (issue 15).

    python bench/cpu_vs_opensplat.py [--opensplat PATH] [--steps 1000] [--eval-every 100] [--repeats 1] [--threads 2]
    python bench/cpu_vs_opensplat.py --how-to-build

Data: the built-in demo (params.yaml's scene.demo: 96 images of 160x120, 30,000 points) split 1 x 1 into one
patch, generated once under bench/.work/cpu-vs-opensplat/. patchsplat trains it as `patchsplat run` would on a
CPU: params.yaml's train settings resolved with the preview profile for the patch, except ``steps`` (--steps),
``backend: torch`` and ``eval_every`` (--eval-every, for a PSNR curve), in a fresh process with --threads torch
threads. Both trainers run under the same OpenMP wait (--omp-wait): "patchsplat", the short spin its entry points
set (src/patchsplat/__init__.py); "passive", OMP_WAIT_POLICY=PASSIVE (the setting of the figures recorded before
issue 15's fifth round); or "gnu-default", GNU OpenMP's own 300,000 spins (OpenSplat's setting when run alone, as
the issue measured it). OpenSplat trains the same 84 training images (every 8th
image sorted by name is held out, as patch.json's heldout_image_names says): a COLMAP binary project with only
those images (the project's own writer; images/ is a symlink) and all 30,000 points (points3D.bin copied as it
is, so both start from the same points; OpenSplat ignores the tracks).

The two trainers alternate (patchsplat, each OpenSplat variant, patchsplat, ... for --repeats rounds). Per
trainer: wall time of its process, CPU utilisation (the child's user + system CPU time from
getrusage(RUSAGE_CHILDREN) over its wall time, in %; 200 % = both cores busy; for patchsplat also over its
training loop alone, from the first to the last step record, by the process's own CPU clock), steps/s (steps over the wall
time less patchsplat's in-training evaluations), held-out PSNR at equal steps (both trainers' PLYs rendered by
patchsplat's evaluator, `evaluate_views`, on the same 12 held-out views at full resolution), and the time each
takes to reach the other's final PSNR, interpolated on its PSNR curve (seconds since its process started, less
patchsplat's evaluation time). patchsplat's curve is its in-training held-out evaluation every --eval-every
steps; OpenSplat's comes from one run too: it saves a PLY every --eval-every steps (--save-every) and prints
every step on a CPU, so each snapshot's time is that of its "Step N" line.

Without --opensplat, patchsplat runs alone and is set against the last recorded OpenSplat figures (RECORDED
below, with their source), which only hold at 1,000 steps; the table says which figures are recorded.

What OpenSplat does to the scene (its source, v1.1.5 as mirrored: colmap.cpp, tensor_math.cpp
autoScaleAndCenterPoses, model.cpp savePly): it subtracts the mean camera centre and multiplies by
1 / max |c - mean| (the largest coordinate over all cameras; no rotation), points too. savePly writes means
and log-scales in that normalised frame unless --keep-crs is given, when it writes means / scale + centre and
log(exp(scales) / scale), i.e. the input's frame. This script passes --keep-crs when the binary lists it and
otherwise undoes the same transform itself (from the training cameras, as OpenSplat computes it); its camera
convention flip (OpenCV -> OpenGL) is internal and does not touch the PLY. Checked with a v1.1.5 CPU build
(30 steps, same seed): the PLY without --keep-crs mapped back here matches the --keep-crs PLY to 2e-6 in the
means and 1e-7 in the log-scales, and scores the same held-out PSNR (the normalised PLY as it is: 8 dB instead
of 14). Not checked against 1.2.0.

Also from the source, worth knowing when reading the numbers: OpenSplat's defaults train at 1/4 of the image
size until step 3,000 (--num-downscales 2, --resolution-schedule 3000), and in v1.1.5 densification stops at
half the steps and starts after --warmup-length 500, so a 1,000-step default run never densifies (hence its
30,000 Gaussians). The densify variant uses the flags of the recorded run (--densify-from/--densify-until);
a binary without them (v1.1.5) gets --warmup-length 100 --refine-every 100 instead (densifying until half the
steps), and the table names the flags used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import OPENMP_WAITS, WORK, openmp_environment, trainer_environment

ROOT = Path(__file__).resolve().parents[1]
HERE = WORK / "cpu-vs-opensplat"

HOW_TO_BUILD = """\
Building OpenSplat's CPU version (github.com/pierotofy/OpenSplat, v1.2.0). OpenSplat is AGPL-3.0: build it from
its own source, outside this repository; never vendor or copy its code here.

  apt-get install cmake g++ libopencv-dev               # Debian's OpenCV
  git clone --branch v1.2.0 https://github.com/pierotofy/OpenSplat && cd OpenSplat
  mkdir build && cd build
  cmake .. -DGPU_RUNTIME=CPU -DCMAKE_BUILD_TYPE=Release \\
        -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')
  nice -n 19 make -j1 opensplat                          # -j$(nproc) on an idle machine
  python bench/cpu_vs_opensplat.py --opensplat $PWD/opensplat

Use this project's python (its venv) in CMAKE_PREFIX_PATH: OpenSplat then links the pip torch's libtorch, the
same torch patchsplat trains with. Offline, CMake cannot fetch its header-only dependencies (nlohmann_json
v3.11.3, nanoflann v1.5.5, cxxopts v3.2.0): unpack them and add
-DFETCHCONTENT_FULLY_DISCONNECTED=ON -DFETCHCONTENT_SOURCE_DIR_NLOHMANN_JSON=... -DFETCHCONTENT_SOURCE_DIR_NANOFLANN=...
-DFETCHCONTENT_SOURCE_DIR_CXXOPTS=... to the cmake line.
"""

# The last recorded OpenSplat figures. Source: OpenSplat 1.2.0, CPU build, on this 2-core machine; the built-in
# demo (96 images 160x120, 30,000 points, one patch; 84 training images, 12 held out), 1,000 steps, its PLY
# scored by patchsplat's evaluator on the 12 held-out views.
RECORDED_SOURCE = ("OpenSplat 1.2.0 CPU build on this 2-core machine, built-in demo (96 images 160x120, 30,000 points, "
                   "one patch; 84 training, 12 held out), 1,000 steps, issue 15; its CPU % under GNU OpenMP's own wait, as the issue implies "
                   "(300,000 spins: --omp-wait gnu-default reproduces it, 192% for 1.1.5 on 2026-12-03)")
RECORDED = {
    "defaults": {"args": [], "steps": 1000, "wall_s": 110.0, "wall_runs": 3, "wall_range_s": [105.0, 138.0],
                 "cpu_percent": 186.0, "psnr": 24.73, "gaussians": 30_000},
    "densify": {"args": ["--densify-from", "100", "--refine-every", "100", "--densify-until", "800"], "steps": 1000,
                "wall_s": 126.0, "wall_runs": 1, "wall_range_s": [126.0, 126.0], "cpu_percent": 186.0, "psnr": 26.25,
                "gaussians": None},
}
# Variants run with --opensplat: name -> (flags, fallback flags for a binary that lacks the first's).
VARIANTS = {
    "defaults": ([], []),
    "densify": (["--densify-from", "100", "--refine-every", "100", "--densify-until", "800"],
                ["--warmup-length", "100", "--refine-every", "100"]),
    "full-res": (["--num-downscales", "0"], ["--num-downscales", "0"]),  # not recorded: every step at 160x120
}


# --- the data -------------------------------------------------------------------------------------------

def workspace() -> Path:
    """The demo scene as one patch (generated once), and OpenSplat's training-images-only COLMAP project."""
    from patchsplat.config import SplitConfig, load_params
    from patchsplat.demo import generate_demo_scene
    from patchsplat.split import split_scene

    params = load_params(ROOT / "params.yaml")
    scene, patches = HERE / "scene", HERE / "patches"
    if not (scene / "manifest.json").is_file():
        print("generating the demo scene (once; cached) ...", flush=True)
        generate_demo_scene(params.scene.demo, scene, progress=False)
    if not (patches / "p0" / "patch.json").is_file():
        split = SplitConfig.model_validate({**params.split.model_dump(), "mode": "grid", "rows": 1, "cols": 1})
        split_scene(scene, patches, split, params.validate_, progress=False)
    patch = patches / "p0"
    opensplat_project(patch, HERE / "opensplat-input")
    return patch


def opensplat_project(patch: Path, out: Path) -> None:
    """A COLMAP binary project of the patch's training images only: sparse/0 (all points kept) and images/ (a link)."""
    import shutil

    import numpy as np

    from patchsplat.colmap_io.arrays import read_model_arrays, write_model_subset
    from patchsplat.split import PatchDescription

    model = out / "sparse" / "0"
    if (model / "images.bin").is_file():
        return
    description = PatchDescription.load(patch)
    arrays = read_model_arrays(patch / "sparse" / "0")
    held_out = set(description.heldout_image_names)
    train = np.array([i for i, name in enumerate(arrays.image_names) if name not in held_out])
    write_model_subset(arrays, train, np.arange(len(arrays.point_ids)), model)
    # The subset writer drops points seen by fewer than two kept images; patchsplat starts from every point of the
    # patch, so OpenSplat gets them all too (it reads only xyz and colour; the tracks are skipped).
    shutil.copyfile(patch / "sparse" / "0" / "points3D.bin", model / "points3D.bin")
    (out / "images").unlink(missing_ok=True)
    (out / "images").symlink_to(description.images_folder(patch).resolve(), target_is_directory=True)


def heldout_cameras(patch: Path):
    """(held-out cameras, the patch's frame) — the views both trainers are scored on."""
    from patchsplat.scene_views import SceneCameras
    from patchsplat.split import PatchDescription

    description = PatchDescription.load(patch)
    cameras = SceneCameras(patch / "sparse" / "0", description.images_folder(patch))
    names = set(description.heldout_image_names)
    return [camera for camera in cameras.cameras if camera.name in names], cameras.frame


def score(ply: Path, patch: Path, opensplat_frame: tuple[float, list[float]] | None = None) -> tuple[float, int]:
    """(mean held-out PSNR by patchsplat's evaluator, Gaussians) of a world-frame PLY; ``opensplat_frame``
    (scale, centre): the PLY is in OpenSplat's normalised frame, map it back first."""
    import numpy as np
    import torch

    from patchsplat.evaluate.images import evaluate_views
    from patchsplat.evaluate.report import load_merged_splats
    from patchsplat.splat_io import transform_splats

    splats = load_merged_splats(ply)
    if opensplat_frame is not None:
        splats = transform_splats(splats, opensplat_frame[0], opensplat_frame[1])
    cameras, frame = heldout_cameras(patch)
    views = evaluate_views(splats, cameras, frame, {}, backend="torch", device=torch.device("cpu"))
    return float(np.mean([view.metrics["psnr"] for view in views])), len(splats["means"])


def opensplat_normalisation(patch: Path) -> tuple[float, list[float]]:
    """OpenSplat's (scale, centre) for its project of the patch's training images: centre = their mean camera
    centre, scale = 1 / max |c - centre| (in float32, as it computes them)."""
    import numpy as np

    from patchsplat.colmap_io.arrays import read_model_arrays
    from patchsplat.split import PatchDescription

    arrays = read_model_arrays(patch / "sparse" / "0")  # the project's points3D.bin is the patch's, tracks and all
    held_out = set(PatchDescription.load(patch).heldout_image_names)
    train = [i for i, name in enumerate(arrays.image_names) if name not in held_out]
    centres = arrays.camera_centres[train].astype(np.float32)
    centre = centres.mean(axis=0)
    return float(1.0 / np.abs(centres - centre).max()), centre.astype(float).tolist()


# --- running a trainer ----------------------------------------------------------------------------------

def run_process(command: list[str], log: Path, env: dict | None = None, on_line=None) -> dict:
    """Run ``command``; its wall time, its CPU time (getrusage of children) and each output line's time since start."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    lines = []
    with open(log, "w", encoding="utf-8") as handle, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1) as process:
        for line in process.stdout:
            handle.write(line)
            if on_line is not None:
                on_line(line, time.time() - started)
            lines.append(line)
        code = process.wait()
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"{command[0]} failed (exit {code}); its output: {log}\n" + "".join(lines[-15:]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"started": started, "wall_s": wall, "cpu_s": cpu, "cpu_percent": 100.0 * cpu / wall}


def run_patchsplat(patch: Path, run_dir: Path, steps: int, eval_every: int, threads: int, wait: str) -> dict:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "request.json").write_text(json.dumps(
        {"patch": str(patch), "steps": steps, "eval_every": eval_every, "threads": threads}), encoding="utf-8")
    env = trainer_environment(wait, threads)
    process = run_process([sys.executable, __file__, "--child", str(run_dir)], run_dir / "log.txt", env)
    child = json.loads((run_dir / "child.json").read_text(encoding="utf-8"))
    # Seconds since the process started at each step, less the in-training evaluations up to then.
    timeline = [{**row, "seconds": row["time"] - process["started"] - row["eval_s"]} for row in child["timeline"]]
    curve = [(row["seconds"], row["psnr"], row["step"]) for row in timeline if row["psnr"] is not None]
    eval_s = timeline[-1]["eval_s"]
    first, last = timeline[0], timeline[-1]
    psnr, gaussians = score(run_dir / "out" / "splats.ply", patch)
    return {**process, "trainer": "patchsplat", "steps": steps, "eval_s": eval_s,
            "steps_per_s": steps / (process["wall_s"] - eval_s),
            "loop_steps_per_s": (last["step"] - first["step"]) / max(last["seconds"] - first["seconds"], 1e-9),
            # CPU over the training loop alone (its in-training evaluations included): start-up and writing excluded.
            "loop_cpu_percent": 100.0 * (last["cpu_s"] - first["cpu_s"]) / max(last["time"] - first["time"], 1e-9),
            "psnr": psnr, "training_psnr": child["heldout_psnr"], "gaussians": gaussians, "curve": curve,
            "settings": child["settings"]}


def child(run_dir: Path) -> None:
    """The patchsplat side, in its own process: resolve the settings, prepare and train, timing every step record."""
    request = json.loads((run_dir / "request.json").read_text(encoding="utf-8"))
    import torch

    torch.set_num_threads(request["threads"])
    from patchsplat.config import load_params
    from patchsplat.prepare import prepare_patch
    from patchsplat.profiles import PatchFacts, resolve_train
    from patchsplat.train import loop

    patch = Path(request["patch"])
    params = load_params(ROOT / "params.yaml")
    override = {**(params.patch_overrides.get("p0") or {}), "steps": request["steps"], "backend": "torch",
                "eval_every": request["eval_every"]}
    settings = resolve_train(params.train, PatchFacts.of_patch(patch), override, "p0", profile="preview")
    prepare_patch(patch, run_dir / "prepared", settings.config, "p0")

    evaluation = {"seconds": 0.0}
    evaluate = loop._Run.evaluate

    def timed_evaluate(self, *args, **kwargs):  # the held-out evaluations are not training: their time is kept apart
        start = time.perf_counter()
        try:
            return evaluate(self, *args, **kwargs)
        finally:
            evaluation["seconds"] += time.perf_counter() - start

    loop._Run.evaluate = timed_evaluate
    timeline = []

    def on_metrics(record: dict, step: int) -> None:
        timeline.append({"step": step, "time": time.time(), "cpu_s": time.process_time(), "eval_s": evaluation["seconds"],
                         "psnr": record.get("heldout_psnr")})

    metrics = loop.train_patch(patch, run_dir / "prepared", run_dir / "out", settings.config,
                               checkpoint_dir=run_dir / "checkpoints", progress=False, log=lambda message: None,
                               on_metrics=on_metrics, profile=settings.profile, origins=settings.origins)
    (run_dir / "child.json").write_text(json.dumps({
        "timeline": timeline, "heldout_psnr": metrics.heldout_psnr, "steps_per_second": metrics.steps_per_second,
        "settings": {"profile": settings.profile, "steps": settings.config.steps, "threads": torch.get_num_threads(),
                     "cap_max": settings.config.strategy.cap_max, "strategy": settings.config.strategy.kind,
                     "resolution_factor": settings.config.resolution_factor},
    }), encoding="utf-8")


def opensplat_flags(binary: str) -> set[str]:
    result = subprocess.run([binary, "--help"], capture_output=True, text=True, check=False)
    return set(re.findall(r"--([a-z][a-z0-9-]*)", result.stdout + result.stderr))


def run_opensplat(binary: str, variant: str, patch: Path, run_dir: Path, steps: int, eval_every: int,
                  supported: set[str], wait: str) -> dict:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    project = HERE / "opensplat-input"
    flags, fallback = VARIANTS[variant]
    if not all(flag[2:] in supported for flag in flags if flag.startswith("--")):
        flags = fallback
    keep_crs = "keep-crs" in supported
    command = [binary, str(project), "-n", str(steps), "-o", str(run_dir / "splat.ply"), "--save-every", str(eval_every),
               *(["--keep-crs"] if keep_crs else []), *(["--cpu"] if "cpu" in supported else []), *flags]
    step_times: dict[int, float] = {}

    def on_line(line: str, seconds: float) -> None:
        match = re.match(r"Step (\d+):", line)
        if match:
            step_times[int(match.group(1))] = seconds

    env = openmp_environment(wait)
    process = run_process(command, run_dir / "log.txt", env, on_line)
    frame = None if keep_crs else opensplat_normalisation(patch)
    curve = []
    for snapshot in sorted(run_dir.glob("splat_*.ply"), key=lambda path: int(path.stem.split("_")[1])):
        step = int(snapshot.stem.split("_")[1])
        curve.append((step_times.get(step, float("nan")), score(snapshot, patch, frame)[0], step))
    psnr, gaussians = score(run_dir / "splat.ply", patch, frame)
    loop_steps = sorted(step_times)
    loop_rate = ((loop_steps[-1] - loop_steps[0]) / (step_times[loop_steps[-1]] - step_times[loop_steps[0]])
                 if len(loop_steps) > 1 else None)
    if not curve or curve[-1][2] != steps:
        curve.append((step_times.get(steps, process["wall_s"]), psnr, steps))
    return {**process, "trainer": f"OpenSplat {variant}", "variant": variant, "command": command, "steps": steps,
            "eval_s": 0.0, "steps_per_s": steps / process["wall_s"], "loop_steps_per_s": loop_rate, "psnr": psnr,
            "gaussians": gaussians, "curve": curve, "flags": flags, "keep_crs": keep_crs}


# --- comparing ------------------------------------------------------------------------------------------

def time_to_reach(curve: list, target: float) -> dict | None:
    """When a (seconds, PSNR, step) curve first reaches ``target`` dB: interpolated between the two evaluations
    around it, or an upper bound (the first evaluation's time) when the first one is already above it."""
    previous = None
    for seconds, psnr, step in curve:
        if psnr >= target:
            if previous is None:
                return {"seconds": seconds, "bound": "at most", "step": step}
            s0, p0, step0 = previous
            fraction = (target - p0) / (psnr - p0)
            return {"seconds": s0 + fraction * (seconds - s0), "bound": "interpolated", "step": step0 + fraction * (step - step0)}
        previous = (seconds, psnr, step)
    return None


def summarise(runs: list[dict]) -> dict:
    walls = [run["wall_s"] for run in runs]
    return {
        "runs": len(runs), "steps": runs[0]["steps"], "wall_s": statistics.median(walls), "wall_range_s": [min(walls), max(walls)],
        "cpu_percent": statistics.median(run["cpu_percent"] for run in runs),
        "steps_per_s": statistics.median(run["steps_per_s"] for run in runs),
        "loop_steps_per_s": statistics.median(run["loop_steps_per_s"] for run in runs) if all(run.get("loop_steps_per_s") for run in runs) else None,
        "loop_cpu_percent": statistics.median(run["loop_cpu_percent"] for run in runs) if all(run.get("loop_cpu_percent") for run in runs) else None,
        "psnr": statistics.mean(run["psnr"] for run in runs), "gaussians": runs[-1]["gaussians"],
        "eval_s": statistics.median(run["eval_s"] for run in runs),
        "curve": runs[-1]["curve"], "recorded": False,
    }


def recorded_summary(name: str) -> dict:
    figures = RECORDED[name]
    return {"runs": figures["wall_runs"], "steps": figures["steps"], "wall_s": figures["wall_s"],
            "wall_range_s": figures["wall_range_s"], "cpu_percent": figures["cpu_percent"], "loop_cpu_percent": None,
            "steps_per_s": figures["steps"] / figures["wall_s"], "loop_steps_per_s": None, "psnr": figures["psnr"],
            "gaussians": figures["gaussians"], "eval_s": 0.0, "curve": None, "recorded": True, "flags": figures["args"],
            "source": RECORDED_SOURCE}


def reach_medians(runs: list[dict], target: float) -> dict | None:
    """The median over runs of the time to reach ``target`` (None if no run reached it)."""
    reached = [hit for hit in (time_to_reach(run["curve"], target) for run in runs) if hit is not None]
    if not reached:
        return None
    return {"seconds": statistics.median(hit["seconds"] for hit in reached),
            "bound": "at most" if all(hit["bound"] == "at most" for hit in reached) else "interpolated",
            "step": statistics.median(hit["step"] for hit in reached), "runs_reached": len(reached), "runs": len(runs)}


def compare(ours: dict, ours_runs: list[dict], name: str, theirs: dict, their_runs: list[dict] | None) -> dict:
    """patchsplat against one OpenSplat variant: each one's time to the other's final PSNR, and the ratios."""
    ours_to_theirs = reach_medians(ours_runs, theirs["psnr"])
    if their_runs:
        theirs_to_ours = reach_medians(their_runs, ours["psnr"])
        theirs_text = None
    elif ours["psnr"] <= theirs["psnr"]:  # recorded: only the final value; reached by the end at the latest
        theirs_to_ours, theirs_text = {"seconds": theirs["wall_s"], "bound": "at most", "step": theirs["steps"]}, None
    else:
        theirs_to_ours, theirs_text = None, f"not reached in {theirs['steps']:,} steps"
    # Time to quality: patchsplat's time to OpenSplat's final PSNR over the time OpenSplat took to get there.
    their_time = theirs["wall_s"] if theirs["recorded"] else statistics.median(run["curve"][-1][0] for run in their_runs)
    return {
        "variant": name, "recorded": theirs["recorded"], "equal_steps": ours["steps"] == theirs["steps"],
        "psnr_difference_db": ours["psnr"] - theirs["psnr"],
        "patchsplat_to_opensplat_psnr": ours_to_theirs, "opensplat_to_patchsplat_psnr": theirs_to_ours,
        "opensplat_to_patchsplat_text": theirs_text,
        "opensplat_time_to_own_final_s": their_time,
        "steps_per_s_ratio": ours["steps_per_s"] / theirs["steps_per_s"],
        "time_to_quality_ratio": ours_to_theirs["seconds"] / their_time if ours_to_theirs else None,
    }


def reach_text(hit: dict | None, fallback: str = "not reached") -> str:
    if hit is None:
        return fallback
    prefix = "<= " if hit["bound"] == "at most" else ""
    partial = f" ({hit['runs_reached']}/{hit['runs']} runs)" if hit.get("runs") and hit["runs_reached"] < hit["runs"] else ""
    return f"{prefix}{hit['seconds']:.0f} s (step {hit['step']:.0f}){partial}"


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for the columns rather than rich's 80
        console = Console(width=180)
    trainers = Table(title=f"patchsplat (CPU, torch backend, {results['threads']} threads) vs OpenSplat (CPU build): "
                           f"the demo as one patch, 84 training / 12 held-out views, OpenMP wait: "
                           f"{results.get('omp_wait', 'passive')}")
    for column in ("trainer", "figures", "runs", "steps", "wall s (median, range)", "CPU %", "loop CPU %", "steps/s",
                   "loop steps/s", "held-out PSNR dB", "Gaussians"):
        trainers.add_column(column, justify="left" if column in ("trainer", "figures") else "right")
    for name, row in results["trainers"].items():
        low, high = row["wall_range_s"]
        wall = f"{row['wall_s']:.0f}" + (f" ({low:.0f}-{high:.0f})" if row["runs"] > 1 else "")
        loop = f"{row['loop_steps_per_s']:.1f}" if row.get("loop_steps_per_s") else "-"
        loop_cpu = f"{row['loop_cpu_percent']:.0f}" if row.get("loop_cpu_percent") else "-"
        gaussians = f"{row['gaussians']:,}" if row["gaussians"] is not None else "-"
        trainers.add_row(name, "RECORDED" if row["recorded"] else "measured", str(row["runs"]), f"{row['steps']:,}", wall,
                         f"{row['cpu_percent']:.0f}", loop_cpu, f"{row['steps_per_s']:.2f}", loop, f"{row['psnr']:.2f}", gaussians)
    console.print(trainers)

    comparison = Table(title="patchsplat / OpenSplat (ratios > 1: patchsplat faster per step; < 1: patchsplat reaches the quality sooner)")
    for column in ("OpenSplat variant", "figures", "PSNR diff dB", "patchsplat -> its PSNR", "it -> patchsplat's PSNR",
                   "its time to own final", "steps/s ratio", "time-to-quality ratio"):
        comparison.add_column(column, justify="left" if column in ("OpenSplat variant", "figures") else "right")
    for row in results["comparisons"]:
        ratio = f"{row['time_to_quality_ratio']:.2f}" if row["time_to_quality_ratio"] is not None else "-"
        diff = f"{row['psnr_difference_db']:+.2f}" + ("" if row["equal_steps"] else " (unequal steps)")
        comparison.add_row(row["variant"], "RECORDED" if row["recorded"] else "measured", diff,
                           reach_text(row["patchsplat_to_opensplat_psnr"]),
                           row["opensplat_to_patchsplat_text"] or reach_text(row["opensplat_to_patchsplat_psnr"]),
                           f"{row['opensplat_time_to_own_final_s']:.0f} s", f"{row['steps_per_s_ratio']:.2f}", ratio)
    console.print(comparison)
    for name, row in results["trainers"].items():
        if name.startswith("OpenSplat"):
            frame = "" if row["recorded"] else ("; PLY written with --keep-crs" if row.get("keep_crs") else "; PLY mapped back from its normalised frame here")
            print(f"{name}: flags {' '.join(row.get('flags') or []) or '(none: its defaults)'}{frame}")
    if any(row["recorded"] for row in results["comparisons"]):
        print(f"RECORDED rows are not measured in this run: {RECORDED_SOURCE}; wall time the median of its runs.")
    print("steps/s: steps / (wall - patchsplat's in-training evaluations); loop steps/s and loop CPU %: between the "
          "first and last timed steps (no start-up, no writing of the outputs). Times to a PSNR: seconds since the process started, less evaluations; "
          "'<=': already above it at the first evaluation (recorded OpenSplat: at its end).")
    print(f"results: {HERE / 'results.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, epilog=HOW_TO_BUILD, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opensplat", metavar="PATH", help="an OpenSplat binary (CPU build); without it: the recorded figures")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100, help="held-out PSNR (and OpenSplat snapshots) every N steps")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (patchsplat, each OpenSplat variant)")
    parser.add_argument("--threads", type=int, default=2, help="patchsplat's torch threads")
    parser.add_argument("--omp-wait", default="patchsplat", choices=OPENMP_WAITS,
                        help="both trainers' OpenMP wait: patchsplat's short spin, PASSIVE, or GNU OpenMP's default")
    parser.add_argument("--variants", default="defaults,densify", help=f"OpenSplat variants to run, of {', '.join(VARIANTS)}")
    parser.add_argument("--how-to-build", action="store_true", help="print how to build OpenSplat's CPU version and stop")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    if args.how_to_build:
        print(HOW_TO_BUILD)
        return

    os.environ.setdefault("PATCHSPLAT_TRACKING", "0")
    import torch

    torch.set_num_threads(args.threads)  # the evaluator in this process (not timed)
    patch = workspace()
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    supported = opensplat_flags(args.opensplat) if args.opensplat else set()
    ours_runs: list[dict] = []
    their_runs: dict[str, list[dict]] = {name: [] for name in variants} if args.opensplat else {}
    for round_number in range(args.repeats):
        print(f"round {round_number + 1}/{args.repeats}: patchsplat, {args.steps} steps ...", flush=True)
        ours_runs.append(run_patchsplat(patch, HERE / "runs" / f"patchsplat-{round_number}", args.steps, args.eval_every, args.threads,
                                        args.omp_wait))
        print(f"  {ours_runs[-1]['wall_s']:.0f} s, {ours_runs[-1]['psnr']:.2f} dB", flush=True)
        for name in their_runs:
            print(f"round {round_number + 1}/{args.repeats}: OpenSplat {name}, {args.steps} steps ...", flush=True)
            their_runs[name].append(run_opensplat(args.opensplat, name, patch, HERE / "runs" / f"opensplat-{name}-{round_number}",
                                                  args.steps, args.eval_every, supported, args.omp_wait))
            print(f"  {their_runs[name][-1]['wall_s']:.0f} s, {their_runs[name][-1]['psnr']:.2f} dB", flush=True)

    ours = summarise(ours_runs)
    trainers = {"patchsplat": ours}
    comparisons = []
    if args.opensplat:
        for name, runs in their_runs.items():
            theirs = {**summarise(runs), "flags": runs[-1]["flags"], "keep_crs": runs[-1]["keep_crs"]}
            trainers[f"OpenSplat {name}"] = theirs
            comparisons.append(compare(ours, ours_runs, name, theirs, runs))
    else:
        for name in RECORDED:
            theirs = recorded_summary(name)
            trainers[f"OpenSplat {name}"] = theirs
            comparisons.append(compare(ours, ours_runs, name, theirs, None))
        if args.steps != RECORDED["defaults"]["steps"]:
            print(f"note: the recorded OpenSplat figures are at {RECORDED['defaults']['steps']:,} steps, this run at "
                  f"{args.steps:,}: PSNRs are not at equal steps")
    results = {"steps": args.steps, "eval_every": args.eval_every, "threads": args.threads, "repeats": args.repeats,
               "omp_wait": args.omp_wait,
               "opensplat": args.opensplat, "recorded_source": None if args.opensplat else RECORDED_SOURCE,
               "trainers": trainers, "comparisons": comparisons,
               "runs": {"patchsplat": ours_runs, **{f"OpenSplat {name}": runs for name, runs in their_runs.items()}}}
    HERE.mkdir(parents=True, exist_ok=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print_tables(results)


if __name__ == "__main__":
    main()
