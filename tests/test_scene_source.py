"""The ``scene`` stage for a user's COLMAP folder: read in place, or undistorted into the workspace.

What a user relies on: a capture with pinhole cameras is never copied; one with lens distortion
(COLMAP's default SIMPLE_RADIAL, fisheye models) becomes an undistorted copy the rest of the
pipeline reads, without the user having to know that training renders pinhole cameras; the
capture itself is never written to; a model the validator would refuse is refused before pycolmap
touches it (one line, nothing written, an earlier data/scene kept).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pycolmap
import pytest

from patchsplat.config import SceneConfig
from patchsplat.errors import InputError
from patchsplat.output_folder import MARKER
from patchsplat.scene_source import distorted_camera_models, prepare_scene, resolve_scene_dir


def _config(scene: Path, undistort: str = "auto") -> SceneConfig:
    return SceneConfig(source="colmap", colmap_path=scene, undistort=undistort)


def _camera_models(scene_dir: Path) -> set[str]:
    reconstruction = pycolmap.Reconstruction(str(scene_dir / "sparse" / "0"))
    return {camera.model.name for camera in reconstruction.cameras.values()}


def test_pinhole_capture_is_read_in_place(make_scene, tmp_path, scene_snapshot):
    scene = make_scene()
    before = scene_snapshot(scene)
    out = prepare_scene(_config(scene), tmp_path / "data" / "scene")
    assert sorted(path.name for path in out.iterdir()) == [MARKER, "scene.json"]  # nothing copied
    assert resolve_scene_dir(out) == scene.resolve()
    assert scene_snapshot(scene) == before


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "OPENCV_FISHEYE"])
def test_distorted_capture_is_undistorted_into_the_workspace(make_scene, tmp_path, scene_snapshot, model):
    scene = make_scene(model=model, num_images=4)
    before = scene_snapshot(scene)
    out = prepare_scene(_config(scene), tmp_path / "data" / "scene")

    pipeline_scene = resolve_scene_dir(out)
    assert pipeline_scene == out / "undistorted"
    assert _camera_models(pipeline_scene) == {"PINHOLE"}
    names = sorted(image.name for image in pycolmap.Reconstruction(str(pipeline_scene / "sparse" / "0")).images.values())
    assert names == sorted(path.name for path in (pipeline_scene / "images").iterdir()) and len(names) == 4
    pointer = json.loads((out / "scene.json").read_text())
    assert pointer["path"] == str(scene.resolve()) and pointer["undistorted"]["camera_models"] == {model: 1}
    assert scene_snapshot(scene) == before  # the capture is never written to


def test_undistort_never_reads_the_distorted_capture_in_place(make_scene, tmp_path):
    scene = make_scene(model="SIMPLE_RADIAL", num_images=4)
    out = prepare_scene(_config(scene, "never"), tmp_path / "data" / "scene")
    assert resolve_scene_dir(out) == scene.resolve()


def test_spherical_cameras_are_left_for_the_validator(make_scene):
    assert distorted_camera_models(make_scene(model="EQUIRECTANGULAR", num_images=4)) == {}
    assert distorted_camera_models(make_scene(model="SIMPLE_RADIAL", num_images=4)) == {"SIMPLE_RADIAL": 1}
    assert distorted_camera_models(make_scene(model="SIMPLE_RADIAL", num_images=4, model_format="txt")) == {"SIMPLE_RADIAL": 1}


def test_an_image_link_out_of_the_folder_is_refused_and_the_earlier_scene_kept(make_scene, tmp_path):
    out = tmp_path / "data" / "scene"
    prepare_scene(_config(make_scene()), out)
    earlier = (out / "scene.json").read_bytes()

    scene = make_scene(model="SIMPLE_RADIAL", num_images=4)
    secret = tmp_path / "secret.png"
    (scene / "images" / "img001.png").rename(secret)
    os.symlink(secret, scene / "images" / "img001.png")
    with pytest.raises(InputError) as error:
        prepare_scene(_config(scene), out)
    assert error.value.kind == "path_escape" and "img001.png" in error.value.one_line()
    assert (out / "scene.json").read_bytes() == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "scene1", "scene2", "secret.png"]


def test_a_corrupt_model_is_one_line_before_pycolmap_reads_it(make_scene, tmp_path):
    scene = make_scene(model="SIMPLE_RADIAL", num_images=4)
    points = scene / "sparse" / "0" / "points3D.bin"
    points.write_bytes(points.read_bytes()[:100])
    with pytest.raises(InputError) as error:
        prepare_scene(_config(scene), tmp_path / "data" / "scene")
    assert "points3D.bin" in error.value.one_line()
    assert not (tmp_path / "data" / "scene").exists()


def test_fern_is_undistorted_to_pinhole(real_data_dir, tmp_path):
    """The real forward-facing capture has a SIMPLE_RADIAL camera, as COLMAP writes by default."""
    out = prepare_scene(_config(real_data_dir / "fern_llff8"), tmp_path / "scene")
    pipeline_scene = resolve_scene_dir(out)
    assert _camera_models(pipeline_scene) == {"PINHOLE"}
    assert len(list((pipeline_scene / "images").iterdir())) == 20
