"""A real capture as a user runs it: `patchsplat init`, then `patchsplat run`, only the step count made small.

bench/real_scenes.py runs every real scene this way with nothing edited (minutes each); this test runs
the same path on the smallest one (fern: 20 forward-facing photos, SIMPLE_RADIAL, a text model) at a
small step count, so every stage's defaults meet a real capture on every test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from project_copy import edit_params


@pytest.mark.slow
def test_a_forward_facing_capture_runs_end_to_end_with_the_defaults(real_data_dir, tmp_path):
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # MLflow off: importing it and opening its SQLite store costs ~5 s in each of the 7 stage processes
    # (tests/test_flow.py covers the flow's MLflow runs; bench/real_scenes.py runs these captures with it on).
    environment["PATCHSPLAT_TRACKING"] = "0"
    workspace = tmp_path / "fern"
    init = subprocess.run([sys.executable, "-m", "patchsplat.cli", "init", str(workspace), "--colmap",
                           str(real_data_dir / "fern_llff8")], env=environment, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert "20 cameras looking at one subject (their views converge): 1 patch" in init.stdout, init.stdout

    def small(params: dict) -> None:
        params["train"]["steps"] = 20                 # the one change: a short run

    edit_params(workspace, small)
    run = subprocess.run([sys.executable, "-m", "patchsplat.cli", "run"], cwd=workspace, env=environment,
                         capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "Traceback" not in output

    split = json.loads((workspace / "reports" / "split.json").read_text())
    assert split["num_patches"] == 1 and split["mode"] == "auto"
    settings = json.loads((workspace / "data" / "trained" / "p0" / "settings.json").read_text())
    assert settings["profile"] == "preview" and settings["train"]["steps"] == 20
    assert settings["origins"]["steps"] == "params.yaml" and settings["origins"]["resolution_factor"].startswith("profile")
    assert settings["train"]["resolution_factor"] == 2              # 497 x 372 (undistorted) -> long side <= 400
    evaluation = json.loads((workspace / "reports" / "evaluation.json").read_text())
    assert evaluation["psnr"] is not None and evaluation["psnr"] > 12.0
    mesh = json.loads((workspace / "data" / "mesh" / "mesh.json").read_text())
    assert mesh["totals"]["faces"] > 1000                             # forward-facing: no depth_trunc by hand
    # The flow ran every stage through DVC: plain `dvc repro` has nothing left to do.
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=workspace, env=environment,
                            capture_output=True, text=True)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr
