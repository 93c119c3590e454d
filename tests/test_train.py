"""Per-patch training: outputs, held-out metrics, the failures it notices and how it recovers, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from patchsplat.config import SplitConfig, TrainConfig, ValidateConfig, deep_merge
from patchsplat.demo import generate_demo_scene, with_overrides
from patchsplat.prepare import PreparedPatch, prepare_patch
from patchsplat.profiles import PatchFacts, resolve_train
from patchsplat.splat_io import inria_property_names, read_splats_ply
from patchsplat.split import split_scene
from patchsplat.split import HOLD_OUT_EVERY
from patchsplat.train.data import PatchViews
from patchsplat.train.loop import Fault, PatchTrainingFailed, train_patch
from patchsplat.train.records import TrainedMetrics
from patchsplat.workspace import failed_record_of

SMALL = {"steps": 60, "eval_every": 30, "checkpoint_every": 20, "health": {"check_every": 10},
         "strategy": {"refine_start_iter": 20, "refine_every": 20, "refine_stop_iter": 50}, "backend": "torch"}


def settings(**changes) -> TrainConfig:
    return TrainConfig.model_validate(deep_merge(deep_merge(TrainConfig().model_dump(), SMALL), changes))


@pytest.fixture(scope="module")
def patch(tmp_path_factory) -> Path:
    """One patch of a small demo scene (a 1 x 1 split: the whole scene)."""
    root = tmp_path_factory.mktemp("train")
    scene = root / "scene"
    generate_demo_scene(with_overrides(None, num_cameras=24, width=64, height=48, num_points=3000), scene, progress=False)
    split_scene(scene, root / "patches", SplitConfig(mode="grid", rows=1, cols=1, min_cameras=1), ValidateConfig(), progress=False)
    return root / "patches" / "p0"


def train(patch: Path, tmp_path: Path, config: TrainConfig, **options) -> TrainedMetrics:
    prepared = tmp_path / "prepared"
    prepare_patch(patch, prepared, config)
    options.setdefault("log", lambda message: None)
    return train_patch(patch, prepared, tmp_path / "out", config, checkpoint_dir=tmp_path / "checkpoints",
                       progress=False, **options)


def attempts(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "out" / "attempts.json").read_text())


def test_outputs_are_complete_and_the_ply_is_standard(patch, tmp_path):
    metrics = train(patch, tmp_path, settings())
    out = tmp_path / "out"
    for name in ("splats.ply", "metrics.json", "curve.csv", "heldout.png", "settings.json", "attempts.json"):
        assert (out / name).exists(), name
    vertex = PlyData.read(str(out / "splats.ply"))["vertex"]
    assert [p.name for p in vertex.properties] == inria_property_names(15)
    assert vertex.count == metrics.gaussians
    assert metrics.attempts == 1 and not metrics.recovered
    assert metrics.steps_per_second > 0 and metrics.peak_memory_mb >= 0 and metrics.memory_estimate_mb > 0
    header = (out / "curve.csv").read_text().splitlines()[0]
    assert header.startswith("step,attempt,loss,heldout_psnr")
    effective = json.loads((out / "settings.json").read_text())
    assert effective["train"]["steps"] == 60


def test_the_near_transparent_gaussians_are_counted_and_a_wasted_budget_is_said(patch, tmp_path):
    """metrics.json's transparent_fraction is the share of splats.ply's Gaussians below the health check's opacity;
    when it is large (a strong opacity penalty fades them), the log says so in one line."""
    messages: list[str] = []
    faded = settings(strategy={"opacity_reg": 2.0}, opacities_lr=0.2)
    metrics = train(patch, tmp_path, faded, log=messages.append)
    opacities = 1.0 / (1.0 + np.exp(-np.asarray(read_splats_ply(tmp_path / "out" / "splats.ply")["opacities"])))
    assert metrics.transparent_fraction == pytest.approx(float(np.mean(opacities < 0.01)), abs=1e-6)
    assert metrics.transparent_fraction > 0.3
    (line,) = [message for message in messages if "near-transparent" in message]
    assert f"{metrics.transparent_fraction:.0%} of the {metrics.gaussians:,} Gaussians" in line and "opacity_reg" in line


def test_training_improves_on_the_initial_points(patch, tmp_path):
    short = train(patch, tmp_path / "a", settings(steps=1, eval_every=1))
    longer = train(patch, tmp_path / "b", settings(steps=120, eval_every=120))
    assert longer.heldout_psnr > short.heldout_psnr + 2.0


def test_heldout_psnr_is_what_the_saved_splats_render(patch, tmp_path):
    """Render the held-out views from the PLY (world frame) and compute PSNR by hand."""
    from patchsplat.render import rasterize

    metrics = train(patch, tmp_path, settings())
    splats = read_splats_ply(tmp_path / "out" / "splats.ply")
    frame = PreparedPatch.load(tmp_path / "prepared").frame
    views = PatchViews(patch, frame)
    values = []
    for view in views.test_views:
        # The views are in the canonical frame; the PLY is in the world frame: map it back.
        means = (splats["means"] - torch.tensor(frame.centre, dtype=torch.float32)) * frame.scale
        colours, _, _ = rasterize(
            means, splats["quats"], torch.exp(splats["scales"]) * frame.scale, torch.sigmoid(splats["opacities"]),
            torch.cat([splats["sh0"], splats["shN"]], dim=1), view.viewmat[None], view.K[None], view.width, view.height,
            sh_degree=0, backend="torch",
        )
        rendered = colours[0].clamp(0, 1).numpy().astype(np.float64)
        truth = views.image(view).numpy().astype(np.float64)
        values.append(10 * np.log10(1.0 / np.mean((rendered - truth) ** 2)))
    # sh_degree stays 0 in a 60-step run (one band per 1000 steps)
    assert metrics.heldout_psnr == pytest.approx(float(np.mean(values)), abs=0.05)


def test_every_eighth_image_is_held_out_and_never_trained_on(patch, tmp_path):
    prepare_patch(patch, tmp_path / "prepared", settings())
    views = PatchViews(patch, PreparedPatch.load(tmp_path / "prepared").frame)
    names = sorted(view.name for view in views.all_views)
    assert [view.name for view in views.test_views] == names[::HOLD_OUT_EVERY]
    from patchsplat.train.loop import _Run

    run = _Run(patch, tmp_path / "prepared", None, settings(), [], False, lambda m: None, None)
    seen = {run.view_for_step(step, views.train_views).name for step in range(200)}
    assert seen == {view.name for view in views.train_views}
    assert not seen & {view.name for view in views.test_views}


def test_overlap_views_are_picked_less_often_as_train_overlap_view_weight_says(patch, tmp_path):
    from patchsplat.train.loop import _Run

    prepare_patch(patch, tmp_path / "prepared", settings())
    views = PatchViews(patch, PreparedPatch.load(tmp_path / "prepared").frame)
    assert set(views.core_fractions.values()) == {1.0}  # a 1 x 1 split: every view sees only its core
    names = [view.name for view in views.train_views]
    # Half the views look mostly outside the core; at weight 0.2 they are picked (0.1 + 0.9 x 0.2) / 1 as often.
    fractions = {name: 1.0 if index % 2 else 0.1 for index, name in enumerate(names)}

    def picks(weight: float) -> list[str]:
        run = _Run(patch, tmp_path / "prepared", None, settings(overlap_view_weight=weight), [], False, lambda m: None, None)
        return [run.view_for_step(step, views.train_views, fractions).name for step in range(4000)]

    weighted = picks(0.2)
    overlap = sum(fractions[name] < 1 for name in weighted) / len(weighted)
    assert overlap == pytest.approx(0.28 / 1.28, abs=0.03)
    assert picks(0.2) == weighted  # the order depends on the seed and the step only: a resume sees the same views
    uniform = picks(1.0)  # today's order: every view once per epoch, whatever the fractions say
    assert sorted(uniform[: len(names)]) == sorted(names)
    only_core = picks(0.0)  # a view is then picked for its core part alone: 0.1 as often
    assert sum(fractions[name] < 1 for name in only_core) / len(only_core) == pytest.approx(0.1 / 1.1, abs=0.03)


def test_a_tiny_initial_scale_is_noticed_and_recovered_by_the_ladder(patch, tmp_path):
    """The motivating failure, reproduced on purpose: an initial scale that does not fit the patch."""
    metrics = train(patch, tmp_path, settings(init_scale=0.01))
    record = attempts(tmp_path)
    assert metrics.recovered and record[-1]["outcome"] == "succeeded"
    failed = record[:-1]
    assert len(failed) == 3 and all(a["failure_kind"] == "scale" and "scales vanished" in a["reason"] for a in failed)
    assert [a["settings"]["init_scale_ratio"] for a in record] == [1.0, 2.0, 4.0, 8.0]
    assert all(a["next_change"] == {"init_scale_factor": 2.0} for a in failed)


def test_nan_gradients_with_a_finite_loss_roll_back_and_lower_the_learning_rate(patch, tmp_path):
    metrics = train(patch, tmp_path, settings(), faults=[Fault("nan_grad", 35)])
    record = attempts(tmp_path)
    assert record[0]["failure_kind"] == "nonfinite" and "non-finite gradient" in record[0]["reason"]
    assert "finite" in record[0]["reason"] and record[0]["failed_at_step"] == 35
    assert record[1]["settings"]["lr_factor"] == 0.5
    assert record[1]["start_step"] == 31  # the state after the last passed health check (step 30)
    assert metrics.recovered and np.isfinite(metrics.heldout_psnr)


def test_out_of_memory_retries_at_a_lower_resolution(patch, tmp_path):
    metrics = train(patch, tmp_path, settings(), faults=[Fault("oom", 15)])
    record = attempts(tmp_path)
    assert record[0]["failure_kind"] == "out_of_memory"
    assert record[1]["settings"]["resolution_factor"] == 2
    assert metrics.resolution_factor == 2 and metrics.recovered


def test_a_rasterizer_error_climbs_the_scale_ladder(patch, tmp_path):
    train(patch, tmp_path, settings(), faults=[Fault("raster_error", 5)])
    record = attempts(tmp_path)
    assert record[0]["failure_kind"] == "scale" and "invalid configuration argument" in record[0]["reason"]
    assert record[1]["settings"]["init_scale_ratio"] == 2.0 and record[1]["start_step"] == 0


def test_an_exhausted_ladder_fails_with_one_line_and_keeps_the_record(patch, tmp_path):
    faults = [Fault("nan_grad", 5, attempt) for attempt in range(1, 10)]
    with pytest.raises(PatchTrainingFailed) as error:
        train(patch, tmp_path, settings(), faults=faults)
    assert "training failed after 3 attempts" in str(error.value)
    assert not (tmp_path / "out").exists()  # complete or absent
    record = json.loads(failed_record_of(tmp_path / "out").read_text())
    assert [a["outcome"] for a in record] == ["failed"] * 3


def test_the_memory_planner_lowers_the_resolution_to_fit_the_budget(patch, tmp_path):
    metrics = train(patch, tmp_path, settings(memory_budget_gb=0.01, steps=10))
    assert metrics.resolution_factor == 2  # 64 x 48 -> 32 x 24, the smallest side kept >= 16
    assert "resolution lowered to 1/2" in metrics.memory_plan and "cap lowered" in metrics.memory_plan


def test_bf16_autocast_trains_with_an_fp32_loss(patch, tmp_path):
    metrics = train(patch, tmp_path, settings(bf16=True, steps=30))
    assert np.isfinite(metrics.train_loss) and metrics.attempts == 1


def _train_in_subprocess(patch: Path, tmp_path: Path, config: TrainConfig, resume: bool) -> subprocess.Popen:
    script = (
        "import sys, torch;"   # torch's default thread count (the cores): parallel scatter-adds in the backward pass
        "from pathlib import Path; from patchsplat.config import TrainConfig; from patchsplat.train.loop import train_patch;"
        f"config = TrainConfig.model_validate_json({config.model_dump_json()!r});"
        f"train_patch(Path({str(patch)!r}), Path({str(tmp_path / 'prepared')!r}), Path({str(tmp_path / 'out')!r}), config,"
        f" checkpoint_dir=Path({str(tmp_path / 'checkpoints')!r}), resume={resume}, progress=False, log=lambda m: None)"
    )
    return subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PATCHSPLAT_FAULTS": ""})


def test_killed_training_resumes_to_the_same_splats(patch, tmp_path):
    config = settings(steps=80, checkpoint_every=10)
    prepare_patch(patch, tmp_path / "prepared", config)
    uninterrupted = tmp_path / "whole"
    (uninterrupted).mkdir()
    (uninterrupted / "prepared").symlink_to(tmp_path / "prepared")
    assert _train_in_subprocess(patch, uninterrupted, config, resume=False).wait() == 0

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "prepared").symlink_to(tmp_path / "prepared")
    process = _train_in_subprocess(patch, killed, config, resume=False)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < checkpoint["state"]["step"] < 80, "the kill must land mid-run"
    assert not (killed / "out").exists()
    assert _train_in_subprocess(patch, killed, config, resume=True).wait() == 0
    assert (killed / "out" / "splats.ply").read_bytes() == (uninterrupted / "out" / "splats.ply").read_bytes()


def test_a_log_without_a_terminal_gets_a_progress_line_with_an_eta(patch, tmp_path, monkeypatch):
    """Under dvc or Prefect (no terminal) training says where it is, how fast and when it will end."""
    import patchsplat.progress

    monkeypatch.setattr(patchsplat.progress, "DEFAULT_INTERVAL_SECONDS", 0.0)   # every step, for the test
    monkeypatch.setattr(patchsplat.progress, "on_terminal", lambda: False)
    import patchsplat.train.loop as loop

    monkeypatch.setattr(loop, "on_terminal", lambda: False)
    messages = []
    config = settings(steps=40, eval_every=20)
    prepare_patch(patch, tmp_path / "prepared", config)
    train_patch(patch, tmp_path / "prepared", tmp_path / "out", config, progress=True, log=messages.append)
    lines = [m for m in messages if m.startswith("step ")]
    assert lines and lines[-1].startswith("step 40/40 (100%)"), messages
    middle = next(line for line in lines if line.startswith("step 20/40"))
    assert "loss " in middle and " Gaussians" in middle and ("steps/s" in middle or "per step" in middle)
    assert "ETA " in middle and "held-out PSNR" in middle, middle


def test_ctrl_c_stops_after_a_step_with_a_checkpoint_and_resumes_exactly(patch, tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C): one line, exit status 130, a checkpoint of the step
    it stopped at; resuming gives exactly the splats of an uninterrupted run."""
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  steps: 120\n  checkpoint_every: 10\n  backend: torch\n  seed: 3\n"
                      "tracking:\n  enabled: false\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PATCHSPLAT_FAULTS": ""}

    def train_command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "patchsplat.cli", "train", str(patch), "--out", str(out), "--params", str(params), *extra]

    whole = subprocess.run(train_command(tmp_path / "whole"), env=environment, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen(train_command(tmp_path / "cut"), env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (tmp_path / "cut.checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # training is under way (the first checkpoint is at step 10)
    os.killpg(process.pid, signal.SIGINT)
    started = time.time()
    out, err = process.communicate(timeout=60)
    assert time.time() - started < 5, "Ctrl-C must stop training within a step or so"
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    line = next(line for line in (out + err).splitlines() if "interrupted at step" in line)
    step = int(line.split("interrupted at step ")[1].split()[0])
    assert 10 <= step < 120 and "--resume" in line
    assert torch.load(tmp_path / "cut.checkpoints" / "last.pt", weights_only=True)["state"]["step"] == step
    resumed = subprocess.run(train_command(tmp_path / "cut", "--resume"), env=environment, capture_output=True, text=True)
    assert resumed.returncode == 0 and f"resuming from step {step}" in resumed.stdout, resumed.stdout + resumed.stderr
    assert (tmp_path / "cut" / "splats.ply").read_bytes() == (tmp_path / "whole" / "splats.ply").read_bytes()
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["attempts"] == 1   # not a recovery


def test_a_checkpoint_that_cannot_be_written_stops_training_naming_it(patch, tmp_path, monkeypatch):
    """Checkpoints are written by a thread of their own while training goes on: a write that fails (a full disk)
    still stops training with the error naming the file, leaves no half-written file and no outputs."""
    import errno

    real_save = torch.save

    def full_disk(payload, path, *args, **kwargs):
        if Path(path).name.startswith(".last.pt."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(payload, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as raised:
        train(patch, tmp_path, settings())
    assert raised.value.errno == errno.ENOSPC and raised.value.filename.endswith("last.pt"), raised.value
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "checkpoints").iterdir()), "a temporary checkpoint was left behind"


def test_resume_ignores_a_checkpoint_of_other_settings(patch, tmp_path):
    train(patch, tmp_path, settings(steps=20))
    messages = []
    prepared = tmp_path / "prepared"
    train_patch(patch, prepared, tmp_path / "out2", settings(steps=20, seed=1), checkpoint_dir=tmp_path / "checkpoints",
                resume=True, progress=False, log=messages.append)
    assert any("starting afresh" in message for message in messages)


def test_resume_ignores_a_checkpoint_of_other_training_code(patch, tmp_path, monkeypatch):
    """After an upgrade DVC reruns the train stage; its old final checkpoint must not come back as the new model."""
    from patchsplat.train import loop

    train(patch, tmp_path, settings(steps=20))
    monkeypatch.setattr(loop, "_training_code_digest", lambda: b"the next version's training code")
    messages = []
    train_patch(patch, tmp_path / "prepared", tmp_path / "out2", settings(steps=20), checkpoint_dir=tmp_path / "checkpoints",
                resume=True, progress=False, log=messages.append)
    assert any("starting afresh" in message for message in messages), messages
    assert not any("resuming" in message for message in messages), messages


def test_mlflow_run_per_patch_with_params_step_metrics_and_artifacts(patch, tmp_path, monkeypatch):
    import mlflow

    from patchsplat.config import TrackingConfig
    from patchsplat.train.stage import train_patch_stage

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PATCHSPLAT_TRACKING", raising=False)
    config = settings()
    prepare_patch(patch, tmp_path / "prepared", config)
    train_patch_stage("p0", patch_dir=patch, prepared_dir=tmp_path / "prepared", out_dir=tmp_path / "out",
                      checkpoint_dir=tmp_path / "checkpoints", settings=resolve_train(config, PatchFacts.of_patch(patch)),
                      tracking=TrackingConfig(), resume=False, workspace=tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["patchsplat"], output_format="list")
    assert len(runs) == 1 and runs[0].info.run_name == "train-p0"
    run = runs[0]
    assert run.data.params["train.steps"] == "60"
    assert run.data.tags["outcome"] == "succeeded"
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "heldout_psnr")
    assert [point.step for point in history] == [30, 60]
    artifacts = {item.path for item in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metrics.json", "curve.csv", "heldout.png", "attempts.json", "settings.json"} <= artifacts
    assert (tmp_path / "mlartifacts").is_dir()


def test_the_motivating_patch_trains_with_the_defaults(tmp_path):
    """A patch whose region is at a larger scale (the demo's large_scale_region defect: objects 1.5x,
    sparser points) trains with the default settings, without a single failure: the canonical frame
    makes the initial scale fit every patch."""
    from patchsplat.split.partition import Cell

    scene = tmp_path / "scene"
    generate_demo_scene(with_overrides(None, num_cameras=64, width=64, height=48, num_points=8000,
                                       defects={"large_scale_region": 1.5}), scene, progress=False)
    summary = split_scene(scene, tmp_path / "patches", SplitConfig(mode="grid", rows=2, cols=2, ground_axes="model", min_cameras=1),
                          ValidateConfig(), progress=False).summary
    side = json.loads((scene / "manifest.json").read_text())["scene_extent"]["area_side"]
    rotation = np.asarray(summary["world_to_aligned"])
    quadrant = (np.array([[side / 4, side / 4, 0.0]]) @ rotation.T)[:, :2]
    large = next(p["id"] for p in summary["patches"] if Cell.from_list(p["core_cell"]).contains(quadrant)[0])
    ordinary = next(p["id"] for p in summary["patches"] if p["id"] != large)
    spacing = {p["id"]: p["stats"]["mean_nn_spacing"] for p in summary["patches"]}
    assert spacing[large] > 1.2 * spacing[ordinary]  # it really is the odd one out

    defaults = TrainConfig(steps=150, eval_every=150, checkpoint_every=150, backend="torch")
    results = {}
    for patch_id in (large, ordinary):
        prepare_patch(tmp_path / "patches" / patch_id, tmp_path / "prepared" / patch_id, defaults)
        results[patch_id] = train_patch(tmp_path / "patches" / patch_id, tmp_path / "prepared" / patch_id,
                                        tmp_path / "trained" / patch_id, defaults, progress=False, log=lambda m: None)
    assert results[large].attempts == 1 and not results[large].recovered
    assert np.isfinite(results[large].heldout_psnr) and results[large].heldout_psnr > 15


def test_image_names_that_leave_the_folder_are_refused(tmp_path):
    from patchsplat.errors import InputError
    from patchsplat.validate.image_files import safe_image_path

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"")
    (images / "link.png").symlink_to(tmp_path / "outside.png")
    assert safe_image_path(images, "sub/a.png") == (images / "sub" / "a.png").resolve()
    for name in ("../outside.png", "sub/../a.png", "/etc/passwd", "C:\\x.png", "link.png"):
        with pytest.raises(InputError) as error:
            safe_image_path(images, name)
        assert error.value.kind == "path_escape"
