"""The validation stage on good scenes: real captures, built scenes, the demo scene, statistics, report, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from patchsplat.config import ValidateConfig
from patchsplat.errors import InputError
from patchsplat.output_folder import MARKER
from patchsplat.scene_layout import locate_scene
from patchsplat.validate import ValidationReport, run_validation, validate_scene
from patchsplat.validate.stats import SceneStats, scene_statistics

REPO_ROOT = Path(__file__).resolve().parents[1]


def kinds(report: ValidationReport) -> set[str]:
    return {finding.kind for finding in report.findings}


def points_and_centres(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model's xyz and camera centres through pycolmap's Python objects (slow path, small models)."""
    import pycolmap

    reconstruction = pycolmap.Reconstruction(str(model_dir))
    xyz = np.array([point.xyz for point in reconstruction.points3D.values()])
    centres = np.array([image.projection_center() for image in reconstruction.images.values()])
    return xyz, centres


def reference_nn_spacing(xyz: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(xyz).query(xyz, k=4)
    return float(np.sqrt((distances[:, 1:] ** 2).mean(axis=1)).mean())


# --------------------------------------------------------------------------- real scenes


def test_cup77_binary_simple_pinhole(real_data_dir):
    scene = real_data_dir / "cup77"
    report = validate_scene(scene, ValidateConfig())
    assert not report.has_errors, [f.message for f in report.errors]
    assert report.model_format == "bin" and report.model_dir == "sparse/0"
    assert report.camera_models == {"SIMPLE_PINHOLE": 77}
    assert report.num_images == 77 and report.images_checked == "decoded"
    assert "distorted_camera" not in kinds(report)

    stats = report.stats
    assert (stats.num_points, stats.num_observations, stats.num_cameras) == (9262, 57847, 77)
    assert stats.mean_track_length == pytest.approx(57847 / 9262)
    assert stats.mean_reprojection_error_px == pytest.approx(0.5905, abs=1e-3)
    xyz, centres = points_and_centres(scene / "sparse" / "0")
    assert stats.extent_min == pytest.approx(tuple(xyz.min(axis=0)), abs=0)
    assert stats.extent_max == pytest.approx(tuple(xyz.max(axis=0)), abs=0)
    assert stats.mean_nn_spacing == pytest.approx(reference_nn_spacing(xyz), rel=1e-12)
    assert stats.scene_scale == pytest.approx(1.1 * np.linalg.norm(centres - centres.mean(0), axis=1).max(), rel=1e-12)
    # The capture really holds repeated points: the count must match an exact row comparison.
    assert stats.num_duplicates == len(xyz) - len(np.unique(xyz, axis=0)) > 0
    assert stats.num_nonfinite == 0
    assert all(lo <= rlo <= rhi <= hi for lo, rlo, rhi, hi in zip(stats.extent_min, stats.robust_min, stats.robust_max, stats.extent_max))


def test_fern_text_simple_radial_warns_distortion(real_data_dir):
    report = validate_scene(real_data_dir / "fern_llff8", ValidateConfig())
    assert not report.has_errors, [f.message for f in report.errors]
    assert report.model_format == "txt"
    assert report.camera_models == {"SIMPLE_RADIAL": 1}
    distorted = [f for f in report.findings if f.kind == "distorted_camera"]
    assert len(distorted) == 1 and distorted[0].severity == "warning"
    assert "--undistort" in distorted[0].message and distorted[0].file.endswith("cameras.txt")
    stats = report.stats
    assert (stats.num_points, stats.num_observations, stats.num_cameras) == (10091, 41291, 20)
    xyz, _ = points_and_centres(real_data_dir / "fern_llff8" / "sparse" / "0")
    assert stats.mean_nn_spacing == pytest.approx(reference_nn_spacing(xyz), rel=1e-12)


def test_undistort_fern_writes_pinhole_scene_outside(real_data_dir, tmp_path, scene_snapshot):
    import pycolmap
    from PIL import Image

    scene = real_data_dir / "fern_llff8"
    before = scene_snapshot(scene)
    out_dir = tmp_path / "fern_undistorted"
    report = run_validation(scene, tmp_path / "report.json", ValidateConfig(), undistort_dir=out_dir)
    assert (tmp_path / "report.json").exists() and not report.has_errors
    assert scene_snapshot(scene) == before

    assert sorted(p.name for p in out_dir.iterdir()) == [MARKER, "images", "sparse"]  # MARKER: whose output it is
    reconstruction = pycolmap.Reconstruction(str(out_dir / "sparse" / "0"))
    assert {camera.model.name for camera in reconstruction.cameras.values()} == {"PINHOLE"}
    for image in reconstruction.images.values():
        camera = reconstruction.cameras[image.camera_id]
        with Image.open(out_dir / "images" / image.name) as undistorted:
            assert undistorted.size == (camera.width, camera.height)
    assert len(reconstruction.images) == 20

    # The undistorted copy is itself a valid scene, now without the distortion warning.
    again = validate_scene(out_dir, ValidateConfig())
    assert not again.has_errors and "distorted_camera" not in kinds(again)


# --------------------------------------------------------------------------- built scenes


def test_legacy_and_current_layouts_and_formats_agree(make_scene):
    """pycolmap 4 models (rigs/frames), older models without them, and text models give the same result."""
    reports = {
        (fmt, legacy): validate_scene(make_scene(model_format=fmt, legacy=legacy), ValidateConfig())
        for fmt in ("bin", "txt")
        for legacy in (False, True)
    }
    reference = reports[("bin", False)]
    assert not reference.has_errors and reference.findings == ()
    for key, report in reports.items():
        assert report.model_format == key[0]
        assert report.findings == reference.findings, key
        assert report.stats == reference.stats, key


def test_images_with_no_or_few_points_are_warned(make_scene):
    import pycolmap

    scene = make_scene()
    model_dir = scene / "sparse" / "0"
    reconstruction = pycolmap.Reconstruction(str(model_dir))
    for image_id, keep in ((1, 0), (2, 5)):
        image = reconstruction.images[image_id]
        observed = [i for i in range(image.num_points2D()) if image.point2D(i).has_point3D()]
        for index in observed[keep:]:
            reconstruction.delete_observation(image_id, index)
    reconstruction.write_binary(str(model_dir))

    report = validate_scene(scene, ValidateConfig())
    assert not report.has_errors
    by_kind = {f.kind: f for f in report.findings}
    assert by_kind["image_without_points"].ids == ("img001.png",)
    assert by_kind["image_with_few_points"].ids == ("img002.png",)
    assert "fewer than 20" in by_kind["image_with_few_points"].message


def test_far_outlier_point_is_warned_with_its_id(make_scene):
    import pycolmap

    scene = make_scene()
    model_dir = scene / "sparse" / "0"
    reconstruction = pycolmap.Reconstruction(str(model_dir))
    reconstruction.point3D(7).xyz = np.array([500.0, 0.0, 0.0])
    reconstruction.write_binary(str(model_dir))

    report = validate_scene(scene, ValidateConfig())
    outliers = [f for f in report.findings if f.kind == "far_outliers"]
    assert not report.has_errors and len(outliers) == 1
    assert outliers[0].ids == (7,) and outliers[0].count == 1
    assert report.stats.num_far_outliers == 1
    assert report.stats.extent_max[0] == 500.0 and report.stats.robust_max[0] < 1.0


def test_disconnected_models_are_reported_with_sizes(make_scene):
    scene = make_scene(num_images=4)
    larger = make_scene(num_images=9)
    shutil.copytree(larger / "sparse" / "0", scene / "sparse" / "1")
    shutil.copytree(make_scene(num_images=3, model_format="txt") / "sparse" / "0", scene / "sparse" / "2")

    layout = locate_scene(scene)
    assert layout.model_dir == scene / "sparse" / "0"
    assert layout.other_models == (scene / "sparse" / "1", scene / "sparse" / "2")
    report = validate_scene(scene, ValidateConfig())
    warning = next(f for f in report.findings if f.kind == "disconnected_models")
    assert warning.severity == "warning" and warning.ids == ("sparse/1", "sparse/2")
    assert "sparse/1 (9 images)" in warning.message and "sparse/2 (3 images)" in warning.message
    assert "sparse/1 is LARGER" in warning.message
    assert report.to_dict()["other_models"] == [{"path": "sparse/1", "num_images": 9}, {"path": "sparse/2", "num_images": 3}]


def test_locate_scene_variants(make_scene):
    scene = make_scene()
    # sparse/ holding the model directly (what the undistorter writes)
    for entry in (scene / "sparse" / "0").iterdir():
        entry.rename(scene / "sparse" / entry.name)
    (scene / "sparse" / "0").rmdir()
    layout = locate_scene(scene)
    assert (layout.model_dir, layout.model_format, layout.other_models) == (scene / "sparse", "bin", ())
    assert layout.images_dir == scene / "images"
    assert not validate_scene(scene, ValidateConfig()).has_errors

    with pytest.raises(InputError) as raised:
        locate_scene(scene / "nowhere")
    assert raised.value.kind == "missing_folder"


def test_presence_only_mode_and_skipping_images(make_scene):
    scene = make_scene()
    (scene / "images" / "img001.png").unlink()
    path = scene / "images" / "img002.png"
    os.truncate(path, path.stat().st_size // 2)

    decoded = validate_scene(scene, ValidateConfig())
    assert {f.kind for f in decoded.errors} == {"missing_image", "undecodable_image"}
    presence = validate_scene(scene, ValidateConfig(check_images=False))
    assert presence.images_checked == "presence" and {f.kind for f in presence.errors} == {"missing_image"}
    skipped = validate_scene(scene, ValidateConfig(), check_images=False)
    assert skipped.images_checked == "skipped" and not skipped.has_errors


def test_findings_list_at_most_max_listed_ids(make_scene):
    scene = make_scene(num_images=6)
    for image in (scene / "images").iterdir():
        image.unlink()
    report = validate_scene(scene, ValidateConfig(max_listed_ids=4))
    missing = next(f for f in report.findings if f.kind == "missing_image")
    assert missing.count == 6 and len(missing.ids) == 4
    assert missing.message.endswith("(and 2 more)")
    with pytest.raises(InputError) as raised:
        run_validation(scene, scene.parent / "r.json", ValidateConfig())
    assert raised.value.kind == "missing_image" and "\n" not in str(raised.value)


# --------------------------------------------------------------------------- statistics


def lattice(n: int, spacing: float) -> np.ndarray:
    axis = np.arange(n) * spacing
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def circle(radius: float, count: int) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles), np.full(count, 3.0)], axis=1)


def stats_of(xyz, centres, **config) -> SceneStats:
    return scene_statistics(
        xyz, centres, num_observations=10, mean_track_length=2.5, mean_reprojection_error=0.75,
        config=ValidateConfig(**config),
    )


def test_statistics_on_a_lattice_and_a_circle():
    stats = stats_of(lattice(5, 0.5), circle(2.0, 12), init_scale_factor=0.5, robust_percentile=0.0)
    assert stats.num_points == 125 and stats.num_cameras == 12
    assert stats.mean_nn_spacing == pytest.approx(0.5, abs=1e-12)
    assert stats.scene_scale == pytest.approx(2.2, abs=1e-12)
    assert stats.recommended_init_scale == pytest.approx(0.25, abs=1e-12)
    assert stats.recommended_init_scale_canonical == pytest.approx(0.25 / 2.2, abs=1e-12)
    assert stats.extent_min == (0.0, 0.0, 0.0) and stats.extent_max == (2.0, 2.0, 2.0)
    assert stats.robust_min == (0.0, 0.0, 0.0) and stats.robust_size == (2.0, 2.0, 2.0)
    assert (stats.num_far_outliers, stats.num_duplicates, stats.num_nonfinite) == (0, 0, 0)
    assert (stats.num_observations, stats.mean_track_length, stats.mean_reprojection_error_px) == (10, 2.5, 0.75)


def test_statistics_flag_outliers_duplicates_and_nonfinite_points():
    base = lattice(5, 0.5)
    extra = np.array([
        [50.0, 1.0, 1.0],                 # far: beyond the robust box + 2 x 2 on the x side
        [1.0, 1.0, 5.9],                  # inside the grown box (2 + 2 x 2 = 6): not far
        [0.5, 0.5, 0.5],                  # duplicate of a lattice point
        [0.5, 0.5, 0.5],                  # and again
        [-0.0, 0.0, 0.0],                 # -0.0 is the same position as the lattice origin
        [np.nan, 1.0, 1.0],
        [1.0, np.inf, 1.0],
    ])
    stats = stats_of(np.vstack([base, extra]), circle(2.0, 4))
    assert stats.num_nonfinite == 2
    assert stats.num_duplicates == 3
    assert stats.num_far_outliers == 1
    assert stats.extent_max == (50.0, 2.0, 5.9)  # finite points only


def test_statistics_sample_is_deterministic_and_representative():
    rng = np.random.default_rng(3)
    xyz = rng.uniform(0, 10, size=(5000, 3))
    full = stats_of(xyz, circle(1.0, 3), nn_sample=100_000).mean_nn_spacing
    sampled = [stats_of(xyz, circle(1.0, 3), nn_sample=500).mean_nn_spacing for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert sampled[0] == pytest.approx(full, rel=0.05) and sampled[0] != full


def test_statistics_of_degenerate_inputs_are_none_not_nan():
    empty = stats_of(np.zeros((0, 3)), np.zeros((0, 3)))
    assert empty.num_points == 0 and empty.extent_min is None and empty.mean_nn_spacing is None
    assert empty.scene_scale is None and empty.recommended_init_scale_canonical is None
    one_camera = stats_of(lattice(2, 1.0), np.zeros((1, 3)))
    assert one_camera.scene_scale == 0.0 and one_camera.recommended_init_scale_canonical is None
    for stats in (empty, one_camera):
        json.dumps(stats.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------- report and CLI


def test_report_is_deterministic_and_has_no_machine_paths(make_scene, tmp_path):
    scene = make_scene()
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    run_validation(scene, first, ValidateConfig())
    run_validation(scene, second, ValidateConfig())
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert str(tmp_path) not in text.replace(str(scene), "SCENE")
    data = json.loads(text)
    assert data["scene_dir"] == str(scene) and data["has_errors"] is False
    assert data["stats"]["num_points"] == 150 and data["findings"] == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "patchsplat.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_cli_validate_prints_tables_and_writes_the_report(real_data_dir, tmp_path):
    scene = real_data_dir / "cup77"
    out = tmp_path / "report.json"
    completed = _cli("validate", str(scene), "--out", str(out), "--skip-images", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert "Scene validation" in completed.stdout and "SIMPLE_PINHOLE x77" in completed.stdout
    assert "mean NN spacing" in completed.stdout and "duplicate_points" in completed.stdout
    # Same bytes as an in-process run: the report does not depend on the process.
    in_process = tmp_path / "in_process.json"
    run_validation(scene, in_process, ValidateConfig(), skip_images=True)
    assert out.read_bytes() == in_process.read_bytes()


def test_demo_scene_statistics_match_its_manifest(tmp_path):
    demo = pytest.importorskip("patchsplat.demo")
    if not hasattr(demo, "generate_demo_scene"):
        pytest.skip("patchsplat.demo does not expose generate_demo_scene yet")
    config = demo.with_overrides(None, num_cameras=24, num_points=3000, width=96, height=72)
    manifest = demo.generate_demo_scene(config, tmp_path / "demo", progress=False)

    report = validate_scene(tmp_path / "demo", ValidateConfig())
    assert not report.has_errors, [f.message for f in report.errors]
    assert report.camera_models == {"PINHOLE": 1}
    stats = report.stats
    assert stats.num_cameras == report.num_images == manifest["num_images"]
    assert stats.num_points == manifest["num_points"]
    assert stats.num_observations == manifest["num_observations"]
    assert stats.mean_track_length == pytest.approx(manifest["mean_track_length"], rel=1e-9)
    assert stats.mean_reprojection_error_px == pytest.approx(manifest["mean_reprojection_error_px"], rel=1e-6)
    assert list(stats.extent_min) == pytest.approx(manifest["points_bbox"]["min"], abs=1e-9)
    assert list(stats.extent_max) == pytest.approx(manifest["points_bbox"]["max"], abs=1e-9)
    # 3000 points < nn_sample: every point is queried, so this is the manifest's exact definition.
    assert stats.mean_nn_spacing == pytest.approx(manifest["mean_nn_spacing_all_points"], rel=1e-9)


@pytest.mark.slow
def test_benchmark_script_runs_on_a_small_scene(tmp_path):
    pytest.importorskip("patchsplat.demo")
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "validate_scale.py"), "--images", "12", "--points", "2000",
         "--extent", "20", "--repeats", "1", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert completed.returncode == 0, completed.stderr
    assert "time (s), median" in completed.stdout and "overall:" in completed.stdout
    assert "12 images, 2000 points" in completed.stdout
