"""`patchsplat init DIR --colmap PATH`: a workspace for a user's own scene, ready for `dvc repro`.

What a user relies on: bad input is one line naming the path, a non-zero exit and nothing left
behind; the workspace's params.yaml points at the scene and lists the patch ids the split will
make, its dvc.yaml is the project's with the code reached through the workspace's .patchsplat links
(the workspace holds no code); and right after init a plain
`dvc repro` runs the whole pipeline on a real scene and leaves `dvc status` clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from patchsplat.errors import InputError, ToolFailed
from patchsplat.pipeline_definition import pipeline_root
from patchsplat.workspace_init import (
    init_workspace,
    workspace_dvc_yaml,
    workspace_params_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
PATCHSPLAT = Path(sys.executable).parent / "patchsplat"


def _environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml = this venv
    env["DVC_NO_ANALYTICS"] = "1"
    env["PATCHSPLAT_TRACKING"] = "0"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = str(ROOT / "src")  # the workspace has no code: this checkout's patchsplat runs
    return env


def _init_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PATCHSPLAT), "init", *args], cwd=cwd, env=_environment(), capture_output=True, text=True, check=False)


def _safe_load(path: Path):
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def _assert_one_line_error(completed: subprocess.CompletedProcess, *fragments: str) -> None:
    assert completed.returncode == 1, completed
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------- bad input: one line, nothing left


def test_missing_scene_folder(tmp_path):
    completed = _init_cli(tmp_path, "ws", "--colmap", "no-such-scene")
    _assert_one_line_error(completed, str(tmp_path / "no-such-scene"), "scene folder not found")
    assert sorted(os.listdir(tmp_path)) == []


def test_folder_without_a_model(tmp_path):
    (tmp_path / "scene" / "images").mkdir(parents=True)
    completed = _init_cli(tmp_path, "ws", "--colmap", "scene")
    _assert_one_line_error(completed, str(tmp_path / "scene" / "sparse"), "sparse model folder not found")
    assert sorted(os.listdir(tmp_path)) == ["scene"]


def test_corrupt_model(tmp_path, make_scene):
    scene = make_scene()
    (scene / "sparse" / "0" / "images.bin").write_bytes(b"\x07" * 11)
    completed = _init_cli(tmp_path, "ws", "--colmap", str(scene))
    _assert_one_line_error(completed, "images.bin")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("occupied", ["file", "non-empty folder"])
def test_target_must_be_new_or_empty(tmp_path, make_scene, occupied):
    scene = make_scene()
    target = tmp_path / "ws"
    if occupied == "file":
        target.write_text("mine")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    completed = _init_cli(tmp_path, str(target), "--colmap", str(scene))
    _assert_one_line_error(completed, str(target), "not")
    if occupied == "file":
        assert target.read_text() == "mine"
    else:
        assert os.listdir(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == sorted(["ws", scene.name])


def test_workspace_inside_the_scene_is_refused(make_scene):
    scene = make_scene()
    with pytest.raises(InputError, match="inside the scene folder"):
        init_workspace(scene / "ws", scene, git=False)
    assert not (scene / "ws").exists()


def test_needs_a_pipeline_definition(tmp_path, make_scene, monkeypatch):
    import patchsplat

    installed = tmp_path / "site-packages" / "patchsplat" / "__init__.py"
    monkeypatch.setattr(patchsplat, "__file__", str(installed))
    with pytest.raises(InputError, match=r"no pipeline definition \(dvc.yaml, params.yaml, .dvcignore, stages/\)") as raised:
        init_workspace(tmp_path / "ws", make_scene(), git=False)
    assert "\n" not in raised.value.one_line()
    assert not (tmp_path / "ws").exists()


def test_a_failure_half_way_leaves_nothing(tmp_path, make_scene, monkeypatch):
    from patchsplat import workspace_init

    def broken_git(*_args, **_kwargs):
        raise ToolFailed("git init", "failed with exit status 128: simulated")

    monkeypatch.setattr(workspace_init, "_commit", broken_git)
    scene = make_scene()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ToolFailed, match="simulated"):
        init_workspace(tmp_path / "new" / "deeper" / "ws", scene)
    assert sorted(os.listdir(tmp_path)) == before  # no workspace, no temporary folder, no created parents


# ---------------------------------------------------------------- what is written


def test_dvc_yaml_is_the_projects_with_code_through_the_links():
    template = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    written = workspace_dvc_yaml(template, "patchsplat 9.9 at commit abc")
    assert written.startswith("# Written by `patchsplat init` from patchsplat 9.9 at commit abc.")
    assert "reruns the stages whose code changed" in written
    assert "# Checkpoints survive an interrupted run" in written  # the project's comments are kept

    original, result = _safe_load(ROOT / "dvc.yaml")["stages"], YAML(typ="safe").load(written)["stages"]
    assert list(result) == list(original)
    for name, stage in original.items():
        body, new_body = stage.get("do", stage), result[name].get("do", result[name])
        assert [d for d in new_body["deps"] if str(d).startswith(("src/", "stages/"))] == []
        code = [d for d in new_body["deps"] if str(d).startswith(".patchsplat/")]
        assert len(code) == len([d for d in body["deps"] if str(d).startswith(("src/", "stages/"))]), name
        assert [d for d in body["deps"] if not str(d).startswith(("src/", "stages/"))] == [
            d for d in new_body["deps"] if not str(d).startswith(".patchsplat/")]
        assert code[0].startswith(".patchsplat/pipeline/stages/"), name
        assert {k: v for k, v in body.items() if k != "deps"} == {k: v for k, v in new_body.items() if k != "deps"}
        assert {k: v for k, v in stage.items() if k not in ("do", "deps")} == {
            k: v for k, v in result[name].items() if k not in ("do", "deps")}


def test_params_yaml_leaves_the_demos_choices_behind():
    """A capture's params: the scene switched to it, the demo's generator and 2 x 2 grid gone (the split
    decides from the capture), training left to the profile as in the template, everything else as is."""
    template = (ROOT / "params.yaml").read_text(encoding="utf-8")
    scene = Path("/captures/my scene: #1")
    written = workspace_params_yaml(template, scene, ["p0", "p1", "p7"])
    original, result = YAML(typ="safe").load(template), YAML(typ="safe").load(written)
    assert result["scene"]["source"] == "colmap" and result["scene"]["colmap_path"] == str(scene)
    assert "demo" not in result["scene"] and result["split"]["mode"] == "auto"
    assert list(result["patch_overrides"]) == ["p0", "p1", "p7"]
    for section in original:
        if section not in ("scene", "split", "patch_overrides"):
            assert result[section] == original[section], section
    assert {k: v for k, v in result["split"].items() if k != "mode"} == {k: v for k, v in original["split"].items() if k != "mode"}
    # No demo-tuned training setting: every profile-controlled one is left to the profile.
    from patchsplat.config import TrainConfig

    assert result["train"]["profile"] == "auto" and result["train"]["steps"] is None
    assert {k: v for k, v in result["train"].items() if k != "recovery"} == {
        k: v for k, v in TrainConfig().model_dump(mode="json").items() if k != "recovery"}
    # Comments and layout survive.
    assert "# demo (the built-in procedural scene) | colmap (your folder, below)" in written
    assert "\n\nvalidate:\n" in written and "auto (one patch for an object" in written


def test_init_writes_a_workspace_for_the_scene(tmp_path, make_scene):
    scene = make_scene(num_images=16, num_points=300)
    target = tmp_path / "ws"
    target.mkdir()  # an empty folder is fine
    result = init_workspace(target, scene, git=False)
    assert result.workspace == target and result.colmap_path == scene.resolve()

    params = _safe_load(target / "params.yaml")
    assert params["scene"]["source"] == "colmap" and params["scene"]["colmap_path"] == str(scene.resolve())
    from patchsplat.config import load_params
    from patchsplat.patch_ids import planned_patch_ids
    from patchsplat.scene_source import prepare_scene
    from patchsplat.workspace import Workspace

    # The ids are those `patchsplat repro` would sync to once the scene stage has run.
    prepare_scene(load_params(target / "params.yaml").scene, target / "data" / "scene")
    assert list(params["patch_overrides"]) == result.patch_ids == planned_patch_ids(Workspace(target))

    assert not (target / "stages").exists()  # no code: the links reach the installed patchsplat's
    assert os.readlink(target / ".patchsplat" / "code") == str(ROOT / "src" / "patchsplat")
    assert os.readlink(target / ".patchsplat" / "pipeline") == str(ROOT)
    assert (target / ".dvcignore").read_text() == (ROOT / ".dvcignore").read_text()
    ignored = (target / ".gitignore").read_text().splitlines()
    for entry in ("/data/*", "/reports/*", "!/reports/*.json", "/mlflow.db", "/mlartifacts/", "/.venv/", "/.patchsplat/"):
        assert entry in ignored
    assert not list(tmp_path.glob(".ws.init-*"))


def test_the_pipeline_definition_is_this_checkouts():
    assert pipeline_root() == ROOT


# ---------------------------------------------------------------- git, DVC and the pipeline


def _git(workspace: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_cli_init_makes_a_committed_git_and_dvc_repository(tmp_path, make_scene):
    scene = make_scene(num_images=16, num_points=300)
    completed = _init_cli(tmp_path, "my ws", "--colmap", str(scene))
    assert completed.returncode == 0, completed.stderr
    assert "cd 'my ws'" in completed.stdout and "patchsplat repro" in completed.stdout
    workspace = tmp_path / "my ws"
    assert (workspace / ".dvc" / "config").is_file() and (workspace / ".git").is_dir()
    assert _git(workspace, "status", "--porcelain") == ""
    assert len(_git(workspace, "log", "--oneline").splitlines()) == 1
    tracked = set(_git(workspace, "ls-files").split())
    assert {"dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", ".dvc/config"} <= tracked
    assert not [name for name in tracked if name.endswith(".py")]
    header = (workspace / "dvc.yaml").read_text().splitlines()[0]
    assert header.startswith("# Written by `patchsplat init` from patchsplat ") and " at commit " in header


@pytest.mark.slow
def test_init_says_a_distorted_capture_will_be_undistorted(tmp_path):
    fern = ROOT.parent / "shared" / "data" / "real" / "fern_llff8"
    if not (fern / "sparse").is_dir():
        pytest.skip(f"real test scene not available: {fern} does not exist (it lives outside the repository)")
    completed = _init_cli(tmp_path, "fern", "--colmap", str(fern))
    assert completed.returncode == 0, completed.stderr
    assert "cameras with lens distortion (SIMPLE_RADIAL x1): the scene stage writes an undistorted copy" in completed.stdout
    assert _safe_load(tmp_path / "fern" / "params.yaml")["scene"]["undistort"] == "auto"
