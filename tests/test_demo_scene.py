"""The procedural demo scene: its COLMAP model, images, mesh and manifest agree with each other."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import trimesh
from PIL import Image

from patchsplat.config import DemoSceneConfig
from patchsplat.demo import generate_demo_scene, with_overrides
from patchsplat.errors import InputError

NOISE_PX = 0.5
MAX_TRACK = 6


def small_config(**overrides) -> DemoSceneConfig:
    base = dict(num_cameras=24, num_points=3000, max_track_length=MAX_TRACK, noise_px=NOISE_PX, seed=3)
    base.update(overrides)
    return with_overrides(None, **base)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "scene"
    generate_demo_scene(small_config(), out, progress=False)
    return out


@pytest.fixture(scope="module")
def defect_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("defects") / "scene"
    config = small_config(num_points=6000, defects={"large_scale_region": 2.0, "outlier_points": 5, "missing_images": 3})
    generate_demo_scene(config, out, progress=False)
    return out


def load(folder: Path) -> tuple[pycolmap.Reconstruction, dict]:
    return pycolmap.Reconstruction(str(folder / "sparse" / "0")), json.loads((folder / "manifest.json").read_text())


def projection(reconstruction: pycolmap.Reconstruction, image_id: int, xyz: np.ndarray) -> np.ndarray:
    image = reconstruction.image(image_id)
    return reconstruction.camera(image.camera_id).img_from_cam(image.cam_from_world() * xyz)


def test_model_reads_back_and_matches_manifest(scene):
    reconstruction, manifest = load(scene)
    assert reconstruction.num_images() == manifest["num_images"] == 24
    assert reconstruction.num_points3D() == manifest["num_points"] == 3000
    assert reconstruction.compute_num_observations() == manifest["num_observations"]
    assert reconstruction.compute_mean_track_length() == pytest.approx(manifest["mean_track_length"])
    assert reconstruction.compute_mean_reprojection_error() == pytest.approx(manifest["mean_reprojection_error_px"], rel=1e-9)
    camera = reconstruction.camera(1)
    assert camera.model_name == "PINHOLE"
    assert list(camera.params) == pytest.approx(manifest["camera"]["params"])
    assert (camera.width, camera.height) == tuple(manifest["image_size"]) == (160, 120)
    image_ids = set(reconstruction.images.keys())
    for point_id, point in reconstruction.points3D.items():
        elements = point.track.elements
        assert 2 <= len(elements) <= MAX_TRACK
        assert len({e.image_id for e in elements}) == len(elements)  # one observation per image
        for element in elements:
            assert element.image_id in image_ids
            assert reconstruction.image(element.image_id).points2D[element.point2D_idx].point3D_id == point_id


def test_observations_are_noisy_projections_and_errors_are_honest(scene):
    reconstruction, _ = load(scene)
    worst = 0.0
    for point in reconstruction.points3D.values():
        distances = []
        for element in point.track.elements:
            observed = reconstruction.image(element.image_id).points2D[element.point2D_idx].xy
            distances.append(float(np.linalg.norm(projection(reconstruction, element.image_id, point.xyz) - observed)))
        worst = max(worst, max(distances))
        # The stored error is the actual mean reprojection distance of the stored observations.
        assert point.error == pytest.approx(np.mean(distances), abs=1e-6)
    # 2D noise is N(0, 0.5 px) per axis: nothing should be 6 sigma away.
    assert 0.0 < worst < 6 * NOISE_PX * math.sqrt(2)


def test_images_exist_with_the_right_size_and_texture(scene):
    reconstruction, manifest = load(scene)
    for image in reconstruction.images.values():
        with Image.open(scene / "images" / image.name) as png:
            assert png.size == (160, 120)
            assert png.mode == "RGB"
            pixels = np.asarray(png, dtype=float)
        assert pixels.std() > 10.0, f"{image.name} looks blank"
        # Mostly scene, hardly any sky: many tracked points per image.
        assert image.num_points3D >= 100
    assert manifest["num_images_written"] == 24


def test_point_colours_match_the_image_where_they_project(scene):
    reconstruction, _ = load(scene)
    cache: dict[str, np.ndarray] = {}
    differences = []
    for point in list(reconstruction.points3D.values())[:800]:
        element = point.track.elements[0]
        image = reconstruction.image(element.image_id)
        if image.name not in cache:
            cache[image.name] = np.asarray(Image.open(scene / "images" / image.name), dtype=int)
        u, v = projection(reconstruction, element.image_id, point.xyz)
        pixel = cache[image.name][min(int(v), 119), min(int(u), 159)]
        differences.append(np.abs(pixel - point.color.astype(int)).max())
    assert np.median(differences) <= 6
    assert np.percentile(differences, 90) <= 30


def test_generation_is_deterministic(scene, tmp_path):
    again = tmp_path / "again"
    generate_demo_scene(small_config(), again, progress=False)
    for name in ["sparse/0/points3D.bin", "sparse/0/images.bin", "sparse/0/cameras.bin", "images/00007.png",
                 "manifest.json", "ground_truth_mesh.ply"]:
        assert (scene / name).read_bytes() == (again / name).read_bytes(), name
    manifest = (again / "manifest.json").read_text()
    assert str(tmp_path) not in manifest


def signed_distance_to_objects(points: np.ndarray, objects: list[dict]) -> np.ndarray:
    """Distance from each point to the nearest analytic surface: ground plane, boxes, spheres."""
    best = np.abs(points[:, 2])
    for obj in objects:
        centre = np.array(obj["centre"])
        if obj["type"] == "sphere":
            distance = np.abs(np.linalg.norm(points - centre, axis=1) - obj["radius"])
        else:
            yaw = math.radians(obj["yaw_deg"])
            offset = points - centre
            local = np.stack([math.cos(yaw) * offset[:, 0] + math.sin(yaw) * offset[:, 1],
                              -math.sin(yaw) * offset[:, 0] + math.cos(yaw) * offset[:, 1], offset[:, 2]], axis=1)
            q = np.abs(local) - np.array(obj["size"]) / 2.0
            distance = np.abs(np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0))
        best = np.minimum(best, distance)
    return best


def test_ground_truth_mesh_holds_the_objects_and_the_points(scene):
    reconstruction, manifest = load(scene)
    mesh = trimesh.load(scene / "ground_truth_mesh.ply", force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert len(mesh.faces) == manifest["mesh"]["num_faces"]
    low, high = mesh.bounds
    for obj in manifest["objects"]:
        reach = obj.get("radius", max(obj.get("size", [0.0])) )
        assert np.all(low[:2] <= np.array(obj["centre"][:2]) - reach)
        assert np.all(high[:2] >= np.array(obj["centre"][:2]) + reach)
        assert high[2] >= obj["top"] - 1e-5
    xyz = np.array([p.xyz for p in reconstruction.points3D.values()])
    # Exactly on the analytic surfaces (no point_noise here) ...
    assert signed_distance_to_objects(xyz, manifest["objects"]).max() < 1e-6
    # ... the mesh's vertices lie on those same surfaces (float32 in the PLY) ...
    assert signed_distance_to_objects(np.asarray(mesh.vertices, dtype=float), manifest["objects"]).max() < 1e-4
    # ... and the points lie on the mesh, within the icosphere's chord error.
    triangles = np.asarray(mesh.triangles)
    low, high = triangles.min(axis=1), triangles.max(axis=1)
    largest_radius = max([o["radius"] for o in manifest["objects"] if o["type"] == "sphere"], default=0.0)
    tolerance = manifest["mesh"]["sphere_max_chord_error_relative"] * largest_radius + 1e-4
    for point in xyz[:: max(1, len(xyz) // 200)]:
        near = np.flatnonzero(((low - tolerance) <= point).all(axis=1) & ((high + tolerance) >= point).all(axis=1))
        assert len(near), f"no mesh triangle near {point}"
        closest = trimesh.triangles.closest_point(triangles[near], np.repeat(point[None], len(near), axis=0))
        assert np.linalg.norm(closest - point, axis=1).min() < tolerance


def test_point_noise_moves_points_off_the_surface_by_about_its_std(tmp_path):
    out = tmp_path / "noisy"
    manifest = generate_demo_scene(small_config(num_points=1000, point_noise=0.02, render_images=False), out, progress=False)
    reconstruction, _ = load(out)
    xyz = np.array([p.xyz for p in reconstruction.points3D.values()])
    distance = signed_distance_to_objects(xyz, manifest["objects"])
    assert 0.005 < np.median(distance) < 0.03
    assert distance.max() < 0.02 * 6


def test_every_quadrant_has_objects_and_cameras(scene):
    reconstruction, manifest = load(scene)
    centres = np.array([image.projection_center() for image in reconstruction.images.values()])
    objects = np.array([obj["centre"][:2] for obj in manifest["objects"]])
    for sx in (-1, 1):
        for sy in (-1, 1):
            assert ((np.sign(objects[:, 0]) == sx) & (np.sign(objects[:, 1]) == sy)).any()
            assert ((np.sign(centres[:, 0]) == sx) & (np.sign(centres[:, 1]) == sy)).sum() >= 3
    assert manifest["cameras"]["num_path"] + manifest["cameras"]["num_orbit"] == 24
    assert manifest["up"] == [0.0, 0.0, 1.0]
    assert np.all(centres[:, 2] > 1.0)


def test_outlier_points_are_far_listed_and_badly_reprojected(defect_scene):
    reconstruction, manifest = load(defect_scene)
    ids = manifest["defects"]["outlier_points"]["point_ids"]
    assert len(ids) == 5
    assert reconstruction.num_points3D() == 6000 + 5 == manifest["num_points"]
    extent = manifest["config"]["extent"]
    for point_id in ids:
        point = reconstruction.point3D(point_id)
        assert np.linalg.norm(point.xyz) >= 10 * extent * 0.999
        assert point.track.length() == 2
        assert point.error > 20.0
        for element in point.track.elements:
            x, y = reconstruction.image(element.image_id).points2D[element.point2D_idx].xy
            assert 0 <= x <= 160 and 0 <= y <= 120
    others = [p for pid, p in reconstruction.points3D.items() if pid not in set(ids)]
    assert max(np.abs(p.xyz).max() for p in others) <= extent
    assert reconstruction.compute_mean_reprojection_error() == pytest.approx(manifest["mean_reprojection_error_px"], rel=1e-9)


def test_missing_images_are_registered_but_absent(defect_scene):
    reconstruction, manifest = load(defect_scene)
    missing = manifest["defects"]["missing_images"]["names"]
    assert len(missing) == 3
    names = {image.name for image in reconstruction.images.values()}
    assert set(missing) <= names
    on_disk = {p.name for p in (defect_scene / "images").iterdir()}
    assert on_disk == names - set(missing)
    assert manifest["num_images_written"] == 24 - 3


def test_large_scale_region_spreads_the_plus_x_plus_y_quadrant(defect_scene, scene):
    _, manifest = load(defect_scene)
    spacing = {name: q["mean_nn_spacing"] for name, q in manifest["nn_spacing_by_quadrant"].items()}
    others = [spacing[name] for name in ("-x+y", "-x-y", "+x-y")]
    assert spacing["+x+y"] > 1.5 * max(others)
    scaled = manifest["defects"]["large_scale_region"]["scaled_objects"]
    assert scaled, "some objects must lie in the +x,+y quadrant"
    for obj in manifest["objects"]:
        in_quadrant = obj["centre"][0] > 0 and obj["centre"][1] > 0
        assert obj["scaled"] == in_quadrant == (obj["id"] in scaled)
    # Without the defect the quadrants look alike.
    _, plain = load(scene)
    plain_spacing = [q["mean_nn_spacing"] for q in plain["nn_spacing_by_quadrant"].values()]
    assert max(plain_spacing) < 1.25 * min(plain_spacing)


def test_model_only_mode_writes_no_images(tmp_path):
    out = tmp_path / "model_only"
    manifest = generate_demo_scene(small_config(render_images=False), out, progress=False)
    assert not (out / "images").exists()
    assert manifest["num_images_written"] == 0
    reconstruction, _ = load(out)
    assert reconstruction.num_points3D() == 3000
    assert (out / "ground_truth_mesh.ply").exists()


def test_generating_again_replaces_the_folder(tmp_path):
    out = tmp_path / "scene"
    generate_demo_scene(small_config(num_points=500, render_images=False), out, progress=False)
    manifest = generate_demo_scene(small_config(num_points=700, render_images=False), out, progress=False)
    assert manifest["num_points"] == 700
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]  # no temporary folders left behind
    # A file someone put in it is not the command's to delete: refused, the folder kept as it was.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        generate_demo_scene(small_config(num_points=900, render_images=False), out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["num_points"] == 700


def test_with_overrides_validates_and_names_the_key():
    with pytest.raises(InputError) as caught:
        with_overrides(None, width=4)
    assert caught.value.where == "scene.demo.width"
    assert caught.value.kind == "bad_params"
    assert "got 4" in caught.value.problem
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError) as caught:
        with_overrides(None, defects={"outlier_points": -1})
    assert caught.value.where == "scene.demo.defects.outlier_points"
    with pytest.raises(InputError) as caught:
        with_overrides(None, colour="red")
    assert caught.value.where == "scene.demo.colour"

    base = DemoSceneConfig(seed=5)
    config = with_overrides(base, width=None, num_cameras=8, defects={"missing_images": 2})
    assert (config.seed, config.width, config.num_cameras) == (5, 160, 8)
    assert config.defects.missing_images == 2 and config.defects.outlier_points == 0
    assert with_overrides(None) == DemoSceneConfig()


def test_too_many_missing_images_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as caught:
        generate_demo_scene(small_config(defects={"missing_images": 24}), tmp_path / "x", progress=False)
    assert caught.value.where == "scene.demo.defects.missing_images"
    assert not (tmp_path / "x").exists()
