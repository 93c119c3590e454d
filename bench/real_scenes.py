"""Benchmark: every real capture in ../shared/data/real exactly as a user runs it, nothing edited.

    python bench/real_scenes.py [--scenes cup77 fern_llff8 tello_lab]

For each scene: ``patchsplat init <fresh folder> --colmap <scene>``, then ``patchsplat run`` in it
(the Prefect flow, the defaults: split.mode auto, train.profile auto), timed from outside. Prints per
scene the split's decision, the profile, wall time per stage (the flow's own per-stage seconds, each
stage a ``dvc repro --single-item`` process, start-up included), held-out PSNR/SSIM of the merged
scene, Gaussians, mesh faces and any failure, then the issue's targets next to the figures:
every stage completes; at most 15 minutes per scene on 2 CPU cores; held-out PSNR >= 24 dB on cup77
and fern_llff8, >= 20 dB on tello_lab; tello_lab in 2 or more patches, cup77 in 1.

Workspaces stay in bench/.work/real/<scene> until the next run, for a look at the PNGs and logs
(<scene>.log); the figures also go to bench/.work/real/results.json.
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

from _common import WORK

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
TARGET_MINUTES = 15.0
TARGET_PSNR = {"cup77": 24.0, "fern_llff8": 24.0, "tello_lab": 20.0}
TARGET_PATCHES = {"cup77": (1, 1), "tello_lab": (2, None)}


def _read(path: Path) -> dict | list | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def run_scene(scene: str, root: Path) -> dict:
    workspace = root / scene
    shutil.rmtree(workspace, ignore_errors=True)
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    patchsplat = [sys.executable, "-m", "patchsplat.cli"]
    init = subprocess.run([*patchsplat, "init", str(workspace), "--colmap", str(REAL / scene)], env=environment,
                          capture_output=True, text=True)
    if init.returncode != 0:
        return {"scene": scene, "failure": f"init: {init.stderr.strip()}"}
    summary_file = root / f"{scene}.flow.json"
    log = root / f"{scene}.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run([*patchsplat, "run", "--summary-json", str(summary_file)], cwd=workspace,
                                   env=environment, stdout=handle, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - started
    flow = _read(summary_file) or {}
    stages: dict[str, float] = {}
    for stage in flow.get("stages", []):  # patches train side by side: each patch's stages are listed
        stages[stage["stage"]] = stages.get(stage["stage"], 0.0) + stage["seconds"]
    split = _read(workspace / "reports" / "split.json") or {}
    evaluation = _read(workspace / "reports" / "evaluation.json") or {}
    mesh = _read(workspace / "data" / "mesh" / "mesh.json") or {}
    trained = sorted((workspace / "data" / "trained").glob("p*/metrics.json"))
    settings = [_read(path.parent / "settings.json") or {} for path in trained]
    failure = None
    if completed.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.startswith("error:")]
        failure = lines[-1] if lines else f"patchsplat run exited {completed.returncode} (see {log})"
    return {
        "scene": scene,
        "workspace": str(workspace),
        "decision": split.get("decision"),
        "patches": split.get("num_patches"),
        "profile": sorted({s.get("profile") for s in settings if s.get("profile")}),
        "steps": [(_read(path) or {}).get("steps") for path in trained],
        "resolution": evaluation.get("resolution"),
        "wall_seconds": wall,
        "stage_seconds": stages,
        "psnr": evaluation.get("psnr"),
        "ssim": evaluation.get("ssim"),
        "patch_psnr": [(_read(path) or {}).get("heldout_psnr") for path in trained],
        "gaussians": sum((_read(path) or {}).get("gaussians", 0) for path in trained),
        "mesh_faces": (mesh.get("totals") or {}).get("faces"),
        "failure": failure,
    }


def targets(result: dict) -> list[tuple[str, str, bool]]:
    scene = result["scene"]
    checks = [("every stage completes", "yes" if not result.get("failure") else result["failure"], not result.get("failure"))]
    minutes = result.get("wall_seconds", float("inf")) / 60
    checks.append((f"<= {TARGET_MINUTES:g} min end to end", f"{minutes:.1f} min", minutes <= TARGET_MINUTES))
    if scene in TARGET_PSNR:
        psnr = result.get("psnr")
        checks.append((f"held-out PSNR >= {TARGET_PSNR[scene]:g} dB", "-" if psnr is None else f"{psnr:.2f} dB",
                       psnr is not None and psnr >= TARGET_PSNR[scene]))
    if scene in TARGET_PATCHES:
        low, high = TARGET_PATCHES[scene]
        patches = result.get("patches")
        wanted = f"{low}" if low == high else f">= {low}"
        checks.append((f"patches {wanted}", str(patches), patches is not None and patches >= low and (high is None or patches <= high)))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="*", default=["cup77", "fern_llff8", "tello_lab"])
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"real scenes not found: {REAL} does not exist")
    from rich.console import Console
    from rich.table import Table

    root = WORK / "real"
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for scene in args.scenes:
        print(f"{scene}: patchsplat init + patchsplat run ...", flush=True)
        result = run_scene(scene, root)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=1))

    console = Console(width=200)
    table = Table(title="real captures, init + run, nothing edited (2 CPU cores)")
    for column in ("scene", "split", "profile", "stage seconds", "wall", "PSNR / SSIM", "Gaussians", "mesh faces"):
        table.add_column(column)
    for result in results:
        stages = ", ".join(f"{name} {seconds:.0f}" for name, seconds in result.get("stage_seconds", {}).items())
        psnr = result.get("psnr")
        table.add_row(result["scene"], f"{result.get('patches')}: {result.get('decision')}", ",".join(result.get("profile", [])),
                      stages, f"{result.get('wall_seconds', 0) / 60:.1f} min",
                      "-" if psnr is None else f"{psnr:.2f} dB / {result['ssim']:.3f}", f"{result.get('gaussians', 0):,}",
                      f"{result.get('mesh_faces') or 0:,}")
    console.print(table)
    verdicts = Table(title="targets (issue 10)")
    for column in ("scene", "target", "measured", ""):
        verdicts.add_column(column)
    for result in results:
        for target, measured, ok in targets(result):
            verdicts.add_row(result["scene"], target, measured, "PASS" if ok else "FAIL")
    console.print(verdicts)
    print(f"workspaces and logs: {root}")


if __name__ == "__main__":
    main()
