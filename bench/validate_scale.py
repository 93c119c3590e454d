"""Benchmark: validating a large scene vs. pycolmap's bare read of the same model.

Targets (image checks skipped): ``validate_scene`` takes at most 3x the time and 2x the
peak memory of a bare ``pycolmap.Reconstruction(path)``.

The scene (default 1000 images, 1M points) is generated once with the demo generator
(``render_images=False``: model only) and cached under ``bench/.work/`` (not in git).
Every measurement runs in a fresh subprocess so that its peak RSS is its own (VmHWM,
which starts afresh at exec; ru_maxrss would inherit the parent's). Memory is reported
two ways: the process's peak RSS, and that peak minus the peak measured right after
the imports (the interpreter, numpy, pycolmap, ...); the ratio is taken on the
latter, which is what the operation itself costs. Runs alternate between the two modes,
``--repeats`` times each, and medians are compared (the minimum is shown too, since other
processes on a shared machine only ever slow a run down).

    python bench/validate_scale.py [--images 1000] [--points 1000000] [--repeats 3]

Exit status is 0 whatever the verdict; the table says PASS or FAIL.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_WORK_DIR = BENCH_DIR / ".work"
TIME_TARGET = 3.0
MEMORY_TARGET = 2.0
# The demo's defaults (10 boxes, 6 spheres on a 24 m square) scaled with the area.
DEMO_EXTENT, DEMO_BOXES, DEMO_SPHERES = 24.0, 10, 6


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. (ru_maxrss does not:
    a child started by a process that had grown reports the parent's peak.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def measure(mode: str, scene: Path) -> dict:
    """Run one measurement in this (fresh) process and return its figures."""
    import numpy  # noqa: F401  (imported in both modes so the baselines are comparable)
    import pycolmap

    if mode == "validate":
        import scipy.spatial  # noqa: F401  (the validator imports it lazily: count it as start-up)

        from patchsplat.config import ValidateConfig
        from patchsplat.validate import validate_scene

    baseline = _peak_rss_mb()
    start = time.perf_counter()
    if mode == "bare":
        reconstruction = pycolmap.Reconstruction(str(scene / "sparse" / "0"))
        seconds = time.perf_counter() - start
        detail = {"num_points": reconstruction.num_points3D(), "num_images": reconstruction.num_images()}
    else:
        report = validate_scene(scene, ValidateConfig(), check_images=False)
        seconds = time.perf_counter() - start
        detail = {
            "num_points": report.stats.num_points if report.stats else None,
            "num_images": report.num_images,
            "errors": [f.message for f in report.errors],
        }
    peak = _peak_rss_mb()
    return {"mode": mode, "seconds": seconds, "peak_rss_mb": peak, "baseline_rss_mb": baseline, "extra_rss_mb": peak - baseline, **detail}


def _scene_config(images: int, points: int, extent: float):
    from patchsplat.demo import with_overrides

    area_scale = (extent / DEMO_EXTENT) ** 2
    return with_overrides(
        None,
        num_cameras=images,
        num_points=points,
        extent=extent,
        num_boxes=min(10_000, round(DEMO_BOXES * area_scale)),
        num_spheres=min(10_000, round(DEMO_SPHERES * area_scale)),
        render_images=False,
    )


def ensure_scene(work_dir: Path, images: int, points: int, extent: float) -> Path:
    """The cached benchmark scene for these sizes, generated (once) if absent or stale."""
    from patchsplat.demo import generate_demo_scene

    config = _scene_config(images, points, extent)
    scene = work_dir / f"scene-{images}img-{points}pts-{extent:g}m"
    manifest = scene / "manifest.json"
    wanted = config.model_dump(mode="json")
    if not (manifest.exists() and json.loads(manifest.read_text()).get("config") == wanted):
        print(f"generating the benchmark scene in {scene} (once; about 30 s per million points) ...", flush=True)
        start = time.perf_counter()
        generate_demo_scene(config, scene, progress=False)
        print(f"  generated in {time.perf_counter() - start:.1f} s", flush=True)
    # A model-only demo scene has no images/ folder; the validator requires one (it is not opened here).
    (scene / "images").mkdir(exist_ok=True)
    return scene


def _run_child(mode: str, scene: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", mode, str(scene)],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"measurement '{mode}' failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="registered images (cameras) in the scene")
    parser.add_argument("--points", type=int, default=1_000_000, help="3D points in the scene")
    parser.add_argument("--extent", type=float, default=200.0, help="side of the scene's ground square, metres")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per mode (medians are compared)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="where the generated scene is cached")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "SCENE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        mode, scene = args.measure
        print(json.dumps(measure(mode, Path(scene))))
        return 0

    scene = ensure_scene(args.work_dir, args.images, args.points, args.extent)
    runs: dict[str, list[dict]] = {"bare": [], "validate": []}
    for _ in range(args.repeats):
        for mode in ("bare", "validate"):
            runs[mode].append(_run_child(mode, scene))

    errors = runs["validate"][0].get("errors")
    first = runs["bare"][0]
    print()
    print(f"scene: {scene}")
    print(f"       {first['num_images']} images, {first['num_points']} points; image checks skipped; {args.repeats} runs per mode")
    if errors:
        print(f"NOTE: the validator reported errors on this scene: {errors[:3]}")
    print()

    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    def minimum(mode: str, key: str) -> float:
        return min(run[key] for run in runs[mode])

    rows = [
        ("time (s), median", "seconds", median, TIME_TARGET),
        ("time (s), min", "seconds", minimum, None),
        ("peak RSS above imports (MB), median", "extra_rss_mb", median, MEMORY_TARGET),
        ("peak RSS total (MB), median", "peak_rss_mb", median, None),
        ("RSS after imports (MB), median", "baseline_rss_mb", median, None),
    ]
    header = f"{'measure':<38}{'bare read':>12}{'validate':>12}{'ratio':>9}{'target':>9}  verdict"
    print(header)
    print("-" * len(header))
    verdicts = []
    for label, key, aggregate, target in rows:
        bare, validate = aggregate("bare", key), aggregate("validate", key)
        ratio = validate / bare if bare else float("inf")
        verdict = _verdict(ratio, target) if target else ""
        if target:
            verdicts.append(verdict)
        target_text = f"<= {target:g}x" if target else ""
        print(f"{label:<38}{bare:>12.2f}{validate:>12.2f}{ratio:>8.2f}x{target_text:>9}  {verdict}")
    print()
    print("overall:", "PASS" if all(v == "PASS" for v in verdicts) else "FAIL",
          f"(time <= {TIME_TARGET:g}x and memory above imports <= {MEMORY_TARGET:g}x of the bare pycolmap read)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT / "src"))
    sys.exit(main())
