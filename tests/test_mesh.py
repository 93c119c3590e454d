"""Mesh extraction: TSDF fusion and marching cubes against an analytic scene, the mesh of a trained demo
scene against its ground truth, cropping to cells, welding, small pieces, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from patchsplat.config import MeshConfig, SplitConfig, TrainConfig, ValidateConfig, deep_merge
from patchsplat.demo import generate_demo_scene, with_overrides
from patchsplat.errors import InputError
from patchsplat.mesh import TsdfVolume, extract_scene_mesh, extract_surface, lattice_box, remove_small_components
from patchsplat.mesh import extract as extract_module
from patchsplat.mesh.fuse import load_patch, mesh_patch, patch_settings
from patchsplat.mesh.ops import boundary_vertices
from patchsplat.mesh.reference import visible_ground_truth_samples
from patchsplat.mesh.surface import observed_cubes
from patchsplat.output_folder import MARKER
from patchsplat.prepare import knn_spacing, prepare_patch
from patchsplat.scene_views import SceneCameras
from patchsplat.splat_io import write_splats_ply
from patchsplat.split import GroundFrame, PatchDescription, split_scene
from patchsplat.split.partition import Cell


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread for this module: on a loaded 2-core machine, torch's default OpenMP threads
    spin-wait against the other processes and made rendering and fusion 20-60x slower (measured);
    OMP_WAIT_POLICY=PASSIVE, set before torch is imported, fixes it for every thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# An analytic scene: a sphere resting on a square of the plane z = 0, ray-cast exactly.

# The plane lies between lattice planes (voxel centres are at multiples of the voxel size): a plane
# exactly through voxel centres is a degenerate case for marching cubes (zero-valued corners).
PLANE_Z = 0.01
SPHERE_RADIUS = 0.5
SPHERE_CENTRE = np.array([0.0, 0.0, PLANE_Z + SPHERE_RADIUS])
PLANE_HALF = 1.5          # the plane is the square |x|, |y| <= 1.5: the scene extent is 3
WIDTH, HEIGHT = 96, 72
K = np.array([[84.0, 0.0, 48.0], [0.0, 84.0, 36.0], [0.0, 0.0, 1.0]])


def look_at(centre: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP cam_from_world (x right, y down, z forward) of a camera at ``centre`` looking at ``target``, z up."""
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    rotation = np.stack([right, np.cross(forward, right), forward])
    return rotation, -rotation @ centre


def raycast_depth(rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z-depth HxW, 0 where the ray misses; surface id HxW: 0 none, 1 plane, 2 sphere) through pixel centres."""
    centre = -rotation.T @ translation
    u, v = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    # Directions with camera z = 1, so the ray parameter of a hit is its z-depth.
    local = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1).reshape(-1, 3)
    dirs = local @ rotation
    with np.errstate(divide="ignore", invalid="ignore"):
        t_plane = (PLANE_Z - centre[2]) / dirs[:, 2]
    on_plane = (t_plane > 0) & np.all(np.abs(centre[:2] + t_plane[:, None] * dirs[:, :2]) <= PLANE_HALF, axis=1)
    offset = centre - SPHERE_CENTRE
    a, b, c = np.sum(dirs * dirs, axis=1), 2 * dirs @ offset, offset @ offset - SPHERE_RADIUS**2
    disc = b * b - 4 * a * c
    t_sphere = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    t_sphere = np.where(t_sphere > 0, t_sphere, np.inf)
    t_best = np.minimum(np.where(on_plane, t_plane, np.inf), t_sphere)
    surface = np.where(np.isinf(t_best), 0, np.where(t_sphere <= t_best, 2, 1))
    return np.where(np.isfinite(t_best), t_best, 0.0).reshape(HEIGHT, WIDTH), surface.reshape(HEIGHT, WIDTH)


def analytic_views() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(rotation, translation, depth, surface id) of 12 cameras on two rings around the sphere."""
    views = []
    for elevation, count in ((1.4, 6), (2.6, 6)):
        for azimuth in np.linspace(0, 2 * np.pi, count, endpoint=False) + elevation:
            rotation, translation = look_at(np.array([2.6 * np.cos(azimuth), 2.6 * np.sin(azimuth), elevation]),
                                            np.array([0.0, 0.0, 0.3]))
            views.append((rotation, translation, *raycast_depth(rotation, translation)))
    return views


def distance_to_analytic(points: np.ndarray) -> np.ndarray:
    """Distance to the union of the sphere and the plane square."""
    to_sphere = np.abs(np.linalg.norm(points - SPHERE_CENTRE, axis=1) - SPHERE_RADIUS)
    outside_square = np.maximum(np.abs(points[:, :2]) - PLANE_HALF, 0.0)
    to_plane = np.sqrt((points[:, 2] - PLANE_Z) ** 2 + np.sum(outside_square**2, axis=1))
    return np.minimum(to_sphere, to_plane)


def visible_analytic_samples(views, count: int = 60_000, seed: int = 0) -> np.ndarray:
    """Uniform samples of the analytic surface that some view sees (their depth matches the view's depth map)."""
    rng = np.random.default_rng(seed)
    sphere_area, plane_area = 4 * np.pi * SPHERE_RADIUS**2, (2 * PLANE_HALF) ** 2
    n_sphere = int(count * sphere_area / (sphere_area + plane_area))
    on_sphere = rng.normal(size=(n_sphere, 3))
    on_sphere = SPHERE_CENTRE + SPHERE_RADIUS * on_sphere / np.linalg.norm(on_sphere, axis=1, keepdims=True)
    on_plane = np.column_stack([rng.uniform(-PLANE_HALF, PLANE_HALF, (count - n_sphere, 2)), np.full(count - n_sphere, PLANE_Z)])
    points = np.concatenate([on_sphere, on_plane])
    seen = np.zeros(len(points), dtype=bool)
    for rotation, translation, depth, _ in views:
        cam = points @ rotation.T + translation
        z = np.where(cam[:, 2] > 1e-6, cam[:, 2], np.nan)
        col = np.floor(K[0, 0] * cam[:, 0] / z + K[0, 2])
        row = np.floor(K[1, 1] * cam[:, 1] / z + K[1, 2])
        inside = (col >= 0) & (col < WIDTH) & (row >= 0) & (row < HEIGHT)
        index = np.flatnonzero(inside)
        measured = depth[row[index].astype(int), col[index].astype(int)]
        seen[index[np.abs(measured - z[index]) < 0.02 * z[index] + 0.01]] = True
    return points[seen]


def chamfer(mesh_samples: np.ndarray, reference_samples: np.ndarray) -> float:
    """Mean of the two mean nearest-neighbour distances between two point samples."""
    to_reference = cKDTree(reference_samples).query(mesh_samples)[0]
    to_mesh = cKDTree(mesh_samples).query(reference_samples)[0]
    return 0.5 * (float(to_reference.mean()) + float(to_mesh.mean()))


@pytest.fixture(scope="module")
def analytic_mesh() -> dict:
    """The analytic scene fused at 3 cm voxels (sphere red, plane blue) and marched."""
    views = analytic_views()
    voxel = 0.03
    grid = lattice_box(np.array([-1.7, -1.7, -0.2]), np.array([1.7, 1.7, 1.2]), voxel, np.eye(3))
    volume = TsdfVolume(grid, sdf_trunc=4 * voxel)
    palette = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    for rotation, translation, depth, surface in views:
        volume.integrate(depth, palette[surface], K, rotation, translation)
    vertices, faces = extract_surface(volume.tsdf_grid(), volume.observed_grid())
    colours = volume.sample_colour(vertices)
    mesh = trimesh.Trimesh(grid.index_to_aligned(vertices), faces, process=False)
    return {"views": views, "voxel": voxel, "mesh": mesh, "colours": colours}


def test_tsdf_and_marching_cubes_recover_an_analytic_scene(analytic_mesh):
    mesh, voxel = analytic_mesh["mesh"], analytic_mesh["voxel"]
    samples, _ = trimesh.sample.sample_surface(mesh, 60_000, seed=1)
    accuracy = distance_to_analytic(samples)                 # exact distance to the true surface
    reference = visible_analytic_samples(analytic_mesh["views"])
    distance = chamfer(samples, reference)
    extent = 2 * PLANE_HALF
    assert distance <= 0.01 * extent and distance <= voxel, distance
    assert float(accuracy.mean()) <= 0.25 * voxel, accuracy.mean()
    assert np.percentile(accuracy, 99) <= voxel


def test_faces_point_out_of_the_surface_and_colours_follow_it(analytic_mesh):
    mesh, colours = analytic_mesh["mesh"], analytic_mesh["colours"]
    top = mesh.triangles_center[:, 2] > SPHERE_CENTRE[2] + 0.9 * SPHERE_RADIUS
    assert top.sum() > 10 and np.all(mesh.face_normals[top, 2] > 0.5)
    plane = np.abs(mesh.triangles_center[:, 2] - PLANE_Z) < 0.01
    assert np.median(mesh.face_normals[plane, 2]) > 0.98
    vertex = mesh.vertices
    on_sphere = np.abs(np.linalg.norm(vertex - SPHERE_CENTRE, axis=1) - SPHERE_RADIUS) < 0.01
    on_sphere &= vertex[:, 2] > SPHERE_CENTRE[2]
    on_plane = (np.abs(vertex[:, 2] - PLANE_Z) < 0.01) & (np.linalg.norm(vertex[:, :2], axis=1) > 1.5 * SPHERE_RADIUS)
    assert np.mean(colours[on_sphere, 0] > 0.9) > 0.95     # red sphere
    assert np.mean(colours[on_plane, 2] > 0.9) > 0.95      # blue plane


def test_only_fully_observed_cubes_make_faces():
    """A plane through a grid whose one half was never observed: faces only in the observed half, and
    none in the cubes that touch the boundary column of unobserved voxels."""
    x = np.arange(12, dtype=np.float32)
    tsdf = np.broadcast_to((x - 5.5)[:, None, None] / 3, (12, 10, 8)).copy()
    weight = np.ones_like(tsdf)
    weight[:, 6:, :] = 0  # y >= 6 never observed
    vertices, faces = extract_surface(tsdf, weight > 0)
    assert len(faces) > 0
    assert vertices[:, 1].max() <= 5.0 + 1e-9
    assert np.allclose(vertices[:, 0], 5.5)
    cubes = observed_cubes(weight > 0)
    assert cubes[:, :5].all() and not cubes[:, 5:].any()


def test_remove_small_components_keeps_the_large_pieces():
    big = trimesh.creation.icosphere(subdivisions=3)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.1)
    small.apply_translation([3.0, 0.0, 0.0])
    both = trimesh.util.concatenate([big, small])
    colours = np.zeros((len(both.vertices), 3), np.float32)
    vertices, faces, _, summary = remove_small_components(both.vertices, both.faces, colours, 0.5)
    assert summary == {"components": 2, "components_removed": 1, "faces_removed": len(small.faces)}
    assert len(faces) == len(big.faces) and np.all(vertices[:, 0] < 2.0)


# ---------------------------------------------------------------------------------------------
# Demo scenes: a small one, meshed from briefly trained splats and from splats placed on its points.

SMALL_SCENE = {"num_cameras": 24, "width": 64, "height": 48, "num_points": 3000, "extent": 12.0, "num_boxes": 3,
               "num_spheres": 2}
# Enough training for the expected depth to settle at this size (about 6 s on one CPU thread).
TRAIN_STEPS = 200
FAST_MESH: dict = {}  # the default settings: voxel and truncations from the observed point depths


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory) -> Path:
    scene = tmp_path_factory.mktemp("mesh-demo") / "scene"
    generate_demo_scene(with_overrides(None, **SMALL_SCENE), scene, progress=False)
    return scene


@pytest.fixture(scope="module")
def trained_scene(demo_scene) -> Path:
    """1 x 1 split of the small demo scene, trained for TRAIN_STEPS steps."""
    from patchsplat.train.loop import train_patch

    root = demo_scene.parent / "trained-1x1"
    split_scene(demo_scene, root / "patches", SplitConfig(mode="grid", rows=1, cols=1, min_cameras=1), ValidateConfig(),
                progress=False)
    config = TrainConfig.model_validate(deep_merge(TrainConfig().model_dump(), {
        "steps": TRAIN_STEPS, "eval_every": TRAIN_STEPS, "checkpoint_every": TRAIN_STEPS, "backend": "torch",
        "sh_degree": 1, "scales_lr": 0.02, "opacities_lr": 0.2,
        "strategy": {"refine_start_iter": 50, "refine_every": 50, "refine_stop_iter": 150},
    }))
    prepare_patch(root / "patches" / "p0", root / "prepared" / "p0", config)
    train_patch(root / "patches" / "p0", root / "prepared" / "p0", root / "trained" / "p0", config,
                progress=False, log=lambda message: None)
    return root


def splats_on_points(points: np.ndarray, colours: np.ndarray) -> dict[str, torch.Tensor]:
    """Opaque isotropic Gaussians on the given points, sized by their spacing: a stand-in for trained
    splats whose rendered depth is already close to the surface."""
    spacing = knn_spacing(points, 3)
    count = len(points)
    return {
        "means": torch.as_tensor(points, dtype=torch.float32),
        "scales": torch.as_tensor(np.log(np.repeat(spacing[:, None], 3, axis=1)), dtype=torch.float32),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(count, 1),
        "opacities": torch.full((count,), 3.0),
        "sh0": torch.as_tensor((colours / 255.0 - 0.5) / 0.28209479177387814, dtype=torch.float32)[:, None, :],
        "shN": torch.zeros(count, 0, 3),
    }


BLOB_HEIGHT = np.array([0.0, 0.0, 1.5])


def blob_spot(ground_points: np.ndarray, scene: Path, cameras) -> np.ndarray:
    """The spot BLOB_HEIGHT above a ground point at least 1 m (in x/y) from every object's footprint that
    most of ``cameras`` see."""
    objects = json.loads((scene / "manifest.json").read_text())["objects"]
    clearance = np.full(len(ground_points), np.inf)
    for item in objects:
        reach = item["radius"] if item["type"] == "sphere" else 0.5 * float(np.hypot(*item["size"][:2]))
        clearance = np.minimum(clearance, np.linalg.norm(ground_points[:, :2] - item["centre"][:2], axis=1) - reach)
    candidates = ground_points[clearance > 1.0] + BLOB_HEIGHT
    seen_by = np.zeros(len(candidates), dtype=int)
    for camera in cameras:
        cam = candidates @ camera.rotation.T + camera.translation
        z = np.where(cam[:, 2] > 0, cam[:, 2], np.nan)
        u, v = camera.K[0, 0] * cam[:, 0] / z + camera.K[0, 2], camera.K[1, 1] * cam[:, 1] / z + camera.K[1, 2]
        seen_by += (u > 8) & (u < camera.width - 8) & (v > 8) & (v < camera.height - 8)
    return candidates[np.argmax(seen_by)]


@pytest.fixture(scope="module")
def placed_scene(demo_scene) -> dict:
    """1 x 2 split of the small demo scene with splats placed on each patch's points, and a tiny
    floating blob of splats added to p0 (above the ground, inside its core cell)."""
    from patchsplat.colmap_io.arrays import read_model_arrays

    root = demo_scene.parent / "placed-1x2"
    split_scene(demo_scene, root / "patches", SplitConfig(mode="grid", rows=1, cols=2, min_cameras=1), ValidateConfig(),
                progress=False)
    blob_centre = None
    for patch_dir in sorted((root / "patches").glob("p*")):
        arrays = read_model_arrays(patch_dir / "sparse" / "0")
        points, colours = arrays.xyz, arrays.rgb.astype(np.float64)
        if patch_dir.name == "p0":
            patch = PatchDescription.load(patch_dir)
            ground = points[patch.core_contains(points) & (points[:, 2] < 0.05)]
            cameras = SceneCameras(patch_dir / "sparse" / "0", demo_scene / "images").cameras
            training = patch.training_image_names()
            blob_centre = blob_spot(ground, demo_scene, [camera for camera in cameras if camera.name in training])
            blob = blob_centre + np.random.default_rng(0).normal(scale=0.1, size=(40, 3))
            points = np.concatenate([points, blob])
            colours = np.concatenate([colours, np.full((len(blob), 3), 255.0)])
        splats = splats_on_points(points, colours)
        if patch_dir.name == "p0":
            splats["scales"][-40:] = float(np.log(0.08))
        (root / "trained" / patch_dir.name).mkdir(parents=True)
        write_splats_ply(root / "trained" / patch_dir.name / "splats.ply", **splats)
    return {"root": root, "blob_centre": blob_centre}


def ground_truth_samples(scene: Path, cameras, depth_trunc: float, count: int = 400_000) -> np.ndarray:
    return visible_ground_truth_samples(scene, cameras, depth_trunc, count)


def test_mesh_of_a_trained_demo_scene_is_close_to_the_ground_truth(demo_scene, trained_scene, tmp_path):
    """The issue's requirement, at test size: Chamfer distance to the visible ground truth, relative to the
    side of the scene's area (12 m). At 64x48 pixels and 200 steps the splats' expected depth is off by
    ~5% of the distance, which bounds what fusion can do: the bound here is 3%; the 1% requirement is
    checked on the full demo by bench/mesh.py."""
    summary = extract_scene_mesh(trained_scene / "patches", trained_scene / "trained", tmp_path / "mesh",
                                 MeshConfig(**FAST_MESH), progress=False)
    mesh = trimesh.load(tmp_path / "mesh" / "mesh.ply", force="mesh", process=False)
    p0 = trained_scene / "patches" / "p0"
    cameras = load_patch(p0, PatchDescription.load(p0), trained_scene / "trained" / "p0" / "splats.ply")
    reference = ground_truth_samples(demo_scene, cameras.cameras, summary["patches"][0]["depth_trunc"])
    samples, _ = trimesh.sample.sample_surface(mesh, 200_000, seed=1)
    side = json.loads((demo_scene / "manifest.json").read_text())["scene_extent"]["area_side"]
    distance = chamfer(samples, reference)
    print(f"Chamfer {distance:.3f} m = {100 * distance / side:.2f}% of the side")
    assert distance <= 0.03 * side, f"Chamfer {distance:.3f} = {100 * distance / side:.2f}% of the side"


def test_outputs_load_back_with_colours_and_the_record_is_complete(trained_scene, tmp_path):
    out = tmp_path / "mesh"
    summary = extract_scene_mesh(trained_scene / "patches", trained_scene / "trained", out,
                                 MeshConfig(voxels_per_scene=64, resolution_factor=2), progress=False)
    assert sorted(path.name for path in out.iterdir()) == [MARKER, "mesh.glb", "mesh.json", "mesh.ply"]
    assert json.loads((out / "mesh.json").read_text()) == summary
    for name in ("mesh.ply", "mesh.glb"):
        mesh = trimesh.load(out / name, force="mesh")
        assert len(mesh.faces) == summary["totals"]["faces"] and len(mesh.vertices) == summary["totals"]["vertices"]
        assert mesh.visual.kind == "vertex"
        colours = np.asarray(mesh.visual.vertex_colors)
        assert colours.shape == (len(mesh.vertices), 4) and colours[:, :3].std() > 5
    record = summary["patches"][0]
    patch = PatchDescription.load(trained_scene / "patches" / "p0")
    assert record["views_fused"] == len(patch.training_image_names())
    assert record["views_held_out"] == len(patch.heldout_image_names) > 0
    cameras = SceneCameras(trained_scene / "patches" / "p0" / "sparse" / "0", trained_scene / "patches")
    assert record["voxel_size"] == pytest.approx(1.0 / cameras.frame.scale / 64)
    assert record["why"]["voxel_size"].startswith("mesh.voxels_per_scene")
    assert record["sdf_trunc"] == pytest.approx(5 * record["voxel_size"])
    views = record["depth_trunc_views"]
    assert views["min"] <= views["median"] <= views["max"] == pytest.approx(record["depth_trunc"])
    assert record["why"]["depth_trunc"].startswith("per view, p98")
    assert record["resolution_factor"] == 2 and record["why"]["resolution"] == "mesh.resolution_factor"
    assert record["fusion_resolution"] == "32x24 (1/2 of 64x48)"
    assert record["faces"] <= record["faces_before_crop"]
    assert summary["totals"]["views_fused"] == record["views_fused"]
    assert summary["tsdf_implementation"] and summary["device"] == "cpu"


def test_pieces_tile_the_cells_and_the_floating_blob_is_removed(placed_scene, tmp_path):
    root = placed_scene["root"]
    config = MeshConfig(voxel_size=0.05)  # one voxel size: the pieces share a lattice and their seam welds
    pieces, cells = [], []
    for patch_dir in sorted((root / "patches").glob("p*")):
        inputs = load_patch(patch_dir, PatchDescription.load(patch_dir), root / "trained" / patch_dir.name / "splats.ply")
        piece = mesh_patch(inputs, patch_settings(inputs, config), config, torch.device("cpu"))
        centroids = inputs.ground.to_ground(piece.vertices[piece.faces].mean(axis=1))
        assert inputs.cell.contains(centroids).all()           # nothing outside its own cell
        assert piece.record["faces"] < piece.record["faces_before_crop"]
        pieces.append(piece)
        cells.append(inputs.cell)
    # Together they cover both cells: each piece spans its cell's side up to the border they share.
    border = cells[0].x_max if np.isfinite(cells[0].x_max) else cells[0].y_max
    axis = 0 if np.isfinite(cells[0].x_max) else 1
    for piece, sign in zip(pieces, (-1, 1)):
        aligned = inputs.ground.to_aligned(piece.vertices)
        assert np.min(np.abs(aligned[:, axis] - border)) < 0.1     # reaches the border
        assert np.max(sign * (aligned[:, axis] - border)) > 4.0    # and extends well into its cell
    blob = placed_scene["blob_centre"]
    assert np.min(np.linalg.norm(pieces[0].vertices - blob, axis=1)) < 0.6   # p0's piece has the blob

    summary = extract_scene_mesh(root / "patches", root / "trained", tmp_path / "mesh", config, progress=False)
    mesh = trimesh.load(tmp_path / "mesh" / "mesh.ply", force="mesh", process=False)
    assert np.min(np.linalg.norm(mesh.vertices - blob, axis=1)) > 0.6          # removed (the ground is 1 m below)
    totals = summary["totals"]
    assert totals["components_removed"] >= 1
    assert totals["faces_concatenated"] == sum(piece.record["faces"] for piece in pieces)
    # One lattice: the seam is welded on shared lattice edges (and, where the pieces' surfaces cross
    # different edges, between nearest vertices), closing it where the two fusions agree to within a
    # voxel (about 45% of its length with these splats, whose surfaces differ from patch to patch).
    welded = totals["seam_vertices_welded"]
    assert welded["on_lattice_edges"] > 0 and welded["by_distance"] > 0
    open_before = open_border_vertices(pieces, inputs.ground, axis, border, config.voxel_size)
    open_after = open_border_vertices([mesh], inputs.ground, axis, border, config.voxel_size)
    assert open_after < 0.75 * open_before, (open_before, open_after)


def open_border_vertices(meshes, ground: GroundFrame, axis: int, border: float, voxel: float) -> int:
    """Vertices on an open boundary within a voxel of the border, over the meshes."""
    count = 0
    for mesh in meshes:
        aligned = ground.to_aligned(np.asarray(mesh.vertices))
        near = np.abs(aligned[:, axis] - border) < voxel
        count += int((boundary_vertices(np.asarray(mesh.faces), len(mesh.vertices)) & near).sum())
    return count


def test_outputs_are_complete_or_absent(placed_scene, tmp_path, monkeypatch, scene_snapshot):
    root = placed_scene["root"]
    config = MeshConfig(voxels_per_scene=48)
    out = tmp_path / "mesh"

    # A failure part-way through the patches (p1's splats missing) leaves nothing behind ...
    broken = tmp_path / "trained"
    (broken / "p0").mkdir(parents=True)
    (broken / "p0" / "splats.ply").write_bytes((root / "trained" / "p0" / "splats.ply").read_bytes())
    with pytest.raises(InputError, match="splats.ply"):
        extract_scene_mesh(root / "patches", broken, out, config, progress=False)
    assert list(tmp_path.iterdir()) == [broken]

    # ... and an earlier result survives a failure while writing.
    extract_scene_mesh(root / "patches", root / "trained", out, config, progress=False)
    before = scene_snapshot(out)

    def write_then_fail(folder, mesh):
        (folder / "mesh.ply").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(extract_module, "write_mesh_files", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        extract_scene_mesh(root / "patches", root / "trained", out, config, progress=False)
    assert scene_snapshot(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mesh", "trained"]


def test_grid_stops_where_no_camera_can_see(tmp_path):
    """Voxels beyond depth_trunc of every camera are never fused: a far background does not stretch the grid."""
    from patchsplat.mesh import patch_grid

    rng = np.random.default_rng(0)
    near = rng.uniform(-1, 1, (500, 3))
    far = rng.uniform(-1, 1, (500, 3)) + [0.0, 0.0, 40.0]   # a forward-facing capture's background
    points = np.concatenate([near, far])
    cell = Cell(-np.inf, np.inf, -np.inf, np.inf)
    cameras = np.array([[0.0, 0.0, -2.0], [0.5, 0.0, -2.0]])
    unbounded = patch_grid(points, cell, 0.1, 0.2, np.eye(3))
    bounded = patch_grid(points, cell, 0.1, 0.2, np.eye(3), cameras, depth_trunc=4.0)
    assert unbounded.upper[2] > 40 and bounded.upper[2] <= -2.0 + 4.0 + 0.2 + 0.1
    assert bounded.num_voxels < unbounded.num_voxels / 5
    assert np.all(bounded.origin <= near.min(axis=0)) and np.all(bounded.upper[:2] >= near.max(axis=0)[:2])


def test_a_depth_trunc_short_of_the_surface_is_explained(placed_scene, tmp_path):
    root = placed_scene["root"]
    with pytest.raises(InputError) as error:
        extract_scene_mesh(root / "patches", root / "trained", tmp_path / "mesh",
                           MeshConfig(voxels_per_scene=48, depth_trunc=0.05), progress=False)
    message = error.value.one_line()
    assert error.value.kind == "empty_mesh" and "beyond its depth_trunc of 0.05" in message
    assert "set mesh.depth_trunc above that distance" in message
    assert not (tmp_path / "mesh").exists()
