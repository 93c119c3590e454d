"""The Prefect flow ``reconstruct`` end to end on a small demo, in a fresh copy of the project.

What a user relies on: the flow runs every stage and leaves DVC clean (``dvc.lock`` records what
it made); a second run with nothing changed does no work; a patch that fails after its recovery
ladder is reported with its reason while the other patches complete, and Prefect retries it; the
attempts show in the Prefect log and in MLflow; MLflow holds one parent run per pipeline run with a
child per stage and per patch, tagged with the git commit, the dvc.lock hashes and the flow run id;
patch training runs on a Dask cluster's worker processes; runs compare; a sweep ends with the
comparison and the workspace as it was.

The tests share one workspace and run in file order (each builds on the state the previous left).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import edit_params, small_workspace
from patchsplat.output_folder import is_patchsplat_png

pytestmark = pytest.mark.slow

ALL_STAGES = {"scene", "validate", "split", *(f"{stage}@p{i}" for stage in ("prepare", "train") for i in range(4)),
              "merge", "mesh", "evaluate"}
FAIL_P1 = ",".join(f"p1/nan_grad@3:{attempt}" for attempt in range(1, 7))  # every attempt of p1's ladder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, prefect_harness) -> Path:
    workspace = small_workspace(tmp_path_factory.mktemp("flow"))

    def flow_settings(params):
        params["tracking"]["enabled"] = True
        params["orchestration"].update({"max_concurrent_patches": 2, "patch_retries": 1, "retry_delay_seconds": 0})
        params["mesh"]["voxels_per_scene"] = 96

    edit_params(workspace, flow_settings)
    for command in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace"]):
        subprocess.run(command, cwd=workspace, check=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATCHSPLAT_TRACKING", "1")
        patch.setenv("PYTHONPATH", str(workspace / "src"))  # the stages run the copy's code, which DVC hashes
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield workspace


def _client(workspace: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")


def _runs(workspace: Path, query: str = "") -> list:
    client = _client(workspace)
    experiment = client.get_experiment_by_name("patchsplat")
    return client.search_runs([experiment.experiment_id], filter_string=query, max_results=1000) if experiment else []


def _pipeline_runs(workspace: Path) -> list:
    return sorted(_runs(workspace, "tags.`patchsplat.kind` = 'pipeline'"), key=lambda run: run.info.start_time)


def _dvc_status(workspace: Path, *targets: str) -> dict:
    completed = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *targets], cwd=workspace,
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def _lock(workspace: Path) -> dict:
    import yaml

    return yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]


def _lock_md5(entry: dict, path: str) -> str:
    return next(item["md5"] for item in entry["outs"] if item["path"] == path)


def _flow_logs(flow_run_id: str) -> list[str]:
    """The Prefect log of one flow run (its tasks included), as the API stored it."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    async def read() -> list[str]:
        await APILogHandler.aflush()  # logs reach the API in batches
        messages: list[str] = []
        async with get_client() as client:
            while True:  # the API returns at most 200 logs per request
                page = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                              limit=200, offset=len(messages))
                messages += [log.message for log in page]
                if len(page) < 200:
                    return messages

    return asyncio.run(read())


def _task_runs(flow_run_id: str) -> list:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                               sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)

    return asyncio.run(read())


def test_flow_runs_every_stage_and_leaves_dvc_clean(workspace):
    from patchsplat.orchestrate.flow import run_pipeline

    summary = run_pipeline(workspace=str(workspace))
    assert summary["outcome"] == "succeeded"
    assert {stage["stage"] for stage in summary["stages"] if stage["ran"]} == ALL_STAGES
    assert _dvc_status(workspace) == {}
    assert set(_lock(workspace)) == ALL_STAGES
    for path in ("data/trained/p3/splats.ply", "data/merged/splats.ply", "data/mesh/mesh.ply", "reports/evaluation.json"):
        assert (workspace / path).exists(), path


def test_mlflow_holds_a_parent_run_with_a_child_per_stage_and_patch(workspace, tmp_path):
    (parent,) = _pipeline_runs(workspace)
    children = _runs(workspace, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(child.data.tags["dvc.stage"] for child in children) == sorted(ALL_STAGES)
    assert {child.data.tags.get("patch") for child in children if child.data.tags["stage"] == "train"} == {"p0", "p1", "p2", "p3"}

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout.strip()
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    assert parent.data.tags["git.commit"] == commit
    assert parent.data.tags["patchsplat.outcome"] == "succeeded" and parent.info.status == "FINISHED"
    for child in children:
        assert child.data.tags["git.commit"] == commit
        assert child.data.tags["prefect.flow_run_id"] == flow_run_id

    # dvc.lock's hashes: of every output on the parent, of its own outputs on a stage's run
    lock = _lock(workspace)
    splats = "data/trained/p2/splats.ply"
    assert parent.data.tags[f"dvc.outs.{splats}"] == _lock_md5(lock["train@p2"], splats)
    (train_p2,) = [child for child in children if child.data.tags["dvc.stage"] == "train@p2"]
    assert train_p2.data.tags[f"dvc.outs.{splats}"] == _lock_md5(lock["train@p2"], splats)
    assert parent.data.tags["dvc.lock.md5"]

    # params flattened from params.yaml; the final metrics of every stage; curves with steps
    assert parent.data.params["train.steps"] == "20" and parent.data.params["split.rows"] == "2"
    trained = json.loads((workspace / "data/trained/p2/metrics.json").read_text())
    evaluation = json.loads((workspace / "reports/evaluation.json").read_text())
    assert parent.data.metrics["train.p2.heldout_psnr"] == pytest.approx(trained["heldout_psnr"])
    assert parent.data.metrics["evaluate.psnr"] == pytest.approx(evaluation["psnr"])
    history = _client(workspace).get_metric_history(train_p2.info.run_id, "heldout_psnr")
    assert sorted(metric.step for metric in history) == [10, 20]
    artifacts = {item.path for item in _client(workspace).list_artifacts(parent.info.run_id, "reports")}
    assert {"reports/evaluation.json", "reports/evaluation_grid.png", "reports/split_layout.png", "reports/run.html"} <= artifacts
    # The run report logged is this run's: written before the parent run closed, saying it succeeded.
    logged = _client(workspace).download_artifacts(parent.info.run_id, "reports/run.html", str(tmp_path))
    page = Path(logged).read_text(encoding="utf-8")
    assert "succeeded" in page[: page.find("<h2>")] and "p3 (prepare + train)" in page  # the flow's own rows


def test_second_run_with_nothing_changed_does_no_work(workspace):
    from patchsplat.orchestrate.flow import run_pipeline

    lock_before = (workspace / "dvc.lock").read_bytes()
    runs_before = len(_runs(workspace))
    summary = run_pipeline(workspace=str(workspace))
    assert summary["outcome"] == "up_to_date" and summary["stages"] == []
    assert (workspace / "dvc.lock").read_bytes() == lock_before
    assert len(_runs(workspace)) == runs_before


def test_a_failing_patch_is_reported_while_the_others_complete(workspace, monkeypatch):
    from patchsplat.errors import PipelineFailed
    from patchsplat.orchestrate.flow import run_pipeline

    edit_params(workspace, lambda params: params["train"].update({"seed": 1}))  # every patch trains again
    monkeypatch.setenv("PATCHSPLAT_FAULTS", FAIL_P1)
    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(workspace=str(workspace))
    message = failed.value.one_line()
    assert "1 of 4 patches failed (p1: " in message and "training failed after" in message
    assert "merge, mesh and evaluate were not run" in message
    # what failed, as the stage recorded it: the kind of failure (worth a retry) and the patch
    (p1_outcome,) = [stage for stage in failed.value.summary["stages"] if stage["stage"] == "train@p1"]
    assert (p1_outcome["kind"], p1_outcome["patch"]) == ("training_failed", "p1")

    # the other patches trained with the new setting and DVC recorded them
    assert _dvc_status(workspace, "train@p0", "train@p2", "train@p3") == {}
    assert _lock(workspace)["train@p0"]["params"]["params.yaml"]["train"]["seed"] == 1
    assert not (workspace / "data/trained/p1/splats.ply").exists() and (workspace / "data/trained/p1.failed.json").exists()

    # Prefect retried the patch once (patch_retries: 1); its log shows every attempt of the ladder
    flow_run_id = failed.value.summary["flow_run_id"]
    (p1_task,) = [run for run in _task_runs(flow_run_id) if run.name == "train-p1"]
    assert p1_task.run_count == 2 and p1_task.state.is_failed()
    logs = "\n".join(_flow_logs(flow_run_id))
    assert "attempt 1: failed (nonfinite at step 3" in logs and "-> next: lr_factor" in logs

    # MLflow: the failed pipeline run names the patch; each try of p1 is a failed run with its attempts
    parent = _pipeline_runs(workspace)[-1]
    assert parent.info.status == "FAILED" and parent.data.tags["patchsplat.outcome"] == "failed"
    assert "training failed after" in parent.data.tags["failed.p1"]
    tries = _runs(workspace, f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`dvc.stage` = 'train@p1'")
    assert len(tries) == 2
    for run in tries:
        assert run.data.tags["outcome"] == "failed" and run.data.tags["attempt.1"].startswith("attempt 1: failed (nonfinite")


def test_patch_training_on_a_dask_cluster_of_worker_processes(workspace, monkeypatch):
    """The fault gone, the next run trains only the failed patch — in a Dask worker process."""
    from distributed import Client, LocalCluster

    from patchsplat.orchestrate.flow import run_pipeline

    monkeypatch.delenv("PATCHSPLAT_FAULTS", raising=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        summary = run_pipeline(workspace=str(workspace), task_runner="dask", dask_address=cluster.scheduler_address)
    assert summary["outcome"] == "succeeded"
    # prepare@p1 succeeded in the failed run; only its training and the whole-scene stages are left
    assert {stage["stage"] for stage in summary["stages"] if stage["ran"]} == {"train@p1", "merge", "mesh", "evaluate"}
    assert _dvc_status(workspace) == {}
    pids = {int(pid) for line in _flow_logs(summary["flow_run_id"]) for pid in re.findall(r"^patch p\d+ on .*, process (\d+)$", line)}
    assert pids and pids <= worker_pids and os.getpid() not in pids


def _cli(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or "", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "patchsplat.cli", *args], cwd=workspace, env=env,
                          capture_output=True, text=True)


def test_compare_shows_the_setting_that_differs_and_metrics_per_patch(workspace):
    first, *_, last = _pipeline_runs(workspace)
    completed = _cli(workspace, "compare", first.info.run_id, last.info.run_id, "--out", "comparisons/first-last.png")
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    assert re.search(r"train\.seed\s.*\b0\b.*\b1\b", output)
    for patch_id in ("p0", "p1", "p2", "p3"):
        assert patch_id in output
    assert "psnr" in output
    png = workspace / "comparisons/first-last.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # The PNG says who wrote it: the next compare may replace it; a user's own file there is refused.
    assert is_patchsplat_png(png)
    assert _cli(workspace, "compare", first.info.run_id, last.info.run_id, "--out", "comparisons/first-last.png").returncode == 0
    from PIL import Image

    Image.new("RGB", (8, 8), "orange").save(workspace / "holiday.png")
    refused = _cli(workspace, "compare", first.info.run_id, last.info.run_id, "--out", "holiday.png")
    assert refused.returncode != 0 and "holiday.png" in refused.stderr and "Traceback" not in refused.stderr


def test_sweep_of_one_patch_setting_ends_with_the_comparison_and_the_workspace_as_it_was(workspace):
    params_before = (workspace / "params.yaml").read_bytes()
    runs_before = {run.info.run_id for run in _pipeline_runs(workspace)}
    completed = _cli(workspace, "sweep", "init_scale", "0.5", "--patch", "p1")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (workspace / "params.yaml").read_bytes() == params_before
    assert _dvc_status(workspace) == {}
    new = [run for run in _pipeline_runs(workspace) if run.info.run_id not in runs_before]
    assert [(run.data.tags["sweep.value"], run.data.tags["sweep.baseline"]) for run in new] == [("0.5", "false"), ("1.0", "true")]
    assert new[0].data.params["patch_overrides.p1.init_scale"] == "0.5"
    assert "patch_overrides.p1.init_scale" in completed.stdout
    (png,) = (workspace / "comparisons").glob("sweep-*.png")
    logged = _client(workspace).list_artifacts(new[-1].info.run_id, "sweep")
    assert [item.path for item in logged] == [f"sweep/{png.name}"]


def test_served_flow_runs_on_its_deployment(workspace):
    """`patchsplat serve --cron`: the deployment is registered with its schedule and runs the flow when triggered."""
    import asyncio
    import time

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    server = subprocess.Popen([sys.executable, "-m", "patchsplat.cli", "serve", "--cron", "0 3 * * *", "--name", "nightly"],
                              cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def deployment():
        async with get_client() as client:
            try:
                return await client.read_deployment_by_name("reconstruct/nightly")
            except Exception:  # noqa: BLE001 - not registered yet
                return None

    try:
        deadline = time.monotonic() + 120
        while (registered := asyncio.run(deployment())) is None:
            assert server.poll() is None and time.monotonic() < deadline, "serve did not register the deployment"
            time.sleep(1)
        assert registered.schedules[0].schedule.cron == "0 3 * * *"
        assert registered.parameters == {"workspace": str(workspace.resolve())}
        flow_run = run_deployment("reconstruct/nightly", timeout=240)
        if asyncio.iscoroutine(flow_run):
            flow_run = asyncio.run(flow_run)
        assert flow_run.state.is_completed(), flow_run.state
        # the workspace was up to date: the scheduled run found nothing to do (its logs come from the
        # serving process's own log handler, in batches: allow them a moment to arrive)
        deadline = time.monotonic() + 30
        while True:
            logs = _flow_logs(str(flow_run.id))
            if any("nothing to do" in line for line in logs):
                break
            assert time.monotonic() < deadline, logs
            time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=60)
