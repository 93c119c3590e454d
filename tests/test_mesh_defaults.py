"""Mesh settings chosen from where the surfaces are (patchsplat.mesh.defaults, fuse.patch_settings): depth
truncation and voxel from the observed point depths at known geometry, a forward-facing capture whose
surfaces lie far beyond its camera spread, the memory budget, and the fusion resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from conftest import trained_metrics
from patchsplat.config import MeshConfig, SplitConfig, ValidateConfig
from patchsplat.console import console
from patchsplat.errors import InputError
from patchsplat.mesh import defaults, extract_scene_mesh
from patchsplat.mesh.fuse import PatchInputs, patch_settings
from patchsplat.mesh.grid import mesh_bytes
from patchsplat.mesh.report import print_mesh_table
from patchsplat.prepare import canonical_frame, knn_spacing
from patchsplat.scene_views import Camera
from patchsplat.splat_io import write_splats_ply
from patchsplat.split import GroundFrame, split_scene
from patchsplat.split.partition import Cell
from patchsplat.train.records import TrainedMetrics

WIDTH, HEIGHT, FOCAL = 200, 150, 100.0
K = np.array([[FOCAL, 0.0, WIDTH / 2], [0.0, FOCAL, HEIGHT / 2], [0.0, 0.0, 1.0]])


def facing_cameras(spacing: float, count: int = 3) -> list[Camera]:
    """count x count cameras on the plane z = 0, ``spacing`` apart, all looking along +z (COLMAP: x right,
    y down, z forward, so rotation = I and translation = -centre)."""
    offsets = (np.arange(count) - (count - 1) / 2) * spacing
    return [Camera(f"img{i:03d}.png", Path(f"img{i:03d}.png"), np.eye(3), -np.array([x, y, 0.0]), K, WIDTH, HEIGHT)
            for i, (x, y) in enumerate((x, y) for x in offsets for y in offsets)]


def plane_points(depth: float, half_width: float, count: int = 40) -> np.ndarray:
    side = np.linspace(-half_width, half_width, count)
    x, y = np.meshgrid(side, side)
    return np.column_stack([x.ravel(), y.ravel(), np.full(x.size, depth)])


def seen_by(camera: Camera, points: np.ndarray) -> np.ndarray:
    """Indices of the points that project into the camera's image (its observations)."""
    cam = points @ camera.rotation.T + camera.translation
    u = FOCAL * cam[:, 0] / cam[:, 2] + WIDTH / 2
    v = FOCAL * cam[:, 1] / cam[:, 2] + HEIGHT / 2
    return np.flatnonzero((cam[:, 2] > 0) & (u >= 0) & (u < WIDTH) & (v >= 0) & (v < HEIGHT))


def synthetic_patch(cameras: list[Camera], points: np.ndarray, trained_factor: int | None = 2) -> PatchInputs:
    """A one-patch scene held in memory (no files): an infinite core cell, the identity aligned frame."""
    return PatchInputs(
        patch_id="p0", patch_dir=Path("p0"), cell=Cell(-np.inf, np.inf, -np.inf, np.inf), ground=GroundFrame(np.eye(3)),
        cameras=cameras, held_out=0, frame=canonical_frame(np.stack([c.centre for c in cameras]), points),
        points_world=points, splats={}, observed=[seen_by(camera, points) for camera in cameras],
        trained_factor=trained_factor, metrics_path=Path("trained/p0/metrics.json"),
    )


def test_a_plane_at_known_depth_sets_depth_trunc_voxel_and_grid():
    """Cameras facing a plane 10 units away: every observed depth is 10, so each view's truncation is
    10 x DEPTH_MARGIN, and at the training factor 2 (focal 50 px) a 2-pixel voxel is 2 x 10 / 50 = 0.4."""
    inputs = synthetic_patch(facing_cameras(0.5), plane_points(10.0, 6.0))
    settings = patch_settings(inputs, MeshConfig(voxel_pixels=2.0))
    assert np.allclose(settings.view_depth_trunc, 10.0 * defaults.DEPTH_MARGIN)
    assert settings.depth_trunc == pytest.approx(10.0 * defaults.DEPTH_MARGIN)
    assert settings.voxel_size == pytest.approx(2.0 * 10.0 / (FOCAL / 2))
    assert settings.sdf_trunc == pytest.approx(5 * settings.voxel_size)
    assert settings.resolution_factor == 2
    grid = settings.grid
    assert grid.origin[2] < 10.0 < grid.upper[2]                                   # the plane is inside
    assert grid.origin[0] <= -6.0 and grid.upper[0] >= 6.0
    assert grid.upper[2] - grid.origin[2] < 20 * settings.voxel_size               # and the grid is thin around it
    record = settings.record
    assert record["fusion_resolution"] == "100x75 (1/2 of 200x150)"
    assert "trained at" in record["why"]["resolution"]
    assert record["why"]["depth_trunc"].startswith("per view, p98")
    assert "2 px footprint at the median observed point depth 10" in record["why"]["voxel_size"]
    assert record["coarsened"] is None and "within mesh.memory_budget_gb 2" in record["why"]["memory"]
    json.dumps(record)                                                             # goes into mesh.json as it is


def test_explicit_settings_win_over_the_observed_depths():
    inputs = synthetic_patch(facing_cameras(0.5), plane_points(10.0, 6.0))
    settings = patch_settings(inputs, MeshConfig(voxel_size=0.5, depth_trunc=30.0, resolution_factor=1))
    assert settings.voxel_size == 0.5 and np.all(settings.view_depth_trunc == 30.0) and settings.resolution_factor == 1
    assert settings.record["why"] | {"grid": "", "memory": ""} == {
        "resolution": "mesh.resolution_factor", "depth_trunc": "mesh.depth_trunc", "voxel_size": "mesh.voxel_size",
        "grid": "", "memory": ""}
    old_rule = patch_settings(inputs, MeshConfig(voxels_per_scene=64))
    assert old_rule.voxel_size == pytest.approx(inputs.scene_scale / 64)


def test_a_view_with_few_points_takes_the_patch_value_and_a_far_seeing_view_keeps_its_own():
    depths = [np.full(100, 10.0)] * 40 + [np.full(100, 2.0), np.full(20, 40.0), np.full(5, 100.0)]
    truncs, record = defaults.depth_truncations(depths)
    patch = 10.0 * defaults.DEPTH_MARGIN                       # p98 of all 4,125 depths is 10
    assert record["patch"] == pytest.approx(patch)
    assert truncs[0] == pytest.approx(patch)                   # its own value
    assert truncs[40] == pytest.approx(patch)                  # near view: the patch's value is a floor
    assert truncs[41] == pytest.approx(40.0 * defaults.DEPTH_MARGIN)   # sees farther: its own
    assert truncs[42] == pytest.approx(patch)                  # 5 points: too few, the patch's
    assert record["views_farther"] == 1 and "1 observe < 20 points" in record["rule"]
    assert defaults.depth_truncations([np.zeros(0)] * 3) is None


def test_points_ten_times_beyond_the_camera_spread_get_a_grid_the_old_rule_missed():
    """Forward-facing: cameras within 0.4 of each other, the surface 20 away (the camera-spread rule's
    depth_trunc, 2 x the scene scale, stopped the grid long before it)."""
    inputs = synthetic_patch(facing_cameras(0.2), plane_points(20.0, 10.0))
    assert 20.0 > 10 * 2 * inputs.scene_scale
    settings = patch_settings(inputs, MeshConfig())
    assert settings.grid is not None and settings.grid.origin[2] < 20.0 < settings.grid.upper[2]
    assert settings.depth_trunc == pytest.approx(20.0 * defaults.DEPTH_MARGIN)
    old_rule = patch_settings(inputs, MeshConfig(voxels_per_scene=256, depth_trunc=2 * inputs.scene_scale))
    assert old_rule.grid is None


def test_a_grid_over_the_memory_budget_is_coarsened_and_says_so():
    inputs = synthetic_patch(facing_cameras(0.5), plane_points(10.0, 6.0), trained_factor=1)
    asked = MeshConfig(voxel_pixels=0.25)
    fine = patch_settings(inputs, asked)
    budget_gb = 0.25 * mesh_bytes(fine.grid) / 2**30
    settings = patch_settings(inputs, asked.model_copy(update={"memory_budget_gb": budget_gb}))
    assert mesh_bytes(settings.grid) <= budget_gb * 2**30
    assert settings.voxel_size > fine.voxel_size * 1.2
    coarsened = settings.record["coarsened"]
    assert coarsened["voxel_asked"] == pytest.approx(fine.voxel_size) and coarsened["budget_gb"] == budget_gb
    assert f"coarsened from {fine.voxel_size:.4g} to {settings.voxel_size:.4g}" in settings.record["why"]["voxel_size"]


def test_an_explicit_voxel_over_the_budget_is_refused_naming_the_settings():
    inputs = synthetic_patch(facing_cameras(0.5), plane_points(10.0, 6.0))
    with pytest.raises(InputError) as error:
        patch_settings(inputs, MeshConfig(voxel_size=0.002, memory_budget_gb=0.01))
    assert error.value.where == "mesh.voxel_size" and "mesh.memory_budget_gb (0.01)" in error.value.one_line()


def test_the_fusion_resolution_is_the_training_one_unless_set(tmp_path):
    cameras, points = facing_cameras(0.5), plane_points(10.0, 6.0)
    assert patch_settings(synthetic_patch(cameras, points, 4), MeshConfig()).record["fusion_resolution"] == "50x37 (1/4 of 200x150)"
    assert patch_settings(synthetic_patch(cameras, points, 4), MeshConfig(resolution_factor=2)).resolution_factor == 2
    unknown = patch_settings(synthetic_patch(cameras, points, None), MeshConfig())
    assert unknown.resolution_factor == 1 and unknown.record["why"]["resolution"].startswith("full resolution: no training metrics")

    metrics = tmp_path / "metrics.json"
    trained_metrics(resolution_factor=3).save(metrics)
    assert TrainedMetrics.load(metrics).resolution_factor == 3
    complete = trained_metrics().model_dump()
    without_factor = {key: value for key, value in complete.items() if key != "resolution_factor"}
    for text in (json.dumps({**complete, "resolution_factor": 0}), json.dumps(without_factor), "{not json"):
        metrics.write_text(text)
        with pytest.raises(InputError) as error:
            TrainedMetrics.load(metrics)
        assert error.value.where == str(metrics) and error.value.kind == "corrupt_file"


# ---------------------------------------------------------------------------------------------
# End to end: a forward-facing capture (LLFF-like) meshed with default settings.

def forward_facing_scene(out: Path) -> Path:
    """A COLMAP scene: 16 cameras on a 0.3 x 0.3 square looking at a textured wall 8 units away (27x their
    scene scale) with a smaller panel 4 units away in front of it; exact observations."""
    import pycolmap
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height, focal = 64, 48, 60.0
    wall = plane_points(8.0, 4.5, 45)
    panel = plane_points(4.0, 0.8, 12) + [0.6, 0.3, 0.0]
    points = np.concatenate([wall, panel])
    reconstruction = pycolmap.Reconstruction()
    reconstruction.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=width, height=height,
                                                              params=[focal, focal, width / 2, height / 2], camera_id=1))
    tracks = [pycolmap.Track() for _ in points]
    offsets = np.linspace(-0.15, 0.15, 4)
    for image_id, (x, y) in enumerate(((x, y) for x in offsets for y in offsets), start=1):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), -np.array([x, y, 0.0]))
        cam = points - [x, y, 0.0]
        uv = cam[:, :2] / cam[:, 2:3] * focal + [width / 2, height / 2]
        inside = np.flatnonzero(np.all((uv >= 0) & (uv < [width, height]), axis=1))
        image = pycolmap.Image(name=f"img{image_id:03d}.png", keypoints=uv[inside], camera_id=1, image_id=image_id)
        reconstruction.add_image_with_trivial_frame(image, pose)
        for keypoint, index in enumerate(inside):
            tracks[index].add_element(image_id, keypoint)
    colours = rng.integers(0, 255, (len(points), 3)).astype(np.uint8)
    for xyz, track, colour in zip(points, tracks, colours):
        if track.length() >= 2:
            reconstruction.add_point3D(xyz, track, colour)
    (out / "sparse" / "0").mkdir(parents=True)
    (out / "images").mkdir()
    reconstruction.write_binary(str(out / "sparse" / "0"))
    for image in reconstruction.images.values():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(out / "images" / image.name)
    return out


def place_splats(patch_dir: Path, target: Path) -> None:
    """Opaque isotropic Gaussians on the patch's points, sized by their spacing (a stand-in for training)."""
    from patchsplat.colmap_io.arrays import read_model_arrays

    arrays = read_model_arrays(patch_dir / "sparse" / "0")
    spacing, count = knn_spacing(arrays.xyz, 3), len(arrays.xyz)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_splats_ply(
        target, means=torch.as_tensor(arrays.xyz, dtype=torch.float32),
        scales=torch.as_tensor(np.log(np.repeat(spacing[:, None], 3, axis=1)), dtype=torch.float32),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(count, 1), opacities=torch.full((count,), 3.0),
        sh0=torch.as_tensor((arrays.rgb / 255.0 - 0.5) / 0.28209479177387814, dtype=torch.float32)[:, None, :],
        shN=torch.zeros(count, 0, 3),
    )


@pytest.fixture(scope="module")
def forward_facing(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("forward-facing")
    scene = forward_facing_scene(root / "scene")
    split_scene(scene, root / "patches", SplitConfig(mode="grid", rows=1, cols=1, min_cameras=1), ValidateConfig(),
                progress=False)
    place_splats(root / "patches" / "p0", root / "trained" / "p0" / "splats.ply")
    trained_metrics(resolution_factor=1).save(root / "trained" / "p0" / "metrics.json")
    return root


def test_a_forward_facing_capture_meshes_with_default_settings(forward_facing, tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_mesh.one_torch_thread: spinning OpenMP threads on a loaded machine
    try:
        summary = extract_scene_mesh(forward_facing / "patches", forward_facing / "trained", tmp_path / "mesh",
                                     MeshConfig(), progress=False)
    finally:
        torch.set_num_threads(previous)
    record = summary["patches"][0]
    assert record["depth_trunc"] > 20 * record["scene_scale"]
    assert record["resolution_factor"] == 1 and record["fusion_resolution"] == "64x48 (full resolution)"
    mesh = trimesh.load(tmp_path / "mesh" / "mesh.ply", force="mesh", process=False)
    assert len(mesh.faces) > 500
    depth, tolerance = mesh.vertices[:, 2], 2 * record["voxel_size"]
    on_wall, on_panel = np.abs(depth - 8.0) < tolerance, np.abs(depth - 4.0) < tolerance
    assert on_wall.mean() > 0.5 and on_panel.sum() > 20
    assert np.ptp(mesh.vertices[on_wall, 0]) > 5.0                  # most of the wall's visible width
    # Nothing in front of the panel or behind the wall. (Between them, the expected depth blends at the
    # panel's soft edges and the narrow baseline cannot carve it: a skirt joins the two.)
    assert depth.min() > 4.0 - tolerance and depth.max() < 8.0 + tolerance

    with console.capture() as captured:
        print_mesh_table(summary)
    assert "64x48 (full resolution)" in captured.get()


def test_the_stage_output_says_when_the_voxel_was_coarsened(forward_facing, tmp_path):
    summary = extract_scene_mesh(forward_facing / "patches", forward_facing / "trained", tmp_path / "mesh",
                                 MeshConfig(voxel_pixels=0.25, memory_budget_gb=0.01), progress=False)
    record = summary["patches"][0]
    assert record["coarsened"]["budget_gb"] == 0.01 and record["voxel_size"] > record["coarsened"]["voxel_asked"]
    assert json.loads((tmp_path / "mesh" / "mesh.json").read_text())["patches"][0]["coarsened"] == record["coarsened"]
    with console.capture() as captured:
        print_mesh_table(summary)
    text = " ".join(captured.get().split())
    assert "voxel coarsened from" in text and "raise mesh.memory_budget_gb for a finer mesh" in text
