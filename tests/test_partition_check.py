"""`patchsplat check-partition`: the scene trained as one model and as its split, same budget, compared.

One small demo workspace (scene stage only) is checked once for the module (~20 s); the figures are
checked against the evaluate stage's own scoring of the same splats, the budgets against their sums.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import small_workspace
from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.compare import RunSummary, compare_runs
from patchsplat.config import EvaluateConfig, load_params
from patchsplat.partition_check import PartitionCheck, current_partition_check
from patchsplat.partition_check.border import cells_seen, is_border
from patchsplat.partition_check.budget import apportion, patch_overrides
from patchsplat.partition_check.tracking import partition_metrics
from patchsplat.split import SplitLayout
from patchsplat.tracking import ENV_PARENT_RUN_ID
from patchsplat.workspace import Workspace
from project_copy import edit_params


# What earlier tests of the session may leave in the environment (MLflow sets MLFLOW_TRACKING_URI when a
# tracking URI is set in-process): these workspaces' runs must go to their own mlflow.db, as a user's would.
FOREIGN_TRACKING = ("MLFLOW_TRACKING_URI", ENV_PARENT_RUN_ID)


def _cli(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in FOREIGN_TRACKING}
    env["PYTHONPATH"] = str(workspace / "src")
    env["PATCHSPLAT_TRACKING"] = "1"  # conftest turns it off; these workspaces' MLflow runs are checked
    return subprocess.run([sys.executable, "-m", "patchsplat.cli", *args], cwd=workspace, env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    workspace = small_workspace(tmp_path_factory.mktemp("partition"))
    edit_params(workspace, lambda params: params["tracking"].update({"enabled": True}))
    scene = _cli(workspace, "stage", "scene")
    assert scene.returncode == 0, scene.stderr
    completed = _cli(workspace, "check-partition", ".")
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}"
    return workspace, completed


# --- the budget and the border views -----------------------------------------------------------


def test_a_budget_is_shared_in_proportion_and_sums_to_the_total():
    weights = {"p0": 30, "p1": 20, "p2": 25, "p3": 9}
    shares = apportion(700, weights)
    assert sum(shares.values()) == 700
    for patch_id, weight in weights.items():
        assert abs(shares[patch_id] - 700 * weight / 84) < 1
    # The Gaussian cap follows the patch's points: the same Gaussians per SfM point as the single model.
    overrides = patch_overrides(700, 40_000, weights, {"p0": 9000, "p1": 6000, "p2": 7500, "p3": 3000}, 20_000)
    assert sum(override["steps"] for override in overrides.values()) == 700
    assert [override["strategy"]["cap_max"] for override in overrides.values()] == [18_000, 12_000, 15_000, 6_000]


def test_every_patch_gets_at_least_the_minimum():
    assert apportion(3, {"p0": 1, "p1": 1, "p2": 1, "p3": 1}) == {"p0": 1, "p1": 1, "p2": 1, "p3": 1}


def test_a_view_is_a_border_view_when_a_second_cell_holds_enough_of_what_it_sees():
    assert not is_border({"p0": 1.0}, 0.1)
    assert not is_border({"p0": 0.95, "p1": 0.05}, 0.1)
    assert is_border({"p0": 0.6, "p1": 0.3, "p2": 0.1}, 0.1)


def test_cells_seen_counts_each_observed_point_in_its_core_cell(checked):
    workspace, _ = checked
    patches = Workspace(workspace).partition_check_dir / "split" / "patches"
    layout = SplitLayout.load(patches)
    arrays = read_model_arrays(workspace / "data" / "scene" / "sparse" / "0")
    name = arrays.image_names[5]
    seen = cells_seen(arrays, layout, [name])[name]
    # By hand: the points this image observes, patch by patch through each core cell's own test.
    observed = np.unique(arrays.obs_point[arrays.obs_image == 5])
    by_hand = {patch.id: patch.core_contains(arrays.xyz[observed]).sum() / len(observed) for patch in layout.patches}
    assert seen == pytest.approx({key: value for key, value in by_hand.items() if value > 0}, abs=1e-4)
    assert sum(seen.values()) == pytest.approx(1.0, abs=1e-3)


# --- the check -----------------------------------------------------------------------------------


def test_the_figures_are_the_evaluate_stages_scores_of_the_same_splats(checked, tmp_path):
    from patchsplat.evaluate import evaluate_scene

    workspace, completed = checked
    record = PartitionCheck.load(Workspace(workspace).partition_report)
    work = Workspace(workspace).partition_check_dir
    for variant, summary in (("single", record.single), ("split", record.merged)):
        report = evaluate_scene(workspace / "data" / "scene", work / variant / "merged" / "splats.ply", None, None,
                                tmp_path / f"{variant}.json", tmp_path / f"{variant}.png", EvaluateConfig(lpips=False),
                                progress=False, trained_dir=work / variant / "trained")
        assert summary.psnr == pytest.approx(report["psnr"], abs=1e-6)
        assert summary.ssim == pytest.approx(report["ssim"], abs=1e-6)
        assert summary.gaussians == report["num_gaussians"]
    assert record.num_views == 4 and record.single.patches == 1 and record.merged.patches == 4
    assert "splitting costs" in completed.stdout and "border views" in completed.stdout


def test_both_variants_train_with_the_same_budget(checked):
    workspace, _ = checked
    record = PartitionCheck.load(Workspace(workspace).partition_report)
    assert record.single.steps == record.merged.steps == 20  # the small demo's train.steps
    work = Workspace(workspace).partition_check_dir
    scene_points = json.loads((work / "single" / "patches" / "p0" / "patch.json").read_text())["num_points"]
    for patch in SplitLayout.load(work / "split" / "patches").patches:
        settings = json.loads((work / "split" / "trained" / patch.id / "settings.json").read_text())["train"]
        assert settings["strategy"]["cap_max"] == max(100, round(record.single.cap_max * patch.num_points / scene_points))
    assert record.merged.gaussians <= record.merged.cap_max


def test_differences_and_the_verdict_follow_from_the_views(checked):
    workspace, _ = checked
    record = PartitionCheck.load(Workspace(workspace).partition_report)
    border = [view for view in record.views if view.border]
    assert record.num_border_views == len(border) > 0
    for view in record.views:
        assert view.psnr_difference == pytest.approx(view.merged_psnr - view.single_psnr)
        assert view.border == is_border(view.cells, 0.1)
    assert record.border_psnr_difference == pytest.approx(np.mean([view.psnr_difference for view in border]))
    assert record.psnr_difference == pytest.approx(record.merged.psnr - record.single.psnr)
    assert record.worst_view == min(border, key=lambda view: view.psnr_difference).name
    assert record.within_target == (record.psnr_difference >= -0.3 and record.border_psnr_difference >= -0.5)


def test_the_worst_border_view_is_drawn(checked):
    workspace, _ = checked
    with Image.open(Workspace(workspace).partition_png) as image:
        image.load()
        assert image.width > 3 * image.height  # four panels side by side


def test_a_second_check_with_the_same_settings_only_rescores(checked):
    workspace, _ = checked
    before = PartitionCheck.load(Workspace(workspace).partition_report)
    again = _cli(workspace, "check-partition", ".")
    assert again.returncode == 0, again.stderr
    assert "resuming the check" in again.stdout and "steps, at most" not in again.stdout
    after = PartitionCheck.load(Workspace(workspace).partition_report)
    assert after.views == before.views and after.psnr_difference == before.psnr_difference


def test_the_check_is_current_only_for_the_settings_it_was_made_with(checked, tmp_path):
    workspace, _ = checked
    place = Workspace(workspace)
    params = load_params(place.params_file)
    assert current_partition_check(place, params) is not None
    changed = params.model_copy(update={"train": params.train.model_copy(update={"seed": 7})})
    assert current_partition_check(place, changed) is None


def test_its_own_mlflow_run_holds_the_figures(checked):
    from mlflow.tracking import MlflowClient

    workspace, _ = checked
    record = PartitionCheck.load(Workspace(workspace).partition_report)
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("patchsplat").experiment_id],
                              "tags.stage = 'check-partition'")
    assert runs, "no check-partition run was logged"
    assert runs[0].data.metrics["partition.psnr_difference"] == pytest.approx(record.psnr_difference)
    artifacts = {item.path for item in client.list_artifacts(runs[0].info.run_id, "reports")}
    assert artifacts == {"reports/partition.json", "reports/partition_border.png"}


def test_the_pipeline_run_and_the_comparison_show_the_figures(checked, monkeypatch):
    from mlflow.tracking import MlflowClient

    from patchsplat.orchestrate.pipeline_run import PipelineRun

    workspace, _ = checked
    monkeypatch.setenv("PATCHSPLAT_TRACKING", "1")
    for name in FOREIGN_TRACKING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(workspace)
    place = Workspace(workspace)
    record = PartitionCheck.load(place.partition_report)
    pipeline = PipelineRun.start(place, load_params(place.params_file), None, run_name="pipeline test")
    pipeline.finish("succeeded", [])
    run = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}").get_run(pipeline.run_id)
    assert run.data.metrics["partition.border_psnr_difference"] == pytest.approx(record.border_psnr_difference)
    comparison = compare_runs([RunSummary("a", "a", None, "FINISHED", metrics=partition_metrics(record)),
                               RunSummary("b", "b", None, "FINISHED", metrics={})])
    assert comparison.overall["partition.psnr_difference"] == [pytest.approx(record.psnr_difference), None]
    # ... with the budgets it was made at, without which the difference cannot be read
    assert comparison.overall["partition.merged_steps"] == [record.merged.steps, None]


def test_a_split_of_one_patch_is_refused_in_one_line_and_keeps_the_last_check(checked, tmp_path):
    workspace, _ = checked
    report = Workspace(workspace).partition_report
    kept = report.read_bytes()
    params = workspace / "params.yaml"
    original = params.read_text()
    try:
        edit_params(workspace, lambda content: content["split"].update({"rows": 1, "cols": 1}))
        refused = _cli(workspace, "check-partition", ".")
    finally:
        params.write_text(original)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "params.yaml" in refused.stderr and "one patch" in refused.stderr
    assert report.read_bytes() == kept and (Workspace(workspace).partition_check_dir / "single").is_dir()


def test_a_workspace_without_a_scene_is_refused_in_one_line(tmp_path):
    workspace = small_workspace(tmp_path / "empty")
    refused = _cli(workspace, "check-partition", ".")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "data/scene" in refused.stderr and "no scene yet" in refused.stderr
    assert not Workspace(workspace).partition_check_dir.exists()


def test_the_pipeline_budget_trains_each_patch_as_a_run_would_and_keeps_the_single_model(checked):
    """--budget pipeline: the split's patches train with the steps the profile gives each (here the small demo's
    train.steps each, not a share of them); the single model is reused, not retrained; the report and the table
    give both variants' steps and training seconds, the price of the split in time."""
    workspace, _ = checked
    before = PartitionCheck.load(Workspace(workspace).partition_report)
    completed = _cli(workspace, "check-partition", ".", "--budget", "pipeline")
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}"
    assert "single p0:" not in completed.stdout and "split: the budgets changed" in completed.stdout
    after = PartitionCheck.load(Workspace(workspace).partition_report)
    assert after.budget == "pipeline" and before.budget == "steps"
    assert after.single == before.single
    assert after.merged.steps == 20 * after.merged.patches > before.merged.steps
    assert after.single.train_seconds > 0 and after.merged.train_seconds > 0
    assert "training seconds" in completed.stdout and "as a pipeline run trains it" in " ".join(completed.stdout.split())


def test_the_run_report_shows_the_check_made_with_the_current_settings_only(checked, tmp_path):
    from patchsplat.run_report import write_run_report

    workspace, _ = checked
    place = Workspace(workspace)
    record = PartitionCheck.load(place.partition_report)
    page = write_run_report(place, [], "succeeded", out=tmp_path / "run.html").read_text()
    section = page[page.index("<h2>What splitting costs</h2>"):page.index("<h2>Viewer</h2>")]
    assert f"{record.psnr_difference:+.2f}" in section and f"worst view {record.worst_view}" in section
    assert section.count("data:image/png;base64,") == 1
    edit_params(workspace, lambda params: params["train"].update({"seed": 11}))
    try:
        page = write_run_report(place, [], "succeeded", out=tmp_path / "run.html").read_text()
    finally:
        edit_params(workspace, lambda params: params["train"].update({"seed": 0}))
    section = page[page.index("<h2>What splitting costs</h2>"):page.index("<h2>Viewer</h2>")]
    assert "made with other settings" in section and "data:image/png" not in section


def test_the_split_can_be_given_a_multiple_of_the_single_models_steps(checked):
    """--split-steps-factor 2: the split retrains with twice the single model's steps (its cap unchanged), the
    single model is kept, and the report and table say the budgets were not equal; with the pipeline budget, which
    sets each patch's steps itself, the factor is refused in one line. (Last in the file: it retrains the split.)"""
    workspace, _ = checked
    refused = _cli(workspace, "check-partition", ".", "--budget", "pipeline", "--split-steps-factor", "2")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "--split-steps-factor" in refused.stderr and "applies to --budget steps only" in refused.stderr
    before = PartitionCheck.load(Workspace(workspace).partition_report)
    completed = _cli(workspace, "check-partition", ".", "--split-steps-factor", "2")
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}"
    assert "single p0:" not in completed.stdout and "split: the budgets changed" in completed.stdout
    after = PartitionCheck.load(Workspace(workspace).partition_report)
    assert after.single == before.single and after.split_steps_factor == 2
    assert after.merged.steps == 2 * after.single.steps
    assert after.merged.cap_max == sum(
        json.loads((Workspace(workspace).partition_check_dir / "split" / "trained" / patch / "settings.json").read_text())
        ["train"]["strategy"]["cap_max"] for patch in SplitLayout.load(Workspace(workspace).partition_check_dir / "split" / "patches").ids)
    assert "2 x the single model's 20 steps" in " ".join(completed.stdout.split())
    assert "at 2 x the steps (the target is for equal budgets)" in " ".join(completed.stdout.split())
