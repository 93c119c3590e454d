"""Fresh copies of this project where DVC pipelines run without touching the checkout.

A plain module (no pytest, no environment set-up) so the benchmarks can use it as the tests do.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore", "stages", "src", "flows"]


def edit_params(workspace: Path, edit: Callable[[dict], None]) -> None:
    """Change a workspace's params.yaml in place, comments kept (as a user would in an editor)."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    path = workspace / "params.yaml"
    document = yaml.load(path.read_text())
    edit(document)
    with path.open("w") as handle:
        yaml.dump(document, handle)


def small_demo(params: dict) -> None:
    """The demo at a size where the whole pipeline runs in about a minute on 2 cores."""
    params["scene"]["demo"].update({"num_cameras": 32, "width": 48, "height": 36, "num_points": 4000})
    params["split"]["min_cameras"] = 4
    params["train"].update({"steps": 20, "eval_every": 10, "checkpoint_every": 10})
    params["train"]["strategy"].update({"refine_start_iter": 5, "refine_every": 5, "refine_stop_iter": 15})


def copy_project(workspace: Path) -> Path:
    """This project's pipeline (code, dvc.yaml, params.yaml) copied into ``workspace``, a new git repository."""
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, workspace / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (workspace / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, workspace / name)
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    return workspace
