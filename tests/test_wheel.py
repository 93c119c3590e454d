"""A wheel that works alone (issue 12): built from this checkout, installed into a fresh virtualenv
with no source checkout on its path, its `patchsplat init` + `patchsplat repro` run a small pipeline
and the workspace holds no code.

The fresh venv gets the heavy dependencies (torch, DVC, ...) from this test's own environment through
a .pth line naming its site-packages: a path line in a .pth is added to sys.path, but the .pth files in
that folder are not processed, so this environment's editable patchsplat stays invisible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from conftest import build_scene

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# What a wheel build reads (pyproject.toml's readme, setup.py's pipeline definition, the package).
BUILD_INPUTS = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "dvc.yaml", "params.yaml", ".dvcignore", "stages", "src"]


def _run(command: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert completed.returncode == 0, f"{' '.join(map(str, command))} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
    return completed


def test_wheel_installs_alone_and_runs_init_and_a_pipeline(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"DVC_NO_ANALYTICS": "1", "PATCHSPLAT_TRACKING": "0", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"})

    # The wheel, built from a copy of the checkout (the build writes build/ and *.egg-info beside its sources).
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, sources / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if (ROOT / name).is_dir() else {}))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q",
          "-w", str(wheels), "."], sources, env)
    (wheel,) = wheels.glob("patchsplat-*.whl")
    shutil.rmtree(sources)

    # A fresh venv: the wheel installed by pip into it, then this environment's dependencies made visible.
    fresh = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], tmp_path, env)
    python = fresh / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", str(wheel)], tmp_path, env)
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip())
    (purelib / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env["PATH"] = f"{fresh / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(fresh)
    where = _run([str(python), "-c", "import sys, patchsplat; print(patchsplat.__file__); print('\\n'.join(sys.path))"],
                 tmp_path, env).stdout.splitlines()
    assert Path(where[0]).is_relative_to(purelib), where[0]
    # No source of the checkout on the path (the dependencies' folder may lie in it: `make` puts .venv there).
    sources_on_path = [entry for entry in where[1:] if entry and any(
        Path(entry).resolve() == folder or Path(entry).resolve().is_relative_to(folder)
        for folder in (ROOT / "src", ROOT / "stages"))] + [entry for entry in where[1:] if entry and Path(entry).resolve() == ROOT]
    assert not sources_on_path, where

    # init + a small pipeline, outside any checkout.
    work = tmp_path / "outside"
    work.mkdir()
    scene = build_scene(work / "scene", num_images=12, num_points=300)
    _run([str(fresh / "bin" / "patchsplat"), "init", "ws", "--colmap", str(scene)], work, env)
    workspace = work / "ws"
    python_files = [os.path.join(w, n) for w, _, names in os.walk(workspace) for n in names if n.endswith(".py")]
    assert python_files == [] and not (workspace / "stages").exists()
    assert Path(os.readlink(workspace / ".patchsplat" / "code")) == purelib / "patchsplat"
    assert Path(os.readlink(workspace / ".patchsplat" / "pipeline")) == purelib / "patchsplat" / "pipeline"

    yaml = YAML(typ="rt")
    params = yaml.load((workspace / "params.yaml").read_text())
    params["train"].update({"steps": 10, "eval_every": 5, "checkpoint_every": 5})
    params["train"]["strategy"].update({"refine_start_iter": 3, "refine_every": 3, "refine_stop_iter": 8})
    with (workspace / "params.yaml").open("w") as handle:
        yaml.dump(params, handle)
    _run([str(fresh / "bin" / "patchsplat"), "repro", "--jobs", "1"], workspace, env, timeout=900)
    for path in ("reports/validation.json", "reports/split.json", "data/trained/p0/splats.ply", "data/merged/splats.ply",
                 "data/mesh/mesh.ply", "reports/evaluation.json"):
        assert (workspace / path).exists(), path
    status = _run([str(python), "-m", "dvc", "status"], workspace, env).stdout
    assert "up to date" in status, status
    lock = (workspace / "dvc.lock").read_text()
    assert "cmd: patchsplat stage train p0" in lock and ".patchsplat/code/train/" in lock

    # Comparing runs (README "Metrics at a glance"): a committed run as the baseline, one experiment, and
    # `dvc exp show --only-changed` on a 120-column terminal shows every changed metric and the changed
    # setting in full (the data dependencies' hashes collapse into one "…" column).
    git = ["git", "-c", "user.name=patchsplat", "-c", "user.email=patchsplat@localhost"]
    _run(["git", "add", "-A"], workspace, env)
    _run([*git, "commit", "-qm", "baseline run"], workspace, env)
    _run([str(python), "-m", "dvc", "exp", "run", "-n", "longer", "-S", "train.steps=14"], workspace, env, timeout=900)
    wide = _run([str(python), "-m", "dvc", "exp", "show", "--only-changed", "--no-pager"], workspace,
                {**env, "COLUMNS": "1000"}).stdout.splitlines()
    changed = [name for name in wide[1].split() if name not in ("Experiment", "Created") and "/" not in name]
    assert "train.steps" in changed and "psnr" in changed, wide[1]
    shown = _run([str(python), "-m", "dvc", "exp", "show", "--only-changed", "--no-pager"], workspace,
                 {**env, "COLUMNS": "120"}).stdout.splitlines()
    assert max(len(line) for line in shown) <= 120
    assert shown[1].split()[2:] == [*changed, "…"], "\n".join(shown)
