"""Run comparison (patchsplat.compare) against a SQLite store and a real MLflow server.

The runs are logged with MlflowClient the way the pipeline flow logs them: a parent run per
pipeline run (tag patchsplat.kind=pipeline, params.yaml flattened, end-of-run metrics) with
child runs per stage and patch, plus a lone train run from a plain ``dvc repro``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from patchsplat.compare import (
    best_index,
    latest_pipeline_runs,
    load_comparison,
    print_comparison,
    write_comparison_png,
)
from patchsplat.errors import InputError

EXPERIMENT = "patchsplat"
T0 = 1_700_000_000_000  # ms; fixed start times make "latest" deterministic

BASE_PARAMS = {
    "train.init_scale": "1.0",
    "train.steps": "300",
    "train.strategy.cap_max": "20000",
    "split.rows": "2",
    "split.cols": "1",
    "patch_overrides.p1.init_scale": "None",
    "evaluate.fscore_threshold": "0.05",
}


@dataclass
class Logged:
    """The ids of the logged runs, oldest first."""

    baseline: str
    sweep_low: str
    sweep_high: str
    children: list[str]
    lone_train: str


def _pipeline_metrics(psnr: float, patch_psnrs: tuple[float, float], chamfer: float, gaussians: int) -> dict[str, float]:
    metrics = {
        "evaluate.psnr": psnr, "evaluate.ssim": psnr / 40, "evaluate.chamfer": chamfer, "evaluate.fscore": 0.7,
        "evaluate.accuracy": chamfer / 2, "evaluate.completeness": chamfer / 2, "evaluate.num_gaussians": 2 * gaussians,
        "validate.num_cameras": 24, "split.num_patches": 2,
    }
    for patch, value in zip(("p0", "p1"), patch_psnrs):
        metrics |= {
            f"train.{patch}.heldout_psnr": value, f"train.{patch}.heldout_ssim": value / 40,
            f"train.{patch}.gaussians": gaussians, f"train.{patch}.attempts": 1, f"train.{patch}.train_loss": 0.05,
            f"evaluate.images.per_patch.{patch}.psnr": value - 1.5, f"evaluate.images.per_patch.{patch}.l1": 0.04,
            f"evaluate.images.per_patch.{patch}.num_views": 6,
        }
    return metrics


def _log_run(client, experiment_id: str, name: str, start: int, *, tags: dict, params: dict, metrics: dict) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=name)
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=[Metric(key, float(value), start + 500, 0) for key, value in metrics.items()],
                     params=[Param(key, value) for key, value in params.items()])
    # The curve of a train run: an earlier point of a metric whose latest value must win.
    if "final_heldout_psnr" in metrics:
        client.log_batch(run_id, metrics=[Metric("heldout_psnr", 5.0, start + 100, 10),
                                          Metric("heldout_psnr", metrics["final_heldout_psnr"], start + 400, 300)])
    client.set_terminated(run_id, "FINISHED", end_time=start + 900)
    return run_id


def log_runs(client, lone_train: bool = True) -> Logged:
    """Three pipeline runs (the last two a sweep over train.init_scale), children and a lone train run."""
    experiment_id = client.create_experiment(EXPERIMENT)
    pipeline = {"patchsplat.kind": "pipeline", "patchsplat.outcome": "succeeded", "git.commit": "abc123def456",
                "prefect.flow_run_id": "flow-1"}
    sweep = {"sweep.id": "s1", "sweep.param": "train.init_scale"}
    baseline = _log_run(client, experiment_id, "baseline", T0, tags=pipeline, params=BASE_PARAMS,
                        metrics=_pipeline_metrics(24.0, (23.0, 25.0), 0.02, 1000))
    low = _log_run(client, experiment_id, "sweep-0.5", T0 + 100_000, tags={**pipeline, **sweep, "sweep.value": "0.5"},
                   params={**BASE_PARAMS, "train.init_scale": "0.5"},
                   metrics=_pipeline_metrics(25.0, (24.5, 26.0), 0.018, 1200))
    high = _log_run(client, experiment_id, "sweep-2.0", T0 + 200_000, tags={**pipeline, **sweep, "sweep.value": "2.0"},
                    params={**BASE_PARAMS, "train.init_scale": "2.0"},
                    metrics=_pipeline_metrics(23.5, (22.0, 25.5), 0.025, 900))
    # Children start after every parent: a "latest runs" that forgot the kind tag would pick them.
    children = [
        _log_run(client, experiment_id, f"train-{patch}", T0 + 210_000 + index,
                 tags={"mlflow.parentRunId": high, "stage": "train", "patch": patch},
                 params={"train.init_scale": "2.0"}, metrics={"final_heldout_psnr": 22.0 + index})
        for index, patch in enumerate(("p0", "p1"))
    ]
    children.append(_log_run(client, experiment_id, "evaluate", T0 + 220_000,
                             tags={"mlflow.parentRunId": high, "stage": "evaluate"}, params={},
                             metrics={"psnr": 23.5}))
    if not lone_train:  # each REST call to a server costs ~0.3 s here; the server test does not need it
        return Logged(baseline, low, high, children, "")
    lone = _log_run(client, experiment_id, "train-p1", T0 + 300_000, tags={"stage": "train", "patch": "p1"},
                    params={"train.init_scale": "3.0", "train.steps": "300"},
                    metrics={"final_heldout_psnr": 27.25, "final_gaussians": 800, "final_attempts": 2})
    return Logged(baseline, low, high, children, lone)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Logged]:
    """A SQLite store with the runs (created once: a new store's schema set-up takes seconds)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, log_runs(MlflowClient(tracking_uri=uri))


def _printed(comparison) -> str:
    console = Console(record=True, width=250, force_terminal=False, color_system=None)
    print_comparison(comparison, console=console)
    return console.export_text()


def _row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row starting with ``first_cell`` (box characters removed)."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.replace("│", "┃").split("┃") if cell.strip()]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def check_default_comparison(uri: str, logged: Logged) -> None:
    """The default selection and its comparison: shared by the SQLite and the server test."""
    assert latest_pipeline_runs(uri, EXPERIMENT) == [logged.sweep_low, logged.sweep_high]
    assert latest_pipeline_runs(uri, EXPERIMENT, count=5) == [logged.baseline, logged.sweep_low, logged.sweep_high]
    comparison = load_comparison(uri, EXPERIMENT, [])
    assert [run.run_id for run in comparison.runs] == [logged.sweep_low, logged.sweep_high]
    assert comparison.differing_params == {"train.init_scale": ["0.5", "2.0"]}
    assert comparison.overall["evaluate.psnr"] == [25.0, 23.5]
    assert comparison.overall["evaluate.chamfer"] == [0.018, 0.025]
    assert comparison.per_patch["heldout_psnr"] == {"p0": [24.5, 22.0], "p1": [26.0, 25.5]}
    assert comparison.per_patch["scene_psnr"] == {"p0": [23.0, 20.5], "p1": [24.5, 24.0]}
    assert comparison.per_patch["gaussians"]["p1"] == [1200, 900]
    assert not any(name.startswith(("train.p", "evaluate.images.per_patch")) for name in comparison.overall)

    text = _printed(comparison)
    assert _row(text, "train.init_scale")[1:] == ["0.5", "2.0"]
    for same in BASE_PARAMS.keys() - {"train.init_scale"}:
        assert same not in text, f"identical param {same} listed"
    assert "6 settings identical" in text
    assert _row(text, "evaluate.psnr")[1:] == ["25", "23.5", "-1.5"]
    assert _row(text, "evaluate.num_gaussians")[1:] == ["2,400", "1,800", "-600"]
    assert _row(text, "held-out PSNR (train)")[1:] == ["p0", "24.5", "22", "-2.5"]
    assert _row(text, "p1")[1:] in (["26", "25.5", "-0.5"], ["24.5", "24", "-0.5"])
    # Column headers: short id + name, the sweep value below.
    assert f"{logged.sweep_low[:8]} sweep-0.5" in text
    assert "train.init_scale=2.0" in text


def test_default_comparison_sqlite(store):
    check_default_comparison(*store)


def test_explicit_runs_keep_the_given_order_and_accept_short_ids(store):
    uri, logged = store
    comparison = load_comparison(uri, EXPERIMENT, [logged.sweep_high, logged.baseline[:8], logged.sweep_high])
    assert [run.run_id for run in comparison.runs] == [logged.sweep_high, logged.baseline]
    assert comparison.differing_params == {"train.init_scale": ["2.0", "1.0"]}
    three = load_comparison(uri, EXPERIMENT, [logged.baseline, logged.sweep_low, logged.sweep_high])
    assert three.overall["evaluate.fscore"] == [0.7, 0.7, 0.7]
    assert "delta" not in _printed(three)  # a delta only says something between two runs


def test_lone_train_run_is_compared_generically(store):
    uri, logged = store
    comparison = load_comparison(uri, EXPERIMENT, [logged.sweep_high, logged.lone_train])
    assert comparison.per_patch["heldout_psnr"]["p1"] == [25.5, 27.25]
    assert comparison.per_patch["heldout_psnr"]["p0"] == [22.0, None]
    assert comparison.per_patch["attempts"]["p1"] == [1, 2]
    # The train curve's own heldout_psnr points are not an overall metric beside final_heldout_psnr.
    assert "heldout_psnr" not in comparison.overall and "final_heldout_psnr" not in comparison.overall
    assert comparison.differing_params["split.rows"] == ["2", None]
    text = _printed(comparison)
    assert "(train)" in text  # marked as not a pipeline run


def test_best_value_direction():
    assert best_index("evaluate.psnr", [24.0, 25.0]) == 1
    assert best_index("evaluate.chamfer", [0.01, 0.02]) == 0
    assert best_index("evaluate.images.per_patch.p0.l1", [0.05, 0.04, None]) == 1
    assert best_index("evaluate.num_gaussians", [1, 2]) is None  # no better direction
    assert best_index("evaluate.psnr", [24.0, 24.0]) is None  # nothing to single out


def test_png_is_written_atomically(store, tmp_path):
    from PIL import Image

    uri, logged = store
    comparison = load_comparison(uri, EXPERIMENT, [logged.baseline, logged.sweep_low, logged.sweep_high])
    target = tmp_path / "out" / "comparison.png"
    assert write_comparison_png(comparison, target) == target
    with Image.open(target) as image:
        image.verify()
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 500
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50  # bars, text, legend: not a blank canvas
    assert target.stat().st_size > 20_000
    assert [path.name for path in target.parent.iterdir()] == ["comparison.png"]  # no temporary left behind


def test_unknown_run_id_names_it(store):
    uri, logged = store
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(InputError, match=missing) as caught:
        load_comparison(uri, EXPERIMENT, [logged.baseline, missing])
    assert caught.value.kind == "unknown_run"
    assert "\n" not in caught.value.one_line()
    for wrong in ("deadbeef", "not-a-run"):  # a short id that matches nothing; not an id at all
        with pytest.raises(InputError, match=wrong):
            load_comparison(uri, EXPERIMENT, [wrong])


def test_missing_store_and_experiment_without_runs(store, tmp_path):
    from mlflow.tracking import MlflowClient

    missing = tmp_path / "nothing" / "mlflow.db"
    with pytest.raises(InputError, match="no runs have been tracked") as caught:
        load_comparison(f"sqlite:///{missing}", EXPERIMENT, [])
    assert caught.value.kind == "no_runs"
    assert not missing.exists() and not missing.parent.exists()  # looking must not create a store
    uri, _ = store
    with pytest.raises(InputError, match="'elsewhere'.*does not exist"):
        latest_pipeline_runs(uri, "elsewhere")
    MlflowClient(tracking_uri=uri).create_experiment("empty")
    with pytest.raises(InputError, match="no pipeline runs"):
        load_comparison(uri, "empty", [])


def test_unreachable_server_fails_fast():
    started = time.monotonic()
    with pytest.raises(InputError, match="does not answer") as caught:
        load_comparison(f"http://127.0.0.1:{_free_port()}", EXPERIMENT, [])
    assert caught.value.kind == "tracking_store"
    assert time.monotonic() - started < 10  # not MLflow's minutes of retries


# --- the same through an MLflow server -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


SERVER_TEST = "test_comparison_through_mlflow_server"


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path


def _start_server(folder: Path) -> Server:
    port = _free_port()
    with (folder / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'db.sqlite'}", "--default-artifact-root", str(folder / "art")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own group: its workers stop with it
        )
    return Server(process, f"http://127.0.0.1:{port}", folder / "server.log")


def _stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture(scope="module", autouse=True)
def _server_started_early(request, tmp_path_factory):
    """Start ``mlflow server`` when the module starts, if the server test is selected at all.

    It takes ~20 s to answer on a 2-core machine; started here, that overlaps the SQLite tests.
    """
    if not any(item.name == SERVER_TEST for item in request.session.items):
        yield None
        return
    server = _start_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        _stop_server(server)


@pytest.fixture
def mlflow_server(_server_started_early) -> str:
    """The server's URL once it answers; the test is skipped if it does not within 60 s of its start."""
    server = _server_started_early
    assert server is not None
    deadline = time.monotonic() + 60
    while not _answers(f"{server.url}/health"):
        if server.process.poll() is not None or time.monotonic() > deadline:
            tail = server.log.read_text(errors="replace")[-500:]
            pytest.skip(f"mlflow server ({server.url}) did not come up within 60 s: {tail}")
        time.sleep(0.3)
    return server.url


@pytest.mark.slow
def test_comparison_through_mlflow_server(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    logged = log_runs(MlflowClient(tracking_uri=mlflow_server), lone_train=False)
    check_default_comparison(mlflow_server, logged)
    for wrong in ("0123456789abcdef0123456789abcdef", "not-a-run"):
        with pytest.raises(InputError, match=wrong):
            load_comparison(mlflow_server, EXPERIMENT, [wrong])
    comparison = load_comparison(mlflow_server, EXPERIMENT, [logged.baseline[:8], logged.sweep_high])
    assert comparison.differing_params == {"train.init_scale": ["1.0", "2.0"]}
    assert write_comparison_png(comparison, tmp_path / "server.png").stat().st_size > 20_000
