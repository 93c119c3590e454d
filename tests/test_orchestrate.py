"""Fast checks of the orchestration pieces around the flow: schedules, sweep set-up, DVC lock tags,
the patch-scoped fault injection and the orchestration settings. (The flow itself: tests/test_flow.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from patchsplat.config import parse_params
from patchsplat.errors import InputError, PipelineFailed
from patchsplat.orchestrate.dvc_lock import pipeline_hash_tags, stage_hash_tags, tag_key
from patchsplat.orchestrate.schedule import build_deployment, check_cron
from patchsplat.orchestrate.sweep import check_sweep, parse_values, run_sweep, sweep_key
from patchsplat.train.loop import Fault
from patchsplat.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path) -> Path:
    """params.yaml and dvc.yaml of this project with four patches, as a workspace has them."""
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    return tmp_path


def test_serve_builds_a_cron_deployment_of_the_flow_for_this_workspace(workspace):
    deployment = build_deployment(workspace, "0 2 * * *", timezone="Europe/Berlin")
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "Europe/Berlin"
    assert deployment.parameters == {"workspace": str(workspace.resolve())}
    assert deployment.name == f"patchsplat-{workspace.name}"
    # by module path: a workspace from `patchsplat init` holds no patchsplat source file
    assert deployment.entrypoint == "patchsplat.orchestrate.flow.reconstruct"


@pytest.mark.parametrize("cron", ["every night", "61 2 * * *", "* * *"])
def test_a_bad_cron_expression_is_one_line(cron):
    with pytest.raises(InputError) as error:
        check_cron(cron)
    assert error.value.where == "--cron" and "\n" not in error.value.one_line()


def test_serve_refuses_a_folder_that_is_not_a_workspace(tmp_path):
    with pytest.raises(InputError, match="not a patchsplat workspace"):
        build_deployment(tmp_path, "0 2 * * *")


def test_serve_command_bad_cron_exits_with_one_line(workspace):
    completed = subprocess.run([sys.executable, "-m", "patchsplat.cli", "serve", "--cron", "every night"],
                               cwd=workspace, capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: --cron: ") and "Traceback" not in completed.stderr


def test_sweep_values_and_keys():
    assert parse_values("0.3, 0.5,1,true,abc") == [0.3, 0.5, 1, True, "abc"]
    with pytest.raises(InputError, match=r"VALUES: '\[1' is not a valid YAML value"):
        parse_values("0.5,[1")  # a value the shell passed half-quoted: one line, not a YAML traceback
    with pytest.raises(InputError):
        parse_values("0.3,,1")
    assert sweep_key("init_scale", "p1") == "patch_overrides.p1.init_scale"
    assert sweep_key("train.init_scale", "p1") == "patch_overrides.p1.init_scale"
    assert sweep_key("train.init_scale", None) == "train.init_scale"


def test_sweep_refuses_unknown_settings_patches_and_values_before_running(workspace):
    params = workspace / "params.yaml"
    assert check_sweep(params, "init_scale", [0.5], "p1") == ("patch_overrides.p1.init_scale", 1.0)
    assert check_sweep(params, "split.rows", [3], None) == ("split.rows", 2)
    with pytest.raises(InputError, match="not a setting"):
        check_sweep(params, "train.no_such_thing", [1], None)
    with pytest.raises(InputError, match="no patch 'p9'"):
        check_sweep(params, "init_scale", [1], "p9")
    with pytest.raises(InputError, match="greater than 0"):
        check_sweep(params, "init_scale", [0.5, -1], "p1")


def test_sweep_runs_every_value_with_the_baseline_last_and_restores_params(workspace):
    params = workspace / "params.yaml"
    original = params.read_bytes()
    seen = []

    def fake_flow(workspace: str, run_tags: dict, always_record: bool) -> dict:
        """Records the value the flow would have seen; the value 2.0 'fails'."""
        settings = parse_params(yaml.safe_load(params.read_text()))
        seen.append((settings.train_settings("p1").init_scale, run_tags["sweep.baseline"]))
        if settings.train_settings("p1").init_scale == 2.0:
            raise PipelineFailed("dvc.yaml", "1 of 4 patches failed")
        return {"mlflow_run_id": f"run-{len(seen)}"}

    result = run_sweep(workspace, "init_scale", [0.5, 1.0, 2.0], "p1", fake_flow)
    assert seen == [(0.5, "false"), (2.0, "false"), (1.0, "true")]
    assert result.run_ids == {"0.5": "run-1", "1.0": "run-3"} and list(result.failures) == ["2.0"]
    assert params.read_bytes() == original  # comments and layout too


def test_lock_hashes_become_mlflow_tags(workspace):
    lock = {"schema": "2.0", "stages": {
        "split": {"cmd": "python stages/split.py",
                  "deps": [{"path": "data/scene", "hash": "md5", "md5": "aaa.dir"}, {"path": "stages/split.py", "md5": "bbb"}],
                  "outs": [{"path": "data/patches", "hash": "md5", "md5": "ccc.dir"}]},
        "train@p0": {"cmd": "python stages/train.py p0",
                     "deps": [{"path": "data/patches/p0", "hash": "md5", "md5": "ddd.dir"}],
                     "outs": [{"path": "data/trained/p0/splats.ply", "hash": "md5", "md5": "eee"}]},
    }}
    (workspace / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert stage_hash_tags(lock["stages"]["split"]) == {
        "dvc.deps.data/scene": "aaa.dir", "dvc.deps.stages/split.py": "bbb", "dvc.outs.data/patches": "ccc.dir"}
    tags = pipeline_hash_tags(Workspace(workspace))
    # inputs are the deps no stage produces (data/patches/p0 lies inside split's output)
    assert {key for key in tags if key.startswith("dvc.inputs.")} == {"dvc.inputs.data/scene", "dvc.inputs.stages/split.py"}
    assert tags["dvc.outs.data/trained/p0/splats.ply"] == "eee" and len(tags["dvc.lock.md5"]) == 32
    assert tag_key("dvc.deps./data/caps:reef@2") == "dvc.deps./data/caps_reef_2"


def test_faults_with_a_patch_prefix_reach_only_that_patch():
    text = "nan_grad@10,p1/oom@20:2"
    assert Fault.parse_many(text, "p0") == [Fault("nan_grad", 10, 1)]
    assert Fault.parse_many(text, "p1") == [Fault("nan_grad", 10, 1), Fault("oom", 20, 2)]


def test_orchestration_settings_are_validated_once_with_one_line_errors():
    with pytest.raises(InputError, match="orchestration.task_runner"):
        parse_params({"orchestration": {"task_runner": "ray"}})
    with pytest.raises(InputError, match="orchestration.patch_retries"):
        parse_params({"orchestration": {"patch_retries": -1}})
    assert parse_params({}).orchestration.max_concurrent_patches == 0


def test_patches_failing_for_one_reason_are_named_together():
    from patchsplat.orchestrate.stage_runner import group_failures

    camera = "data/patches/{}/sparse/0/cameras.bin: camera 1 is SIMPLE_RADIAL"
    ladder = "training failed after 6 attempts; last: nonfinite (attempts record: data/trained/p2.failed.json)"
    reasons = {"p0": camera.format("p0"), "p1": camera.format("p1"), "p2": ladder, "p10": camera.format("p10")}
    assert group_failures(reasons) == f"p0, p1, p10: {camera.format('<patch>')}; p2: {ladder}"
    assert group_failures({"p3": camera.format("p3")}) == f"p3: {camera.format('p3')}"


@pytest.mark.parametrize(
    ("kind", "reason", "runs"),
    [
        ("unsupported_camera_model", "data/patches/p0/sparse/0/cameras.bin: camera 1 is SIMPLE_RADIAL", 1),  # bad input
        ("file_error", "data/trained/p0/splats.ply: No space left on device", 1),  # a refused write: would recur
        ("training_failed", "data/patches/p0: training failed after 6 attempts", 3),  # the ladder ran out: resume
        ("internal_error", "unexpected ZeroDivisionError: division by zero (full trace in /tmp/t.txt)", 3),  # a bug
        ("crashed", "the stage process ended without a record (killed? out of memory?)", 3),
        ("dvc_failed", "Unable to acquire lock", 3),  # DVC failed before the stage ran
    ],
)
def test_prefect_retries_a_patch_by_the_kind_of_its_failure(tmp_path, monkeypatch, prefect_harness, kind, reason, runs):
    """A retry resumes a crashed or exhausted training; for bad input it would only repeat the same one line.
    The decision reads the kind of the stage's outcome (from its record), not the wording of its reason."""
    from prefect import flow

    from patchsplat.orchestrate import flow as flow_module
    from patchsplat.orchestrate.stage_runner import StageOutcome

    calls = []

    def fake_stage(stage, workspace, environment, log, on_records=None):
        calls.append(stage)
        if stage.startswith("prepare@"):
            return StageOutcome(stage, True, 0.0, 0, patch="p0")
        return StageOutcome(stage, kind != "dvc_failed", 0.0, 1, reason, kind, "p0")

    monkeypatch.setattr(flow_module, "run_stage", fake_stage)

    @flow
    def one_patch() -> tuple[bool, str]:
        state = flow_module.patch_task.with_options(retries=2, retry_delay_seconds=0)("p0", str(tmp_path), {},
                                                                                     return_state=True)
        return state.is_failed(), state.message

    assert one_patch() == (True, f"train@p0: {reason}")
    assert calls.count("train@p0") == runs


def test_only_failures_a_second_run_may_not_repeat_are_worth_a_retry():
    from patchsplat.errors import FileError, InputError, TrainingFailed, worth_a_retry
    from patchsplat.orchestrate.stage_runner import StageOutcome

    assert worth_a_retry(TrainingFailed("p0", "ladder ran out").kind) and worth_a_retry("internal_error")
    assert not worth_a_retry(InputError("cameras.bin", "SIMPLE_RADIAL", kind="unsupported_camera_model").kind)
    assert not worth_a_retry(InputError("params.yaml", "bad").kind) and not worth_a_retry(FileError("x", "disk full").kind)
    assert not worth_a_retry(None)
    assert not StageOutcome("train@p0", True, 1.0, 130, "interrupted", "training_failed", "p0", interrupted=True).worth_a_retry
    assert not StageOutcome("train@p0", True, 1.0, 0, patch="p0").worth_a_retry
