"""Evaluation: image metrics on held-out views (overall, per patch), mesh metrics, and the report files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from conftest import trained_metrics
from patch_layouts import describe_patch

from patchsplat.atomic import write_json
from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import EvaluateConfig
from patchsplat.errors import InputError
from patchsplat.evaluate import evaluate_scene
from patchsplat.evaluate import report as report_module
from patchsplat.evaluate.geometry import compare_surfaces, distances_to_surface, sample_surface
from patchsplat.evaluate.images import hwc_to_nchw, mean_of, view_metrics
from patchsplat.evaluate.mesh import evaluate_mesh
from patchsplat.evaluate.perceptual import lpips_metric
from patchsplat.headline import EvaluateHeadline
from patchsplat.prepare import knn_spacing
from patchsplat.scene_views import SceneCameras, load_image, render_world
from patchsplat.splat_io import read_splats_ply, write_splats_ply
from patchsplat.split import GroundFrame, SplitLayout

REPO_ROOT = Path(__file__).resolve().parents[1]
SH_C0 = 0.28209479177387814
FAST = EvaluateConfig(mesh_samples=5000, grid_views=2)


# --------------------------------------------------------------------------- geometry


def square(z: float = 0.0, x_max: float = 1.0) -> trimesh.Trimesh:
    """The rectangle [0, x_max] x [0, 1] at height z, two triangles."""
    vertices = np.array([[0, 0, z], [x_max, 0, z], [x_max, 1, z], [0, 1, z]], dtype=float)
    return trimesh.Trimesh(vertices, np.array([[0, 1, 2], [0, 2, 3]]), process=False)


def test_chamfer_between_parallel_unit_squares_is_their_distance():
    scores = compare_surfaces(square(0.0), square(0.1), threshold=0.15, samples=20_000)
    # Every point's nearest surface point is straight above/below it: exactly 0.1 both ways.
    assert scores["accuracy"] == pytest.approx(0.1, abs=1e-9)
    assert scores["completeness"] == pytest.approx(0.1, abs=1e-9)
    assert scores["chamfer"] == pytest.approx(0.1, abs=1e-9)
    assert scores["fscore"] == 1.0
    beyond = compare_surfaces(square(0.0), square(0.1), threshold=0.05, samples=20_000)
    assert beyond["precision"] == beyond["recall"] == beyond["fscore"] == 0.0


def test_a_mesh_against_itself_scores_perfectly_up_to_sampling_noise():
    mesh = trimesh.util.concatenate([trimesh.creation.icosphere(subdivisions=3, radius=0.5),
                                     trimesh.creation.box(extents=(2.0, 2.0, 0.1))])
    scores = compare_surfaces(mesh, mesh, threshold=0.05, samples=20_000)   # ~2 sample spacings
    # Independent sample sets (two seeds): what is left is the refinement's residual, far below the
    # bias of nearest-sample distances (~half the sample spacing, sqrt(area / n) / 2 ~ 0.01).
    assert scores["chamfer"] < 1e-4
    assert scores["fscore"] == 1.0
    samples = sample_surface(mesh, 20_000, seed=1)
    queries = sample_surface(mesh, 2_000, seed=2).points
    nearest_sample, _ = cKDTree(samples.points).query(queries)
    refined = distances_to_surface(queries, samples)
    assert nearest_sample.mean() > 0.003 and refined.mean() < 1e-4 and np.all(refined <= nearest_sample + 1e-12)


def test_accuracy_and_completeness_are_asymmetric_for_a_half_mesh():
    """Our mesh covers the half x < 0.5 of the ground truth's unit square."""
    scores = compare_surfaces(square(0.0, x_max=0.5), square(0.0), threshold=0.05, samples=40_000)
    assert scores["accuracy"] < 1e-6                       # every point we have is right
    # Ground-truth points at x in (0.5, 1] are x - 0.5 away: mean over the square = 0.5 * 0.25.
    assert scores["completeness"] == pytest.approx(0.125, abs=0.003)
    assert scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx(0.55, abs=0.01)  # x < 0.55
    assert scores["fscore"] == pytest.approx(2 * 0.55 / 1.55, abs=0.01)


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory) -> Path:
    """A small demo scene (no images: only its model, manifest and ground-truth mesh are used)."""
    from patchsplat.demo import generate_demo_scene, with_overrides

    scene = tmp_path_factory.mktemp("demo") / "scene"
    generate_demo_scene(with_overrides(None, num_cameras=16, width=32, height=24, num_points=2000, render_images=False),
                        scene, progress=False)
    return scene


def test_demo_mesh_is_scored_against_ground_truth_inside_the_observed_box(demo_scene, tmp_path):
    manifest = json.loads((demo_scene / "manifest.json").read_text())
    ground_truth = trimesh.load(demo_scene / "ground_truth_mesh.ply", process=False)
    xyz = read_model_arrays(demo_scene / "sparse" / "0").xyz
    box = manifest["surface_points_bbox"]
    low, high = np.array(box["min"]), np.array(box["max"])

    # Our mesh = the ground truth with its ground (two 648 m^2 triangles spanning the 36 m square)
    # replaced by a ground rectangle over the observed box only.
    is_ground = ground_truth.area_faces > 100.0
    assert is_ground.sum() == 2
    objects = ground_truth.submesh([np.flatnonzero(~is_ground)], append=True)
    corners = np.array([[low[0], low[1], 0], [high[0], low[1], 0], [high[0], high[1], 0], [low[0], high[1], 0]])
    observed_only = trimesh.util.concatenate([objects, trimesh.Trimesh(corners, [[0, 1, 2], [0, 2, 3]], process=False)])
    observed_only.export(tmp_path / "observed.ply")
    config = EvaluateConfig(mesh_samples=20_000)
    result = evaluate_mesh(demo_scene, tmp_path / "observed.ply", xyz, config)

    assert result["reference"] == "ground_truth_mesh"
    assert result["extent"] == pytest.approx(np.linalg.norm(high - low))
    assert result["threshold"] == pytest.approx(config.fscore_threshold * result["extent"])
    # The crop restricts the ground truth to the box: the missing outer ground does not count against us.
    assert result["recall"] > 0.98 and result["fscore"] > 0.98
    uncropped = compare_surfaces(observed_only, ground_truth, result["threshold"], config.mesh_samples)
    assert uncropped["recall"] < 0.8

    ground_truth.export(tmp_path / "same.ply")
    same = evaluate_mesh(demo_scene, tmp_path / "same.ply", xyz, config)
    assert same["chamfer"] < 1e-3 and same["fscore"] > 0.99
    assert same["sfm_to_mesh_mean"] is None


def test_a_capture_gets_the_sfm_proxy_and_a_missing_mesh_gets_nulls(make_scene, tmp_path):
    scene = make_scene(num_images=6, num_points=300)
    xyz = read_model_arrays(scene / "sparse" / "0").xyz          # uniform in [-0.8, 0.8]^3
    trimesh.creation.box(extents=(1.6, 1.6, 1.6)).export(tmp_path / "box.ply")
    result = evaluate_mesh(scene, tmp_path / "box.ply", xyz, EvaluateConfig(mesh_samples=20_000))
    assert result["reference"] == "sfm_points_proxy" and "PROXY" in result["status"]
    by_hand = 0.8 - np.abs(xyz).max(axis=1)                       # distance to the cube's surface
    assert result["sfm_to_mesh_mean"] == pytest.approx(by_hand.mean(), abs=1e-6)
    assert result["sfm_to_mesh_median"] == pytest.approx(np.median(by_hand), abs=1e-6)
    assert result["sfm_within_threshold"] == pytest.approx(np.mean(by_hand < result["threshold"]))
    assert result["chamfer"] is None and result["fscore"] is None

    missing = evaluate_mesh(scene, tmp_path / "nothing.ply", xyz, FAST)
    assert missing["chamfer"] is None and missing["sfm_to_mesh_mean"] is None and "not found" in missing["status"]
    (tmp_path / "broken.ply").write_text("not a mesh")
    with pytest.raises(InputError):
        evaluate_mesh(scene, tmp_path / "broken.ply", xyz, FAST)


# --------------------------------------------------------------------------- image metrics


def test_view_psnr_is_ten_log10_of_one_over_mse():
    rng = np.random.default_rng(0)
    truth = rng.random((24, 32, 3)).astype(np.float32)
    render = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1).astype(np.float32)
    metrics = view_metrics(hwc_to_nchw(render), hwc_to_nchw(truth))
    by_hand = 10 * np.log10(1.0 / np.mean((render.astype(np.float64) - truth) ** 2))
    assert metrics["psnr"] == pytest.approx(by_hand, abs=1e-4)
    assert metrics["l1"] == pytest.approx(np.abs(render - truth).mean(), abs=1e-6)
    assert 0 < metrics["ssim"] < 1 and metrics["lpips"] is None


def test_an_exact_match_is_infinite_psnr_and_ssim_one_and_is_not_averaged():
    image = hwc_to_nchw(np.random.default_rng(1).random((24, 32, 3)))
    metrics = view_metrics(image, image.clone())
    assert math.isinf(metrics["psnr"]) and metrics["ssim"] == pytest.approx(1.0, abs=1e-6)
    mean, note = mean_of([metrics["psnr"], 30.0], "psnr")
    assert mean is None and "1 of 2 views match exactly" in note
    assert mean_of([20.0, 30.0], "psnr") == (25.0, None)
    assert math.isinf(metrics["psnr_colour_corrected"])


# Photos of a real capture differ from the scene's colours by the camera's exposure / white balance:
# photo = COLOUR_MATRIX render + COLOUR_OFFSET (rows and offsets keep [0, 1] inside [0, 1], no clamping).
COLOUR_MATRIX = np.array([[0.80, 0.05, 0.00], [0.00, 0.75, 0.05], [0.05, 0.00, 0.85]])
COLOUR_OFFSET = np.array([0.05, 0.10, 0.02])


def recoloured(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float64) @ COLOUR_MATRIX.T + COLOUR_OFFSET).astype(np.float32)


def test_view_colour_corrected_psnr_forgives_a_colour_change_and_not_noise():
    rng = np.random.default_rng(3)
    render = rng.random((24, 32, 3)).astype(np.float32)
    metrics = view_metrics(hwc_to_nchw(render), hwc_to_nchw(recoloured(render)))
    by_hand = 10 * np.log10(1.0 / np.mean((render.astype(np.float64) - recoloured(render)) ** 2))
    assert metrics["psnr"] == pytest.approx(by_hand, abs=1e-4) and metrics["psnr"] < 25.0
    assert metrics["psnr_colour_corrected"] >= 60.0
    # Noise is not colour: the correction gains (almost) nothing.
    noisy = np.clip(render + rng.normal(0, 0.05, render.shape), 0, 1).astype(np.float32)
    metrics = view_metrics(hwc_to_nchw(noisy), hwc_to_nchw(render))
    assert metrics["psnr"] <= metrics["psnr_colour_corrected"] < metrics["psnr"] + 0.5


def test_wrong_layouts_and_ranges_are_rejected_not_scored():
    rng = np.random.default_rng(2)
    hwc = rng.random((24, 32, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="torch.Tensor"):
        view_metrics(hwc, hwc)                                         # HWC arrays
    channels_last = torch.from_numpy(hwc)[None]                        # [1, H, W, 3]
    with pytest.raises(ValueError, match="NHWC"):
        view_metrics(channels_last, channels_last)
    with pytest.raises(ValueError, match="0-255"):
        view_metrics(hwc_to_nchw(hwc * 255), hwc_to_nchw(hwc))
    with pytest.raises(ValueError, match="shape"):
        view_metrics(hwc_to_nchw(hwc), hwc_to_nchw(hwc[:20]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        hwc_to_nchw(hwc.transpose(2, 0, 1))                            # CHW is not HWC


def test_lpips_is_unavailable_here_with_a_reason_or_disabled():
    function, status = lpips_metric(enabled=False)
    assert function is None and status.startswith("disabled")
    function, status = lpips_metric(enabled=True)
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        assert function is None and status.startswith("unavailable: ") and "lpips" in status


# --------------------------------------------------------------------------- patches


def test_views_belong_to_the_patch_whose_core_cell_holds_their_camera_centre():
    cells = {"p0": [None, 0.0, None, None], "p1": [0.0, None, None, 1.0], "p2": [0.0, None, 1.0, None]}

    def layout(rotation: np.ndarray) -> SplitLayout:
        return SplitLayout(GroundFrame(rotation), tuple(describe_patch(pid, cell, rotation) for pid, cell in cells.items()))

    centres = np.array([[-1.0, 5.0, 3.0], [2.0, 0.5, 0.0], [2.0, 4.0, 0.0], [0.0, 1.0, 0.0]])
    assert layout(np.eye(3)).core_owners(centres) == ["p0", "p1", "p2", "p2"]   # edges are half-open
    # The cells are in the aligned frame: aligned = R @ world (here aligned x = world y).
    rotation = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert layout(rotation).core_owners(np.array([[3.0, -2.0, 0.0], [-3.0, 0.5, 0.0]])) == ["p0", "p2"]


# --------------------------------------------------------------------------- the whole evaluation


def scene_splats(scene: Path, count: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """World-frame splats at the scene's SfM points, coloured, opaque enough to cover the views."""
    xyz = read_model_arrays(scene / "sparse" / "0").xyz[:count]
    rng = np.random.default_rng(seed)
    n = len(xyz)
    return {
        "means": torch.tensor(xyz, dtype=torch.float32),
        "scales": torch.tensor(np.log(knn_spacing(xyz))[:, None].repeat(3, 1), dtype=torch.float32),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        "opacities": torch.full((n,), 1.0),
        "sh0": torch.tensor((rng.random((n, 1, 3)) - 0.5) / SH_C0, dtype=torch.float32),
        "shN": torch.zeros(n, 0, 3),
    }


def write_patches(patches_dir: Path, rotation: np.ndarray, cells: dict[str, list]) -> None:
    SplitLayout(GroundFrame(rotation), tuple(describe_patch(pid, cell, rotation) for pid, cell in cells.items())).save(patches_dir)


# Aligned x = world y, aligned y = -world x.
QUARTER_TURN = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """A 16-image scene (held out: img001, img009) whose photos ARE the renders of known splats (8-bit),
    evaluated once with two patches split along the aligned y axis."""
    from PIL import Image

    from conftest import build_scene

    root = tmp_path_factory.mktemp("evaluate")
    scene = build_scene(root / "scene", num_images=16, num_points=400, width=64, height=48)
    splats = scene_splats(scene)
    write_splats_ply(root / "merged.ply", **splats)
    splats = read_splats_ply(root / "merged.ply")   # what the evaluation will read (float32 round trip)
    cameras = SceneCameras(scene / "sparse" / "0", scene / "images")
    renders = {}
    for camera in cameras.cameras:
        colour, _, _ = render_world(splats, camera, cameras.frame, backend="torch")
        renders[camera.name] = colour
        Image.fromarray(np.round(colour * 255).astype(np.uint8)).save(camera.image_path)
    # Camera of img001 at world (3.70, 1.53): aligned y = -3.70 -> p0; img009 at (-3.70, -1.53) -> p1.
    write_patches(root / "patches", QUARTER_TURN, {"p0": [None, None, None, 0.0], "p1": [None, None, 0.0, None]})
    reports = root / "reports"
    report = evaluate_scene(scene, root / "merged.ply", None, root / "patches", reports / "evaluation.json",
                            reports / "evaluation_grid.png", FAST, progress=False)
    return {"root": root, "scene": scene, "report": report, "renders": renders, "cameras": cameras, "splats": splats}


def test_renders_equal_to_the_photos_up_to_8_bit_rounding_score_about_59_db(evaluated):
    rows = evaluated["report"]["images"]["per_view"]
    assert [row["view"] for row in rows] == ["img001.png", "img009.png"]
    # Rounding to 8 bits leaves a uniform error of +-0.5/255: MSE = 1 / (12 * 255^2) -> 58.9 dB.
    for row in rows:
        assert 55.0 < row["psnr"] < 62.0 and row["ssim"] > 0.999 and not row["exact_match"]


def test_per_view_psnr_is_what_the_render_and_photo_give_by_hand(evaluated):
    cameras = evaluated["cameras"]
    for row in evaluated["report"]["images"]["per_view"]:
        camera = cameras.by_name[row["view"]]
        render = evaluated["renders"][row["view"]].astype(np.float64)
        photo = load_image(camera).astype(np.float64)
        assert photo.shape == (camera.height, camera.width, 3)        # full resolution
        assert row["psnr"] == pytest.approx(10 * np.log10(1.0 / np.mean((render - photo) ** 2)), abs=0.01)
    report = evaluated["report"]
    assert report["psnr"] == pytest.approx(np.mean([row["psnr"] for row in report["images"]["per_view"]]))


def test_the_report_and_grid_say_full_resolution_when_no_training_metrics_are_given(evaluated):
    report = evaluated["report"]
    assert report["resolution_factor"] == 1 and report["resolution"] == "64x48 (full resolution)"
    assert report["images"]["resolution"]["about"] == ["64x48 (full resolution)", "full resolution: no trained patches given"]
    assert all((row["width"], row["height"]) == (64, 48) for row in report["images"]["per_view"])


def _evaluate_with_trained(evaluated, tmp_path, monkeypatch, factors: dict[str, int], config=FAST) -> tuple[dict, list[str]]:
    """Evaluate the fixture's scene with data/trained-like metrics giving these training factors; returns the
    report and the titles the comparison grid was drawn with."""
    trained = tmp_path / "trained"
    for patch_id, factor in factors.items():
        (trained / patch_id).mkdir(parents=True, exist_ok=True)
        trained_metrics(resolution_factor=factor).save(trained / patch_id / "metrics.json")
    titles = []
    real_grid = report_module.comparison_grid_png
    monkeypatch.setattr(report_module, "comparison_grid_png", lambda rows, title="": titles.append(title) or real_grid(rows, title))
    root = evaluated["root"]
    report = evaluate_scene(evaluated["scene"], root / "merged.ply", None, root / "patches", tmp_path / "evaluation.json",
                            tmp_path / "grid.png", config, progress=False, trained_dir=trained)
    return report, titles


def test_views_are_evaluated_at_the_coarsest_training_resolution(evaluated, tmp_path, monkeypatch):
    """Patches trained at 1/2 and 1/1: every held-out view is rendered at 32x24 and scored against its photo
    box-downscaled to 32x24, as training scores its views; the report and the grid title say so."""
    report, titles = _evaluate_with_trained(evaluated, tmp_path, monkeypatch, {"p0": 2, "p1": 1})
    assert report["resolution_factor"] == 2 and report["resolution"] == "32x24 (1/2 of 64x48)"
    resolution = report["images"]["resolution"]
    assert resolution["trained_factors"] == {"p0": 2, "p1": 1} and "coarsest" in resolution["about"][1]
    assert any("rendered at 32x24 (1/2 of 64x48)" in line for line in report["images"]["definitions"])
    assert titles == ["held-out views at 32x24 (1/2 of 64x48): " + f"mean PSNR {report['psnr']:.2f} dB"]
    cameras, splats = evaluated["cameras"], evaluated["splats"]
    for row in report["images"]["per_view"]:
        assert (row["width"], row["height"]) == (32, 24)
        camera = cameras.by_name[row["view"]]
        render, _, _ = render_world(splats, camera, cameras.frame, resolution_factor=2, backend="torch")
        photo = load_image(camera, 32, 24).astype(np.float64)
        assert row["psnr"] == pytest.approx(10 * np.log10(1.0 / np.mean((render.astype(np.float64) - photo) ** 2)), abs=0.01)


def test_an_explicit_evaluation_factor_wins_and_bad_metrics_are_named(evaluated, tmp_path, monkeypatch):
    report, titles = _evaluate_with_trained(evaluated, tmp_path, monkeypatch, {"p0": 4},
                                            FAST.model_copy(update={"resolution_factor": 1}))
    assert report["resolution_factor"] == 1 and report["images"]["resolution"]["about"][1] == "evaluate.resolution_factor"
    assert titles[0].startswith("held-out views at 64x48 (full resolution)")
    bad = {**trained_metrics().model_dump(), "resolution_factor": "half"}
    write_json(tmp_path / "trained" / "p0" / "metrics.json", bad)
    with pytest.raises(InputError, match="metrics.json: resolution_factor: expected a valid integer, got 'half'"):
        _evaluate_with_trained(evaluated, tmp_path, monkeypatch, {})


def test_per_patch_table_follows_the_core_cells_in_the_aligned_frame(evaluated):
    per_patch = evaluated["report"]["images"]["per_patch"]
    assert per_patch["p0"]["views"] == ["img001.png"] and per_patch["p1"]["views"] == ["img009.png"]
    by_view = {row["view"]: row for row in evaluated["report"]["images"]["per_view"]}
    assert per_patch["p0"]["psnr"] == pytest.approx(by_view["img001.png"]["psnr"])
    assert SplitLayout.load(evaluated["root"] / "patches").ids == ["p0", "p1"]


def _assert_colour_corrected_psnr_reported(report: dict) -> list[dict]:
    """The colour-corrected PSNR is in the report overall, per patch and per view, labelled and defined, never
    below the plain PSNR of a view (a tolerance for float rounding), averaged like the plain one; returns the rows."""
    rows = report["images"]["per_view"]
    for row in rows:
        assert isinstance(row["psnr_colour_corrected"], float) and not row["exact_match_colour_corrected"]
        assert row["psnr_colour_corrected"] >= row["psnr"] - 1e-4
    assert report["psnr_colour_corrected"] == pytest.approx(np.mean([row["psnr_colour_corrected"] for row in rows]))
    by_view = {row["view"]: row for row in rows}
    for patch in report["images"]["per_patch"].values():
        assert patch["psnr_colour_corrected"] == pytest.approx(
            np.mean([by_view[name]["psnr_colour_corrected"] for name in patch["views"]]))
    assert any(line.startswith("psnr_colour_corrected: ") for line in report["images"]["definitions"])
    assert "psnr_colour_corrected" not in EvaluateHeadline.from_report(report).numbers()   # report only
    return rows


def test_the_colour_corrected_psnr_is_reported_overall_per_patch_and_per_view(evaluated):
    # Photos equal to the renders up to 8-bit rounding: no colour to correct, so both PSNRs are about 59 dB.
    rows = _assert_colour_corrected_psnr_reported(evaluated["report"])
    for row in rows:
        assert row["psnr_colour_corrected"] < row["psnr"] + 0.5
    # MLflow: the stage run logs flat_numbers(report, max_depth=4), the pipeline's parent run the same under "evaluate".
    from patchsplat.tracking import flat_numbers

    logged = flat_numbers(evaluated["report"], "evaluate", 4)
    assert logged["evaluate.psnr_colour_corrected"] == evaluated["report"]["psnr_colour_corrected"]
    assert {f"evaluate.images.per_patch.{patch}.psnr_colour_corrected" for patch in ("p0", "p1")} <= set(logged)


def test_a_colour_change_of_the_photos_costs_the_plain_psnr_only(evaluated, tmp_path):
    """The held-out photos re-exposed (COLOUR_MATRIX, COLOUR_OFFSET): the plain PSNR falls to the colour
    change's, the colour-corrected one stays near the 8-bit rounding's 59 dB."""
    import shutil

    from PIL import Image

    scene = shutil.copytree(evaluated["scene"], tmp_path / "scene")
    cameras = SceneCameras(scene / "sparse" / "0", scene / "images")
    for camera in cameras.heldout:
        photo = recoloured(evaluated["renders"][camera.name])
        assert 0.0 <= photo.min() and photo.max() <= 1.0
        Image.fromarray(np.round(photo * 255).astype(np.uint8)).save(camera.image_path)
    report = evaluate_scene(scene, evaluated["root"] / "merged.ply", None, evaluated["root"] / "patches",
                            tmp_path / "evaluation.json", tmp_path / "grid.png", FAST, progress=False)
    rows = _assert_colour_corrected_psnr_reported(report)
    for row in rows:
        assert row["psnr"] < 30.0 and row["psnr_colour_corrected"] > 50.0
    on_disk = json.loads((tmp_path / "evaluation.json").read_text())
    assert on_disk["psnr_colour_corrected"] == report["psnr_colour_corrected"]


def test_the_console_table_shows_the_colour_corrected_psnr_next_to_the_plain_one(evaluated):
    from patchsplat.console import console

    with console.capture() as captured:
        report_module.print_summary(evaluated["report"])
    text = captured.get()
    header = next(line for line in text.splitlines() if "PSNR (dB)" in line)
    assert header.index("PSNR (dB)") < header.index("colour-corrected") < header.index("SSIM")
    assert f"{evaluated['report']['psnr_colour_corrected']:.4g}" in text
    explanation = "PSNR colour-corrected: after an affine colour map fitted from each render to its photo"
    assert text.index("Held-out views") < text.index(explanation)


def test_report_is_strict_json_with_lpips_null_and_mesh_nulls(evaluated):
    path = evaluated["root"] / "reports" / "evaluation.json"
    text = path.read_text()

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    on_disk = json.loads(text, parse_constant=refuse)
    assert on_disk == json.loads(json.dumps(evaluated["report"]))
    for key in ("psnr", "ssim"):
        assert isinstance(on_disk[key], float)
    if on_disk["lpips_status"].startswith("unavailable"):
        assert on_disk["lpips"] is None and all(row["lpips"] is None for row in on_disk["images"]["per_view"])
    assert on_disk["chamfer"] is None and on_disk["fscore"] is None and on_disk["mesh_status"].startswith("not evaluated")
    png = (evaluated["root"] / "reports" / "evaluation_grid.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_a_failed_evaluation_leaves_the_earlier_outputs_intact(evaluated, monkeypatch):
    root, scene = evaluated["root"], evaluated["scene"]
    reports = root / "reports"
    before = {path.name: path.read_bytes() for path in reports.iterdir()}

    def run():
        evaluate_scene(scene, root / "merged.ply", None, root / "patches", reports / "evaluation.json",
                       reports / "evaluation_grid.png", FAST, progress=False)

    def after_check():
        assert {path.name: path.read_bytes() for path in reports.iterdir()} == before  # no temp files either

    with pytest.raises(InputError, match="merged splats not found"):
        evaluate_scene(scene, root / "absent.ply", None, None, reports / "evaluation.json",
                       reports / "evaluation_grid.png", FAST, progress=False)
    after_check()

    # A NaN metric is caught before the first file is replaced.
    real_mesh = report_module.evaluate_mesh
    monkeypatch.setattr(report_module, "evaluate_mesh", lambda *a, **k: real_mesh(*a, **k) | {"chamfer": float("nan")})
    with pytest.raises(ValueError, match="JSON compliant"):
        run()
    after_check()
    monkeypatch.setattr(report_module, "evaluate_mesh", real_mesh)

    # A failure while the JSON is being written (after the PNG) leaves no partial report.
    def broken_write_json(target, data):
        from patchsplat.atomic import atomic_file

        with atomic_file(target) as tmp:
            tmp.write_text('{"psnr": 1')
            raise OSError("disk full")

    monkeypatch.setattr(report_module, "write_json", broken_write_json)
    with pytest.raises(OSError):
        run()
    assert (reports / "evaluation.json").read_bytes() == before["evaluation.json"]
    assert not [path for path in reports.iterdir() if path.name.startswith(".")]


def test_the_stage_script_writes_both_reports_or_fails_in_one_line(evaluated, tmp_path):
    import shutil

    shutil.copytree(evaluated["scene"], tmp_path / "data" / "scene")
    (tmp_path / "data" / "merged").mkdir(parents=True)
    shutil.copyfile(evaluated["root"] / "merged.ply", tmp_path / "data" / "merged" / "splats.ply")
    (tmp_path / "params.yaml").write_text("evaluate:\n  mesh_samples: 1000\n  grid_views: 1\n")
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    script = str(REPO_ROOT / "stages" / "evaluate.py")

    done = subprocess.run([sys.executable, script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "reports" / "evaluation.json").read_text())
    assert report["num_views"] == 2 and report["images"]["per_patch"] is None and report["chamfer"] is None
    assert (tmp_path / "reports" / "evaluation_grid.png").stat().st_size > 0
    assert "Held-out views" in done.stdout

    (tmp_path / "data" / "merged" / "splats.ply").unlink()
    failed = subprocess.run([sys.executable, script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().startswith("error: data/merged/splats.ply: merged splats not found")
    assert len(failed.stderr.strip().splitlines()) == 1
    assert json.loads((tmp_path / "reports" / "evaluation.json").read_text()) == report
