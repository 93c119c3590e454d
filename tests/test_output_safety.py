"""No command deletes or overwrites what it did not create (issue 11).

Every command that writes a folder is pointed at its input, at the input's parent and at a folder
holding a user's file: it refuses with one line naming the folder, a non-zero exit, no traceback,
and every file there unchanged. Re-running into its own earlier output works. Also: the temporary
folders a killed run leaves are swept by the next run and never listed as patches; a resumed
training is recorded as resumed, not as a recovery; a failed validate keeps the last good report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import small_workspace, snapshot, trained_metrics
from patchsplat.config import SplitConfig, TrainConfig, ValidateConfig, deep_merge
from patchsplat.demo import generate_demo_scene, with_overrides
from patchsplat.errors import InputError
from patchsplat.output_folder import MARKER
from patchsplat.prepare import prepare_patch
from patchsplat.split import split_scene
from patchsplat.train.loop import train_patch

SMALL_TRAIN = {"steps": 40, "eval_every": 20, "checkpoint_every": 10, "health": {"check_every": 10},
               "strategy": {"refine_start_iter": 10, "refine_every": 10, "refine_stop_iter": 30}, "backend": "torch"}
TRAIN_PARAMS = "train:\n  steps: 10\n  eval_every: 10\n  checkpoint_every: 10\n  backend: torch\ntracking:\n  enabled: false\n"
DEMO_OPTIONS = ["--num-cameras", "8", "--width", "32", "--height", "24", "--num-points", "300"]
USER_FILE = "thesis.tex"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PATCHSPLAT_FAULTS": "", "PATCHSPLAT_TRACKING": "0"}
    return subprocess.run([sys.executable, "-m", "patchsplat.cli", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, check=False)


def assert_refused(completed: subprocess.CompletedProcess, folder: Path) -> None:
    assert completed.returncode != 0, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0], completed.stderr


def user_folder(parent: Path) -> Path:
    folder = parent / "my-documents"
    folder.mkdir()
    (folder / USER_FILE).write_text("precious")
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny demo scene, its 1 x 1 split, and that patch trained for 10 steps (data/ as the pipeline lays it out)."""
    root = tmp_path_factory.mktemp("safety")
    data = root / "data"
    generate_demo_scene(with_overrides(None, num_cameras=16, width=48, height=36, num_points=1500), data / "scene", progress=False)
    split_scene(data / "scene", data / "patches", SplitConfig(mode="grid", rows=1, cols=1, min_cameras=1), ValidateConfig(),
                progress=False)
    (root / "params.yaml").write_text(TRAIN_PARAMS)
    completed = cli(root, "train", data / "patches" / "p0", "--out", data / "trained" / "p0", "--params", root / "params.yaml")
    assert completed.returncode == 0, completed.stderr
    return root


# ---------------------------------------------------------------- split


@pytest.mark.parametrize("where", ["the_scene", "the_scenes_parent", "a_users_folder"])
def test_split_refuses_its_input_its_parent_and_a_users_folder(project, tmp_path, where):
    scene = project / "data" / "scene"
    out = {"the_scene": scene, "the_scenes_parent": scene.parent, "a_users_folder": user_folder(tmp_path)}[where]
    before = snapshot(out)
    assert_refused(cli(tmp_path, "split", scene, out, "--mode", "grid", "--rows", "1", "--cols", "1"), out)
    assert snapshot(out) == before


def test_split_replaces_its_own_earlier_output_and_an_unmarked_one(project, tmp_path):
    scene, out = project / "data" / "scene", tmp_path / "patches"
    for _ in range(2):
        completed = cli(tmp_path, "split", scene, out, "--mode", "grid", "--rows", "1", "--cols", "1")
        assert completed.returncode == 0, completed.stderr
    assert (out / MARKER).read_text().strip() == "split"
    (out / MARKER).unlink()  # an output of a version before the marker
    assert cli(tmp_path, "split", scene, out, "--mode", "grid", "--rows", "1", "--cols", "1").returncode == 0


# ---------------------------------------------------------------- demo-scene


def test_demo_scene_refuses_a_users_folder_and_a_users_colmap_scene(project, tmp_path):
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    assert_refused(cli(tmp_path, "demo-scene", folder, *DEMO_OPTIONS), folder)
    assert snapshot(folder) == before
    # images/ and sparse/ are what the demo writes too, but without its manifest this is someone's scene
    colmap = tmp_path / "my-scene"
    (colmap / "images").mkdir(parents=True)
    (colmap / "sparse" / "0").mkdir(parents=True)
    (colmap / "images" / "0001.jpg").write_bytes(b"photo")
    before = snapshot(colmap)
    assert_refused(cli(tmp_path, "demo-scene", colmap, *DEMO_OPTIONS), colmap)
    assert snapshot(colmap) == before


def test_demo_scene_refuses_another_commands_output(project, tmp_path):
    patches = project / "data" / "patches"
    before = snapshot(patches)
    assert_refused(cli(tmp_path, "demo-scene", patches, *DEMO_OPTIONS), patches)
    assert snapshot(patches) == before


def test_demo_scene_replaces_its_own_earlier_output(tmp_path):
    for _ in range(2):
        completed = cli(tmp_path, "demo-scene", tmp_path / "demo", *DEMO_OPTIONS)
        assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "demo" / MARKER).read_text().strip() == "demo-scene"


# ---------------------------------------------------------------- train


@pytest.mark.parametrize("where", ["the_patch", "the_patches_parent", "a_users_folder"])
def test_train_refuses_its_input_its_parent_and_a_users_folder(project, tmp_path, where):
    patch = project / "data" / "patches" / "p0"
    out = {"the_patch": patch, "the_patches_parent": patch.parent, "a_users_folder": user_folder(tmp_path)}[where]
    before = snapshot(out)
    assert_refused(cli(tmp_path, "train", patch, "--out", out, "--params", project / "params.yaml"), out)
    assert snapshot(out) == before
    assert not Path(f"{out}.prepared").exists()  # refused before anything was written


def test_train_replaces_its_own_output_and_sweeps_a_killed_runs_leftovers(project, tmp_path):
    patch = project / "data" / "patches" / "p0"
    out = tmp_path / "trained" / "p0"
    train = ("train", patch, "--out", out, "--params", project / "params.yaml")
    assert cli(tmp_path, *train).returncode == 0
    dead = out.parent / ".p0.abc.tmp"             # a killed run's, from before the PID was in the name
    dead.mkdir()
    (dead / "splats.ply").write_text("half")
    old = time.time() - 3600
    os.utime(dead, (old, old))
    alive = out.parent / f".p0.{os.getpid()}-abcdefgh.tmp"  # a run still going (this process): left alone
    alive.mkdir()
    other = out.parent / ".p1.abc.tmp"             # another output's: left alone
    other.mkdir()
    os.utime(other, (old, old))
    completed = cli(tmp_path, *train)
    assert completed.returncode == 0, completed.stderr
    assert not dead.exists() and alive.exists() and other.exists()
    assert (out / MARKER).read_text().strip() == "train"


def test_a_killed_swap_puts_the_previous_output_back(tmp_path):
    """Killed between moving the old output aside and moving the new one in: the old one is the last
    complete result, so the sweep restores it rather than deleting it."""
    from patchsplat.atomic import sweep_leftovers

    aside = tmp_path / ".merged.999999999-abcdefgh.old"  # no such PID: the run is over
    (aside / "previous").mkdir(parents=True)
    (aside / "previous" / "merge.json").write_text("{}")
    half = tmp_path / ".merged.999999999-ijklmnop.tmp"
    half.mkdir()
    assert sorted(sweep_leftovers(tmp_path / "merged")) == sorted([aside, half])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["merged"]
    assert (tmp_path / "merged" / "merge.json").read_text() == "{}"


def test_a_leftover_is_never_listed_as_a_patch(project, tmp_path):
    from patchsplat.summary import _training
    from patchsplat.workspace import Workspace

    workspace = Workspace(tmp_path / "ws")
    (workspace.trained_dir / "p0").mkdir(parents=True)
    trained_metrics(heldout_psnr=20.0).save(workspace.trained_dir / "p0" / "metrics.json")
    (workspace.trained_dir / ".p0.abc.tmp").mkdir()
    trained_metrics(heldout_psnr=5.0).save(workspace.trained_dir / ".p0.abc.tmp" / "metrics.json")
    line = _training(workspace)
    assert "p0 20.0 dB" in line and "5.0" not in line and ".p0" not in line


def test_dvc_ignores_the_temporary_folders():
    ignored = (Path(__file__).resolve().parents[1] / ".dvcignore").read_text().splitlines()
    assert ".*.tmp" in ignored and ".*.old" in ignored


# ---------------------------------------------------------------- merge, prepare, mesh


@pytest.mark.parametrize("where", ["the_trained_folder", "the_inputs_parent", "a_users_folder"])
def test_merge_refuses_its_input_its_parent_and_a_users_folder(project, tmp_path, where):
    data = project / "data"
    out = {"the_trained_folder": data / "trained", "the_inputs_parent": data, "a_users_folder": user_folder(tmp_path)}[where]
    before = snapshot(out)
    assert_refused(cli(tmp_path, "merge", data / "patches", data / "trained", out, "--params", project / "params.yaml"), out)
    assert snapshot(out) == before


def test_merge_replaces_its_own_earlier_output(project, tmp_path):
    data = project / "data"
    for _ in range(2):
        completed = cli(tmp_path, "merge", data / "patches", data / "trained", tmp_path / "merged", "--params", project / "params.yaml")
        assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "merged" / MARKER).read_text().strip() == "merge"


def test_prepare_and_mesh_refuse_their_inputs(project, tmp_path):
    from patchsplat.config import MeshConfig
    from patchsplat.mesh.extract import extract_scene_mesh

    data = project / "data"
    before = snapshot(data)
    with pytest.raises(InputError, match="holds the input"):
        prepare_patch(data / "patches" / "p0", data / "patches", TrainConfig())
    with pytest.raises(InputError, match="is also an input"):
        extract_scene_mesh(data / "patches", data / "trained", data / "trained", MeshConfig())
    assert snapshot(data) == before


# ---------------------------------------------------------------- validate --undistort


def test_undistort_refuses_the_scene_its_parent_and_a_users_folder(make_scene, tmp_path):
    scene = make_scene(model="OPENCV_FISHEYE")
    for out in (scene, scene.parent, user_folder(tmp_path)):
        before = snapshot(out)
        assert_refused(cli(tmp_path, "validate", scene, "--out", tmp_path / "report.json", "--undistort", out), out)
        assert snapshot(out) == before


def test_undistort_replaces_its_own_earlier_output(make_scene, tmp_path):
    scene = make_scene(model="OPENCV_FISHEYE")
    for _ in range(2):
        completed = cli(tmp_path, "validate", scene, "--out", tmp_path / "report.json", "--undistort", tmp_path / "und")
        assert completed.returncode == 0, completed.stderr
    assert sorted(os.listdir(tmp_path / "und")) == sorted([MARKER, "images", "sparse"])


# ---------------------------------------------------------------- init (never replaces anything)


def test_init_refuses_the_scene_its_parent_and_a_users_folder(make_scene, tmp_path):
    scene = make_scene()
    for target in (scene, scene.parent, user_folder(tmp_path)):
        before = snapshot(target)
        assert_refused(cli(tmp_path, "init", target, "--colmap", scene), target)
        assert snapshot(target) == before


# ---------------------------------------------------------------- resumed training


def test_a_resumed_run_is_recorded_as_resumed_not_as_a_recovery(project, tmp_path):
    patch = project / "data" / "patches" / "p0"
    config = TrainConfig.model_validate(deep_merge(TrainConfig().model_dump(), SMALL_TRAIN))
    prepare_patch(patch, tmp_path / "prepared", config)

    def interrupt_after_step_20(record: dict, step: int) -> None:
        if step > 20:  # the checkpoint of step 20 is written
            raise KeyboardInterrupt

    options = {"checkpoint_dir": tmp_path / "checkpoints", "progress": False, "log": lambda message: None, "faults": []}
    with pytest.raises(KeyboardInterrupt):
        train_patch(patch, tmp_path / "prepared", tmp_path / "out", config, on_metrics=interrupt_after_step_20, **options)
    metrics = train_patch(patch, tmp_path / "prepared", tmp_path / "out", config, resume=True, **options)
    attempts = json.loads((tmp_path / "out" / "attempts.json").read_text())
    assert [(a["number"], a["outcome"], a["resumed_at_steps"]) for a in attempts] == [(1, "succeeded", [20])]
    assert metrics.attempts == 1 and metrics.resumed is True and metrics.recovered is False


# ---------------------------------------------------------------- the last good report


def test_a_failed_validate_rerun_keeps_the_last_good_report(tmp_path):
    workspace = small_workspace(tmp_path / "ws")
    environment = {**os.environ, "PYTHONPATH": str(workspace / "src"), "OMP_NUM_THREADS": "1", "PATCHSPLAT_TRACKING": "0"}

    def stage(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, f"stages/{name}.py"], cwd=workspace, env=environment,
                              capture_output=True, text=True, check=False)

    assert stage("scene").returncode == 0
    assert stage("validate").returncode == 0
    good = (workspace / "reports" / "validation.json").read_text()
    assert (workspace / "reports" / "last-good" / "validation.json").read_text() == good
    (workspace / "reports" / "validation.json").unlink()  # what DVC does before it runs the stage again
    (workspace / "data" / "scene" / "sparse" / "0" / "points3D.bin").write_bytes(b"broken")
    failed = stage("validate")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert (workspace / "reports" / "last-good" / "validation.json").read_text() == good


# ---------------------------------------------------------------- what lies inside an own output


def _earlier_split(folder: Path) -> Path:
    """A split's output as it looks on disk: its marker, split.json, a patch with its model and description."""
    (folder / "p0" / "sparse" / "0").mkdir(parents=True)
    (folder / "p0" / "patch.json").write_text("{}")
    (folder / "split.json").write_text("{}")
    (folder / MARKER).write_text("split\n")
    return folder


def test_a_resplit_never_deletes_what_train_or_a_user_put_inside_the_patches(tmp_path):
    from patchsplat.output_folder import SPLIT, check_replaceable

    patches = _earlier_split(tmp_path / "patches")
    check_replaceable(patches, SPLIT)  # its own output, as written: replaceable
    (patches / "p0" / "trained").mkdir()  # `patchsplat train patches/p0` writes here by default
    (patches / "p0" / "trained" / "splats.ply").write_bytes(b"a week of training")
    with pytest.raises(InputError, match=r"p0/trained"):
        check_replaceable(patches, SPLIT)
    (patches / "p0" / "trained" / "splats.ply").unlink()
    (patches / "p0" / "trained").rmdir()
    (patches / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"notes\.txt"):
        check_replaceable(patches, SPLIT)
    (patches / "notes.txt").unlink()
    (patches / ".p3.123-abc.tmp").mkdir()  # a killed run's leftover is not a user's: swept, not refused
    check_replaceable(patches, SPLIT)


def test_validate_never_overwrites_a_file_that_is_not_its_report(make_scene, tmp_path):
    from patchsplat.validate import run_validation

    scene = make_scene()
    thesis = tmp_path / "thesis.tex"
    thesis.write_text("precious")
    with pytest.raises(InputError, match="thesis.tex.*not a validation report"):
        run_validation(scene, thesis, ValidateConfig(), skip_images=True)
    assert thesis.read_text() == "precious"
    report = tmp_path / "validation.json"
    for _ in range(2):  # its own earlier report is replaced
        run_validation(scene, report, ValidateConfig(), skip_images=True)
    assert json.loads(report.read_text())["num_images"] > 0
