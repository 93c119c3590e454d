"""Failures a user can cause or meet: each ends with one line naming the file (or key) and the problem, a
non-zero exit, no traceback, and the earlier results intact. Unexpected errors: one line and a trace file,
the traceback only with --debug or PATCHSPLAT_DEBUG=1.

The real command runs in a subprocess wherever the failure can be produced for real. As root (the container
these tests were written in) chmod does not stop a write and no read-only bind mount can be made: an unwritable
output folder is then an output path under a regular file (refused by the kernel like a read-only one), and
permission denied, a read-only file system and a full disk are raised in-process from the writers' system
calls, the command running under its ``guarded`` as from the command line. A real chmod test runs when not root.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from damage import assert_one_line
from patchsplat import cli
from patchsplat.config import SplitConfig, ValidateConfig
from patchsplat.console import guarded
from patchsplat.demo import generate_demo_scene, with_overrides
from patchsplat.split import split_scene

REPO_ROOT = Path(__file__).resolve().parents[1]
# The smallest demo scene there is: a model only, generated in well under a second.
TINY_SCENE = ["--num-cameras", "4", "--width", "16", "--height", "16", "--num-points", "100", "--no-images"]


def _environment(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "PATCHSPLAT_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    env.pop("PATCHSPLAT_DEBUG", None)
    return env | extra


def patchsplat(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patchsplat.cli", *args], cwd=cwd, env=_environment(**env),
                          capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its content: the earlier results a failure must leave as they were."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def scene(tmp_path) -> Path:
    """A workspace folder holding an earlier result (a tiny demo scene) at scene/."""
    completed = patchsplat(tmp_path, "demo-scene", "scene", *TINY_SCENE)
    assert completed.returncode == 0, completed.stderr
    return tmp_path / "scene"


def params_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "params.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ---------------------------------------------------------------- params.yaml


@pytest.mark.parametrize(("text", "fragments"), [
    ("train:\n  steps: true\n", ["train.steps", "not a boolean"]),
    ("train:\n  milestones: [10, false]\n", ["train.milestones", "not a boolean"]),
    ("train:\n  steps: 5\ntrain:\n  seed: 1\n", ["line 3", "duplicate key 'train'", "first at line 1"]),
    ("mesh:\n  memory_budget_gb: .inf\n", ["mesh.memory_budget_gb", "finite"]),
    ("train:\n  means_lr: .nan\n", ["train.means_lr", "finite"]),
    ("train:\n  strategy:\n    cap_max: .inf\n", ["train.strategy.cap_max"]),
])
def test_bad_params_values(tmp_path, text, fragments):
    path = params_file(tmp_path, text)
    assert_one_line(patchsplat(tmp_path, "config", "--params", str(path)), "params.yaml", *fragments)


def test_params_that_are_not_utf8(tmp_path):
    path = params_file(tmp_path, b"train:\n  steps: \xff\xfe\n")
    assert_one_line(patchsplat(tmp_path, "config", "--params", str(path)), "params.yaml", "not UTF-8", "0xff")


def test_params_that_are_a_folder(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    assert_one_line(patchsplat(tmp_path, "config"), "params.yaml", "is a folder")


def test_an_alias_bomb_is_refused_quickly_in_a_short_line(tmp_path):
    """Nine levels of nine aliases: 9**9 values once expanded (a 226 MB error line before)."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        previous, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    path = params_file(tmp_path, "\n".join(lines) + "\ntrain:\n  steps: *j\n")
    started = time.perf_counter()
    line = assert_one_line(patchsplat(tmp_path, "config", "--params", str(path)), "params.yaml", "aliases")
    assert len(line) < 500 and time.perf_counter() - started < 30


def test_a_long_bad_value_is_echoed_short(tmp_path):
    path = params_file(tmp_path, f"train:\n  steps: {'x' * 100_000}\n")
    line = assert_one_line(patchsplat(tmp_path, "config", "--params", str(path)), "train.steps")
    assert len(line) < 500


def test_a_stage_script_refuses_bad_params_in_one_line(tmp_path):
    """Stages read params.yaml with load_params too: the stage's process says it the same way."""
    params_file(tmp_path, "merge:\n  min_opacity: true\n")
    completed = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "merge.py")], cwd=tmp_path,
                               env=_environment(DVC_STAGE="merge"), capture_output=True, text=True, timeout=300)
    assert_one_line(completed, "params.yaml", "merge.min_opacity")


# ---------------------------------------------------------------- output folders and disks


def test_an_output_under_a_file_is_one_line_and_the_scene_is_kept(tmp_path, scene):
    """An output path under a regular file: refused before anything is made, naming the file in the way."""
    before = snapshot(scene)
    (tmp_path / "blocker").write_text("a file, not a folder")
    assert_one_line(patchsplat(tmp_path, "demo-scene", "blocker/sub/scene", *TINY_SCENE), "blocker",
                    "is a file, not a folder")
    assert snapshot(scene) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: chmod cannot make one")
def test_a_read_only_output_folder_for_real(tmp_path, scene):
    before = snapshot(scene)
    tmp_path.chmod(0o555)
    try:
        assert_one_line(patchsplat(tmp_path, "demo-scene", "scene", "--seed", "1", *TINY_SCENE), "Permission denied")
    finally:
        tmp_path.chmod(0o755)
    assert snapshot(scene) == before


def _demo_scene_in_process(out: Path, capsys) -> str:
    """The demo-scene command run in this process, under its guard (the caller's working folder holds no
    params.yaml: the demo's defaults): the one line it ends with."""
    with pytest.raises(SystemExit) as exit_:
        cli.demo_scene(out_dir=out, params=Path("params.yaml"), seed=1, width=16, height=16, num_cameras=4,
                       num_points=100, extent=None, images=False)
    assert exit_.value.code != 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_a_full_disk_names_the_file_that_could_not_be_written(scene, monkeypatch, capsys):
    """write() on a full disk names no file (ENOSPC only): the atomic writer adds the one it was writing."""
    monkeypatch.chdir(scene.parent)
    before = snapshot(scene)

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)
    line = _demo_scene_in_process(scene, capsys)
    monkeypatch.undo()
    assert "manifest.json" in line and "No space left on device" in line, line
    assert snapshot(scene) == before


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_permission_denied_or_a_read_only_file_system(scene, monkeypatch, capsys, code):
    """The rename that puts the finished scene in place is refused: one line naming it, the old one kept."""
    monkeypatch.chdir(scene.parent)
    before = snapshot(scene)
    real_replace = os.replace

    def refused(source, target, *args, **kwargs):
        if Path(target) == scene and str(source).endswith(".tmp"):  # the new scene, not the old one put back
            raise OSError(code, os.strerror(code), str(source), None, str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refused)
    line = _demo_scene_in_process(scene, capsys)
    monkeypatch.undo()
    assert os.strerror(code) in line and "scene" in line, line
    assert snapshot(scene) == before
    assert not [path for path in scene.parent.iterdir() if path.name.startswith(".scene.")], "temporaries left behind"


@pytest.mark.parametrize(("error", "expected"), [
    (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "data/merged/splats.ply"), "data/merged/splats.ply: Is a directory"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "writing outputs: No space left on device"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "reports/x.json"), "reports/x.json: Permission denied"),
])
def test_the_guard_turns_file_errors_into_one_line(capsys, error, expected):
    def failing() -> None:
        raise error

    with pytest.raises(SystemExit) as exit_:
        guarded(failing)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {expected}"


# ---------------------------------------------------------------- reports and checkpoints


def test_a_corrupt_report_in_summary(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "validation.json").write_text('{"stats": {"num_cameras": 4}}')
    (reports / "split.json").write_text('{"num_patches": 2, "mode": ')  # cut short by a crash
    before = snapshot(reports)
    assert_one_line(patchsplat(tmp_path, "summary"), "split.json", "not a readable report", "line 1")
    assert snapshot(reports) == before


def test_a_report_that_is_not_an_object_in_summary(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluation.json").write_text("[1, 2]")
    assert_one_line(patchsplat(tmp_path, "summary"), "evaluation.json", "JSON object expected")


def test_a_non_utf8_report_in_summary(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "validation.json").write_bytes(b'{"stats": "\xff"}')
    assert_one_line(patchsplat(tmp_path, "summary"), "validation.json", "not UTF-8")


@pytest.fixture(scope="module")
def patch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("failures")
    generate_demo_scene(with_overrides(None, num_cameras=12, width=32, height=24, num_points=800), root / "scene", progress=False)
    split_scene(root / "scene", root / "patches", SplitConfig(mode="grid", rows=1, cols=1, min_cameras=1), ValidateConfig(),
                progress=False)
    return root / "patches" / "p0"


def test_a_truncated_checkpoint_is_set_aside_and_training_starts_afresh(patch, tmp_path):
    params = params_file(tmp_path, "train:\n  steps: 6\n  checkpoint_every: 3\n  eval_every: 6\n  backend: torch\n"
                                   "tracking:\n  enabled: false\n")
    checkpoints = tmp_path / "out.checkpoints"
    checkpoints.mkdir()
    torch.save({"fingerprint": "x", "state": {"step": 1}}, checkpoints / "last.pt")
    damaged = (checkpoints / "last.pt").read_bytes()[:100]  # a copy cut short (a full disk, a killed copy)
    (checkpoints / "last.pt").write_bytes(damaged)
    completed = patchsplat(tmp_path, "train", str(patch), "--out", str(tmp_path / "out"), "--params", str(params), "--resume")
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    assert "damaged checkpoint" in completed.stdout and "last.pt.corrupt" in completed.stdout, completed.stdout
    assert (checkpoints / "last.pt.corrupt").read_bytes() == damaged
    assert torch.load(checkpoints / "last.pt", weights_only=True)["state"]["step"] == 6
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 6


# ---------------------------------------------------------------- unexpected errors: --debug


def _summary_with_a_bug(tmp_path: Path, *options: str, **env: str) -> subprocess.CompletedProcess:
    """`patchsplat summary` with a bug planted in it (a ZeroDivisionError): an internal error, not a user's."""
    program = ("import sys, patchsplat.summary as summary; from patchsplat.cli import app; "
               "summary.print_summary = lambda reports: 1 / 0; app(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", program, *options, "summary"], cwd=tmp_path, env=_environment(**env),
                          capture_output=True, text=True, timeout=300)


def test_an_unexpected_error_is_one_line_and_a_trace_file(tmp_path):
    line = assert_one_line(_summary_with_a_bug(tmp_path), "ZeroDivisionError", "full trace in", "--debug")
    trace = Path(line.split("full trace in ")[1].split(";")[0])
    try:
        assert "Traceback" in trace.read_text() and "ZeroDivisionError" in trace.read_text()
    finally:
        trace.unlink()


@pytest.mark.parametrize(("options", "env"), [(("--debug",), {}), ((), {"PATCHSPLAT_DEBUG": "1"})])
def test_debug_shows_the_traceback(tmp_path, options, env):
    completed = _summary_with_a_bug(tmp_path, *options, **env)
    assert completed.returncode != 0
    assert "Traceback" in completed.stderr and "ZeroDivisionError" in completed.stderr
    assert "full trace in" not in completed.stderr


def test_a_report_missing_a_key_names_the_file_and_the_key(tmp_path):
    """Valid JSON of another version or a hand edit: the key it lacks is named, not a KeyError traceback."""
    from patchsplat.config import MergeConfig
    from patchsplat.errors import InputError
    from patchsplat.merge import merge_patches

    patch = tmp_path / "patches" / "p0"
    patch.mkdir(parents=True)
    (patch / "patch.json").write_text(json.dumps({"world_to_aligned": [[1, 0, 0]] * 3, "images_dir": "images",
                                                  "heldout_image_names": []}))
    with pytest.raises(InputError, match=r"patch\.json: patch description lacks the key 'core_cell'"):
        merge_patches(tmp_path / "patches", tmp_path / "trained", tmp_path / "merged", MergeConfig())
    (patch / "patch.json").write_text(json.dumps({"core_cell": [None] * 4}))
    with pytest.raises(InputError, match=r"patch\.json: patch description lacks the key 'world_to_aligned'"):
        merge_patches(tmp_path / "patches", tmp_path / "trained", tmp_path / "merged", MergeConfig())
    assert not (tmp_path / "merged").exists()
