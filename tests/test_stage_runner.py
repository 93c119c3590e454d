"""The stage runner learns what happened to a stage from the stage's own record, never from its prose.

A tiny DVC project whose one per-patch stage (``train@p3``) does what a test asks — succeed, raise a
failure that is not bad input, raise bad input, die without a word — and prints misleading "error: "
lines besides: the outcome's kind, patch and reason must come from the record the guard wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from patchsplat.errors import CRASHED, DVC_FAILED, INTERNAL_ERROR, worth_a_retry
from patchsplat.orchestrate.stage_runner import run_repro, run_stage, stage_environment
from patchsplat.workspace import Workspace

STAGE_SCRIPT = textwrap.dedent("""
    import os, sys
    from patchsplat.console import guarded
    from patchsplat.errors import InputError, TrainingFailed

    def main():
        # Prose a parser of stderr would misread: the record alone says what failed.
        print("error: data/patches/p3/sparse/0/cameras.bin: camera 1 is SIMPLE_RADIAL", file=sys.stderr)
        mode = open("mode.txt").read().strip()
        if mode == "ladder":
            raise TrainingFailed("data/patches/" + sys.argv[1], "training failed after 6 attempts; last: nonfinite")
        if mode == "input":
            raise InputError("data/patches/" + sys.argv[1] + "/patch.json", "missing", kind="missing_file")
        if mode == "bug":
            raise ZeroDivisionError("division by zero")
        if mode == "killed":
            os.kill(os.getpid(), 9)
        open("out-" + sys.argv[1] + ".txt", "w").write(mode)

    guarded(main)
""")


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    (tmp_path / "mode.txt").write_text("ok")
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          train:
            foreach: [p3]
            do:
              cmd: {sys.executable} stage.py ${{item}}
              deps: [stage.py, mode.txt]
              outs: ["out-${{item}}.txt"]
    """))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True,
                   env=stage_environment())
    return Workspace(tmp_path)


def _run(workspace: Workspace, mode: str):
    (workspace.root / "mode.txt").write_text(mode)
    lines: list[str] = []
    return run_stage("train@p3", workspace, stage_environment(), lines.append), lines


def test_a_failure_that_is_not_bad_input_comes_back_with_its_kind_and_patch_from_the_record(workspace):
    outcome, lines = _run(workspace, "ladder")
    assert outcome.failed and outcome.ran and not outcome.interrupted
    assert (outcome.kind, outcome.patch) == ("training_failed", "p3")
    assert outcome.reason == "data/patches/p3: training failed after 6 attempts; last: nonfinite"
    assert outcome.worth_a_retry
    # the misleading line reached the log all the same; it decided nothing
    assert any("SIMPLE_RADIAL" in line for line in lines)


def test_bad_input_is_not_worth_a_retry(workspace):
    outcome, _ = _run(workspace, "input")
    assert (outcome.kind, outcome.patch, outcome.reason) == ("missing_file", "p3", "data/patches/p3/patch.json: missing")
    assert not outcome.worth_a_retry


def test_an_internal_error_and_a_process_killed_without_a_word_are_worth_a_retry(workspace):
    bug, _ = _run(workspace, "bug")
    assert bug.kind == INTERNAL_ERROR and bug.reason.startswith("unexpected ZeroDivisionError: division by zero")
    assert bug.worth_a_retry
    killed, _ = _run(workspace, "killed")
    assert killed.failed and killed.ran and killed.kind == CRASHED and killed.patch == "p3" and killed.worth_a_retry


def test_a_stage_that_ran_then_one_that_is_up_to_date(workspace):
    ran, _ = _run(workspace, "ok")
    assert (ran.returncode, ran.ran, ran.kind, ran.patch) == (0, True, None, "p3")
    again, _ = _run(workspace, "ok")
    assert (again.returncode, again.ran) == (0, False)


def test_dvc_failing_before_the_stage_runs_is_named_as_such(workspace):
    outcome = run_stage("train@p9", workspace, stage_environment(), lambda line: None)
    assert outcome.failed and not outcome.ran and outcome.kind == DVC_FAILED and "train@p9" in outcome.reason
    assert outcome.worth_a_retry


def test_a_whole_repro_hands_over_every_stage_record_and_names_the_failed_stage(workspace):
    (workspace.root / "mode.txt").write_text("ladder")
    records = []
    outcome = run_repro([], workspace, stage_environment(), lambda line: None, on_records=records.extend)
    assert outcome.failed and outcome.failure == "stage train@p3 failed (training_failed)"
    assert [(record.stage, record.outcome, record.kind) for record in records] == [
        ("train@p3", "failed", "training_failed")]
    assert json.loads(records[0].to_json())["patch"] == "p3"


def test_the_guard_records_a_refused_write_as_a_file_error_not_bad_input(tmp_path, monkeypatch, capsys):
    import errno

    from patchsplat.console import guarded
    from patchsplat.stage_record import RECORDS_ENV, read_records

    monkeypatch.setenv(RECORDS_ENV, str(tmp_path / "records.jsonl"))

    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "data/merged/splats.ply")

    with pytest.raises(SystemExit) as exited:
        guarded(full_disk, stage="merge")
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == "error: data/merged/splats.ply: No space left on device"
    started, closing = read_records(tmp_path / "records.jsonl")
    assert (started.stage, started.outcome, closing.outcome, closing.kind, closing.patch) == (
        "merge", "started", "failed", "file_error", None)
    assert closing.reason == "data/merged/splats.ply: No space left on device" and not worth_a_retry(closing.kind)


@pytest.mark.parametrize(("runner", "address", "expected"), [
    ("local", None, 1),                          # 2 patches at once on 2 cores: one thread each
    ("dask", None, 1),                           # the local Dask cluster patchsplat starts: the same machine
    ("dask", "tcp://elsewhere:8786", None),      # a cluster's machines: their own cores, torch's default
])
def test_patches_trained_at_once_on_this_machine_share_its_cores(monkeypatch, runner, address, expected):
    from patchsplat.config import OrchestrationConfig
    from patchsplat.orchestrate.flow import patch_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert patch_threads(OrchestrationConfig(task_runner=runner, dask_address=address), concurrency=2) == expected
