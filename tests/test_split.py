"""The split: patches that partition the scene, standalone COLMAP models, flags, and bad params."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import SplitConfig, ValidateConfig
from patchsplat.demo import generate_demo_scene, with_overrides
from patchsplat.errors import InputError
from patchsplat.split import SPLIT_FILE, GroundFrame, PatchDescription, SplitLayout, split_scene
from patchsplat.split.partition import Cell

from patch_layouts import describe_patch

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def _scene(root: Path, name: str, **knobs) -> Path:
    out = root / name
    if not out.exists():
        config = with_overrides(None, **{"width": 48, "height": 36, **knobs})
        generate_demo_scene(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("split-scenes")
    return {
        "demo": _scene(root, "demo", num_cameras=64, num_points=8000),
        "large": _scene(root, "large", num_cameras=200, num_points=30000, extent=60.0, num_boxes=30, num_spheres=20),
    }


def _split(scene: Path, out: Path, **settings) -> dict:
    """Split with these settings; grid mode unless ``mode`` says otherwise (the tests below give rows x cols)."""
    split_scene(scene, out, SplitConfig(**{"mode": "grid", **settings}), ValidateConfig(nn_sample=5000), progress=False)
    return json.loads((out / SPLIT_FILE).read_text())


def _aligned_xy(summary: dict, xyz: np.ndarray) -> np.ndarray:
    return (xyz @ np.asarray(summary["world_to_aligned"]).T)[:, :2]


CASES = [
    ("demo", {"rows": 2, "cols": 2}),
    ("demo", {"rows": 1, "cols": 3, "overlap": 0.0}),
    ("large", {"rows": 3, "cols": 4}),
    ("large", {"mode": "max_cameras", "max_cameras": 18}),
]


@pytest.mark.parametrize(("scene_name", "settings"), CASES)
def test_core_cells_hold_every_camera_and_point_exactly_once(scenes, tmp_path, scene_name, settings):
    summary = _split(scenes[scene_name], tmp_path / "patches", **settings)
    source = read_model_arrays(scenes[scene_name] / "sparse" / "0")
    cores = [Cell.from_list(patch["core_cell"]) for patch in summary["patches"]]
    for positions in (_aligned_xy(summary, source.camera_centres), _aligned_xy(summary, source.xyz)):
        owners = np.stack([core.contains(positions) for core in cores]).sum(axis=0)
        assert np.all(owners == 1), f"{np.sum(owners != 1)} positions are not in exactly one core cell"
    assert sum(p["num_core_cameras"] for p in summary["patches"]) == len(source.image_ids)
    assert sum(p["num_core_points"] for p in summary["patches"]) == len(source.point_ids)
    assert summary["patch_ids"] == [f"p{i}" for i in range(summary["num_patches"])]


def test_grid_has_equal_camera_counts_per_column_and_cell(scenes, tmp_path):
    summary = _split(scenes["large"], tmp_path / "patches", rows=2, cols=4)
    counts = [p["num_core_cameras"] for p in summary["patches"]]
    assert summary["num_patches"] == 8
    assert max(counts) - min(counts) <= 2, counts  # 200 cameras: 25 per cell, up to rounding at each cut


def test_max_cameras_mode_bounds_every_cell(scenes, tmp_path):
    summary = _split(scenes["large"], tmp_path / "patches", mode="max_cameras", max_cameras=18)
    assert all(p["num_core_cameras"] <= 18 for p in summary["patches"])
    assert summary["num_patches"] >= 200 // 18


@pytest.mark.parametrize(("scene_name", "settings"), CASES[:3])
def test_patch_models_round_trip_through_pycolmap(scenes, tmp_path, scene_name, settings):
    summary = _split(scenes[scene_name], tmp_path / "patches", **settings)
    source = pycolmap.Reconstruction(str(scenes[scene_name] / "sparse" / "0"))
    for patch in summary["patches"]:
        model = pycolmap.Reconstruction(str(tmp_path / "patches" / patch["id"] / "sparse" / "0"))
        assert model.num_reg_images() == patch["num_cameras"]
        assert model.num_points3D() == patch["num_points"]
        patch_image_ids = set(model.reg_image_ids())
        for point_id, point in model.points3D.items():
            assert point.track.length() >= 2
            assert np.array_equal(point.xyz, source.points3D[point_id].xyz)
            for element in point.track.elements:
                assert element.image_id in patch_image_ids, "a track references an image outside the patch"
                observed = model.images[element.image_id].points2D[element.point2D_idx]
                assert observed.point3D_id == point_id
        for image_id in patch_image_ids:
            image, original = model.images[image_id], source.images[image_id]
            assert image.name == original.name
            assert np.allclose(image.cam_from_world().matrix(), original.cam_from_world().matrix())
        # The images are referenced, not copied.
        patch_dir = tmp_path / "patches" / patch["id"]
        assert PatchDescription.load(patch_dir).images_folder(patch_dir) == (scenes[scene_name] / "images").resolve()
        assert not (tmp_path / "patches" / patch["id"] / "images").exists()


def test_cameras_that_see_a_patch_are_in_it(scenes, tmp_path):
    fraction = 0.05
    summary = _split(scenes["demo"], tmp_path / "patches", rows=2, cols=2, overlap=0.0, visibility_fraction=fraction)
    source = read_model_arrays(scenes["demo"] / "sparse" / "0")
    point_xy = _aligned_xy(summary, source.xyz)
    added_by_visibility = 0
    for patch in summary["patches"]:
        core = Cell.from_list(patch["core_cell"])
        in_core = core.contains(point_xy)
        seen = np.bincount(source.obs_image[in_core[source.obs_point]], minlength=len(source.image_ids))
        observed = np.bincount(source.obs_image, minlength=len(source.image_ids))
        should_have = {source.image_names[i] for i in np.flatnonzero(seen >= fraction * np.maximum(observed, 1))}
        has = set(PatchDescription.load(tmp_path / "patches" / patch["id"]).image_names)
        assert should_have <= has, f"{patch['id']} lacks cameras that see it: {sorted(should_have - has)[:5]}"
        added_by_visibility += patch["cameras_by_visibility"]
    assert added_by_visibility > 0, "the demo's oblique cameras should see into neighbouring cells"


def test_overlap_is_respected(scenes, tmp_path):
    source = read_model_arrays(scenes["demo"] / "sparse" / "0")
    sizes = {}
    for overlap in (0.0, 0.2, 0.5):
        summary = _split(scenes["demo"], tmp_path / f"o{overlap}", rows=2, cols=2, overlap=overlap, points_seen_by_cameras=False)
        bounds = Cell.from_list(summary["bounds"])
        for patch in summary["patches"]:
            core, expanded = Cell.from_list(patch["core_cell"]), Cell.from_list(patch["expanded_cell"])
            clipped = core.clipped(bounds)
            grown = core.grown(overlap, clipped)
            assert expanded == grown
            if np.isfinite(core.x_max):
                assert expanded.x_max == pytest.approx(core.x_max + overlap * (clipped.x_max - clipped.x_min))
            # every point of the patch model lies in its expanded cell
            model = read_model_arrays(tmp_path / f"o{overlap}" / patch["id"] / "sparse" / "0")
            assert np.all(expanded.contains(_aligned_xy(summary, model.xyz)))
        sizes[overlap] = sum(p["num_points"] for p in summary["patches"])
        if overlap == 0.0:
            assert all(p["core_cell"] == p["expanded_cell"] for p in summary["patches"])
            assert sizes[0.0] <= len(source.point_ids)
    assert sizes[0.0] < sizes[0.2] < sizes[0.5]


def test_split_is_deterministic(scenes, tmp_path):
    first = tmp_path / "a"
    second = tmp_path / "b"
    _split(scenes["demo"], first, rows=2, cols=2)
    _split(scenes["demo"], second, rows=2, cols=2)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        if relative.suffix != ".png":
            assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_a_patch_with_larger_scale_stands_out(tmp_path):
    scene = _scene(tmp_path, "bigger", num_cameras=80, num_points=12000,
                   defects={"large_scale_region": 2.0})
    summary = _split(scene, tmp_path / "patches", rows=2, cols=2, ground_axes="model")
    manifest = json.loads((scene / "manifest.json").read_text())
    assert manifest["defects"]["large_scale_region"]["factor"] == 2.0
    # The patch whose core cell holds the +x,+y quadrant is the one with the scaled objects.
    side = manifest["scene_extent"]["area_side"]
    centre_of_quadrant = np.array([[side / 4, side / 4, 0.0]])
    quadrant_xy = _aligned_xy(summary, centre_of_quadrant)
    owner = next(p["id"] for p in summary["patches"] if Cell.from_list(p["core_cell"]).contains(quadrant_xy)[0])
    assert list(summary["flagged"]) == [owner], summary["flagged"]
    assert "mean NN spacing" in summary["flagged"][owner][0]
    assert (tmp_path / "patches" / "layout.png").stat().st_size > 10_000


def test_small_patches_warn_error_or_merge(scenes, tmp_path):
    # 1 row x 6 columns of an 64-camera demo: ~10 cameras per cell, below min_cameras=12 for some.
    warned = _split(scenes["demo"], tmp_path / "warn", rows=1, cols=6, overlap=0.0, min_cameras=12, small_patch="warn")
    assert warned["warnings"] and "cameras" in warned["warnings"][0]
    with pytest.raises(InputError) as error:
        _split(scenes["demo"], tmp_path / "error", rows=1, cols=6, overlap=0.0, min_cameras=12, small_patch="error")
    assert "split.min_cameras" in str(error.value) and not (tmp_path / "error").exists()
    merged = _split(scenes["demo"], tmp_path / "merge", rows=1, cols=6, overlap=0.0, min_cameras=12, small_patch="merge")
    assert merged["num_patches"] < 6 and merged["notes"]
    assert all(p["num_core_cameras"] >= 12 for p in merged["patches"])


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real captured scenes not found at {REAL_DATA} (a user's clone has none)")
def test_cup77_splits_into_two_sensible_patches(tmp_path):
    summary = _split(REAL_DATA / "cup77", tmp_path / "patches", rows=1, cols=2)
    assert summary["num_patches"] == 2
    first, second = summary["patches"]
    assert abs(first["num_core_cameras"] - second["num_core_cameras"]) <= 1
    assert first["num_core_cameras"] + second["num_core_cameras"] == 77
    for patch in summary["patches"]:
        assert patch["num_cameras"] >= 0.4 * 77
        assert patch["num_points"] >= 1000
        assert pycolmap.Reconstruction(str(tmp_path / "patches" / patch["id"] / "sparse" / "0")).num_points3D() == patch["num_points"]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--rows", "0"], "split.rows"),
        (["--overlap", "-0.5"], "split.overlap"),
        (["--mode", "hexagons"], "split.mode"),
        (["--mode", "grid", "--rows", "50", "--cols", "50"], "split.rows x split.cols"),
    ],
)
def test_bad_split_params_give_one_line_errors(scenes, tmp_path, arguments, named):
    out = tmp_path / "patches"
    # Run where there is no params.yaml, so the defaults plus these overrides apply.
    completed = subprocess.run(
        [sys.executable, "-m", "patchsplat.cli", "split", str(scenes["demo"]), str(out), *arguments],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], completed.stderr
    assert "Traceback" not in completed.stderr
    assert not out.exists()


def test_heldout_views_are_the_same_for_every_patch(scenes, tmp_path):
    summary = _split(scenes["demo"], tmp_path / "patches", rows=2, cols=2)
    source = read_model_arrays(scenes["demo"] / "sparse" / "0")
    globally = set(sorted(source.image_names)[::8])
    for patch in summary["patches"]:
        description = PatchDescription.load(tmp_path / "patches" / patch["id"])
        assert set(description.heldout_image_names) == globally & set(description.image_names)


def test_points_seen_by_the_cameras_join_the_patch(scenes, tmp_path):
    cell_only = _split(scenes["demo"], tmp_path / "cell", rows=2, cols=2, points_seen_by_cameras=False)
    seen = _split(scenes["demo"], tmp_path / "seen", rows=2, cols=2, points_seen_by_cameras=True)
    source = read_model_arrays(scenes["demo"] / "sparse" / "0")
    for before, after in zip(cell_only["patches"], seen["patches"]):
        assert after["num_points"] > before["num_points"]
        names = set(PatchDescription.load(tmp_path / "seen" / after["id"]).image_names)
        in_patch = np.array([name in names for name in source.image_names])
        seen_twice = np.bincount(source.obs_point[in_patch[source.obs_image]], minlength=len(source.point_ids)) >= 2
        model = read_model_arrays(tmp_path / "seen" / after["id"] / "sparse" / "0")
        assert set(model.point_ids) == set(source.point_ids[seen_twice])


def test_the_layout_loads_back_as_the_split_wrote_it(scenes, tmp_path):
    """patch.json through PatchDescription: every key read back, saved again byte for byte; the layout in number order."""
    summary = _split(scenes["demo"], tmp_path / "patches", rows=2, cols=2)
    layout = SplitLayout.load(tmp_path / "patches")
    assert layout.ids == summary["patch_ids"] == [f"p{n}" for n in range(4)]
    assert layout.ground.world_to_aligned.tolist() == summary["world_to_aligned"]
    for patch, row in zip(layout.patches, summary["patches"]):
        assert {**patch.split_row(), "flags": row["flags"]} == row
        written = (tmp_path / "patches" / patch.id / "patch.json").read_text()
        patch.save(tmp_path / "again" / patch.id)
        assert (tmp_path / "again" / patch.id / "patch.json").read_text() == written
    # Each camera centre has one owner: the patch whose core cell holds it.
    centres = read_model_arrays(scenes["demo"] / "sparse" / "0").camera_centres
    owners = layout.core_owners(centres)
    for patch in layout.patches:
        assert patch.core_contains(centres).sum() == owners.count(patch.id) == patch.num_core_cameras


def _damaged(patch_dir: Path, changes: dict) -> Path:
    path = patch_dir / "patch.json"
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps({key: value for key, value in content.items() if value is not ...}))
    return path


@pytest.mark.parametrize(("changes", "problem"), [
    ({"core_cell": ...}, "patch description lacks the key 'core_cell'"),
    ({"image_names": ...}, "patch description lacks the key 'image_names'"),
    ({"core_cell": [0, 1, 2]}, "patch description's 'core_cell' is not valid"),
    ({"world_to_aligned": [[1, 0], [0, 1]]}, "patch description's 'world_to_aligned' is not valid"),
    ({"heldout_image_names": "img001.png"}, "patch description's 'heldout_image_names' is not valid"),
    ({"num_cameras": -1}, "patch description's 'num_cameras' is not valid"),
    ({"world_to_aligned": [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]}, "world_to_aligned differs from the other patches'"),
    ({"id": "p0"}, "describes patch 'p0', not its folder's 'p1'"),
])
def test_a_damaged_layout_is_one_line_naming_the_file(tmp_path, changes, problem):
    cells = {"p0": [None, 0.0, None, None], "p1": [0.0, None, None, None]}
    SplitLayout(GroundFrame(np.eye(3)), tuple(describe_patch(pid, cell) for pid, cell in cells.items())).save(tmp_path)
    # p1 is damaged: a frame is found to differ at the second patch, after the first set the frame.
    path = _damaged(tmp_path / "p1", changes)
    with pytest.raises(InputError) as raised:
        SplitLayout.load(tmp_path)
    assert str(raised.value).startswith(f"{path}: {problem}") and "\n" not in str(raised.value)


def test_a_layout_without_patches_or_descriptions_is_refused(tmp_path):
    with pytest.raises(InputError, match="patches folder not found: run the split first"):
        SplitLayout.load(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"holds no patch \(pN/patch.json\): run the split first"):
        SplitLayout.load(tmp_path)
    (tmp_path / "p0").mkdir()
    with pytest.raises(InputError, match=r"p0: not a patch folder \(no patch.json\): run the split first"):
        SplitLayout.load(tmp_path)


def test_the_ground_projection_is_the_plain_product():
    """The ground frame projects in row blocks (fast on a busy machine): the values are the plain product's."""
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    points = np.random.default_rng(2).normal(scale=100.0, size=(50_000, 3))
    assert np.array_equal(GroundFrame(rotation).to_ground(points), (points @ rotation.T)[:, :2])


def test_fast_helpers_match_numpy():
    """The split's faster stand-ins give exactly NumPy's answers: a stable sort, a 2D histogram."""
    from patchsplat.colmap_io.arrays import _stable_order
    from patchsplat.split.plot import density_histogram

    rng = np.random.default_rng(3)
    for high in (50, 70_000, 2**31 - 1):  # one radix pass, two passes, the largest int32 keys
        keys = rng.integers(0, high, size=20_000, dtype=np.int32)
        assert np.array_equal(_stable_order(keys), np.argsort(keys, kind="stable"))
    view = Cell(-3.0, 7.0, -1.5, 2.5)
    xy = rng.uniform(-5.0, 9.0, size=(50_000, 2))
    x_edges, y_edges = np.linspace(-3.0, 7.0, 41), np.linspace(-1.5, 2.5, 41)
    xy[:500, 0] = rng.choice(x_edges, 500)  # on edges, the last edge included
    xy[500:1000, 1] = rng.choice(y_edges, 500)
    xy[1000:1500, 0] = np.nextafter(rng.choice(x_edges, 500), -np.inf)  # just below an edge
    expected = np.histogram2d(xy[:, 0], xy[:, 1], bins=40, range=[[-3.0, 7.0], [-1.5, 2.5]])
    for mine, numpy_answer in zip(density_histogram(xy, 40, view), expected):
        assert np.array_equal(mine, numpy_answer)


# ------------------------------------------------------------------------------------------- mode auto


def test_auto_keeps_an_object_orbit_whole(make_scene, tmp_path):
    scene = make_scene(num_images=16, num_points=400)      # cameras on a circle, all looking at the centre
    summary = _split(scene, tmp_path / "patches", mode="auto", min_points=10)
    assert summary["num_patches"] == 1
    assert summary["decision"] == "16 cameras looking at one subject (their views converge): 1 patch"


def test_auto_cuts_a_wide_capture_into_balanced_cells(scenes, tmp_path):
    # 200 cameras over a 60 m plane at 48 x 36: 0.35 Mpx, made "too much for one patch" by a small capacity.
    summary = _split(scenes["large"], tmp_path / "patches", mode="auto", megapixels_per_patch=0.1)
    assert summary["num_patches"] == 4 and summary["decision"].endswith(": 2 x 2 cells"), summary["decision"]
    assert "0.3 Mpx of images at 48x36" in summary["decision"]
    cameras = [patch["num_core_cameras"] for patch in summary["patches"]]
    points = [patch["num_core_points"] for patch in summary["patches"]]
    # Cuts balance cameras and points together: neither is far from an equal share.
    assert max(cameras) <= 2 * min(cameras) and max(points) <= 2 * min(points), (cameras, points)
    assert sum(cameras) == 200


def test_auto_never_makes_a_patch_without_points(scenes, tmp_path):
    """A region with cameras but no points (sky, water) is merged into a neighbour before any model is written."""
    from patchsplat.colmap_io.arrays import write_model_subset
    from patchsplat.split.plan import plan_split

    source = read_model_arrays(scenes["large"] / "sparse" / "0")
    plan = plan_split(source, SplitConfig(mode="auto", megapixels_per_patch=0.1))
    # Points only in one corner (a lake, the sky elsewhere), cameras everywhere.
    low_x, low_y = np.percentile(plan.point_xy, 40, axis=0)
    empty_side = (plan.point_xy[:, 0] > low_x) | (plan.point_xy[:, 1] > low_y)
    scene = tmp_path / "scene"
    write_model_subset(source, np.arange(len(source.image_ids)), np.flatnonzero(~empty_side), scene / "sparse" / "0")
    (scene / "images").symlink_to(scenes["large"] / "images")
    summary = _split(scene, tmp_path / "patches", mode="auto", megapixels_per_patch=0.1)
    assert summary["num_patches"] < 4 and summary["notes"], summary["decision"]
    assert all(patch["num_core_points"] >= 200 and patch["num_core_cameras"] >= 8 for patch in summary["patches"])
    assert sum(patch["num_core_cameras"] for patch in summary["patches"]) == 200


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real captured scenes not found at {REAL_DATA} (a user's clone has none)")
@pytest.mark.parametrize(("scene", "patches", "why"), [
    ("cup77", 1, "77 cameras looking at one subject"),
    ("fern_llff8", 1, "20 cameras looking at one subject"),
    ("tello_lab", 2, "90 cameras over"),
])
def test_auto_on_the_real_captures(scene, patches, why):
    from patchsplat.scene_layout import locate_scene
    from patchsplat.split.plan import plan_split

    plan = plan_split(read_model_arrays(locate_scene(REAL_DATA / scene).model_dir), SplitConfig(mode="auto"))
    assert len(plan.patches) == patches and plan.decision.startswith(why), plan.decision
    assert all(patch.num_core_points >= 200 for patch in plan.patches)


def test_auto_keeps_the_demo_whole(tmp_path):
    """The demo (96 cameras of 160 x 120 over a plane: wide, but 1.8 Mpx) is one patch unless asked otherwise."""
    from patchsplat.split.plan import plan_split

    generate_demo_scene(with_overrides(None, render_images=False), tmp_path / "demo", progress=False)
    plan = plan_split(read_model_arrays(tmp_path / "demo" / "sparse" / "0"), SplitConfig(mode="auto"))
    assert len(plan.patches) == 1 and "1.8 Mpx of images at 160x120" in plan.decision, plan.decision
