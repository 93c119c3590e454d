"""patchsplat.colmap_io: one layout table for the record walk, the vectorised reader/writer and the text reader."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from patchsplat.colmap_io import layout
from patchsplat.colmap_io.arrays import parse_cameras, read_model_arrays, write_model_subset
from patchsplat.colmap_io.binary import CorruptFile, read_points, walk_cameras, walk_images
from patchsplat.colmap_io.layout import COUNT, CameraRecord, camera_models
from patchsplat.colmap_io.text import read_cameras


def test_layout_tables_describe_colmaps_records():
    """The numpy record types and the struct formats are the packed little-endian layouts of COLMAP."""
    assert layout.POINT_HEAD_BYTES == struct.calcsize("<Q3d3BdQ") == 51
    assert (layout.POINT_ID_AT, layout.POINT_XYZ_AT, layout.POINT_RGB_AT, layout.POINT_ERROR_AT,
            layout.POINT_TRACK_LENGTH_AT) == (0, 8, 32, 35, 43)
    assert layout.POINT2D_BYTES == 24 and layout.TRACK_ELEMENT_BYTES == 8
    assert (layout.CAMERA_HEAD.size, layout.IMAGE_HEAD.size, layout.FRAME_HEAD.size, layout.DATA_ID.size) == (24, 64, 68, 16)
    models = camera_models()
    assert models.by_name["PINHOLE"].num_params == 4 and models.by_name["SIMPLE_PINHOLE"].num_params == 3
    assert all(models.by_id[model.model_id] is model for model in models.by_name.values())


def _one_camera_per_model(tmp_path):
    """A model (written by pycolmap, binary and text) holding one camera of every model COLMAP knows."""
    import pycolmap

    reconstruction = pycolmap.Reconstruction()
    expected = {}
    for camera_id, model in enumerate(camera_models().by_id.values(), start=1):
        params = [100.0 + camera_id + 0.125 * index for index in range(model.num_params)]
        camera = pycolmap.Camera(model=model.name, width=640 + camera_id, height=480, params=params, camera_id=camera_id)
        reconstruction.add_camera_with_trivial_rig(camera)
        expected[camera_id] = CameraRecord(camera_id, model.name, 640 + camera_id, 480, tuple(params))
    for folder, write in (("bin", reconstruction.write_binary), ("txt", reconstruction.write_text)):
        (tmp_path / folder).mkdir()
        write(str(tmp_path / folder))
    return expected


def test_every_camera_model_reads_the_same_from_binary_and_text_and_writes_back_byte_for_byte(tmp_path):
    expected = _one_camera_per_model(tmp_path)
    cameras_bin = (tmp_path / "bin" / "cameras.bin").read_bytes()
    from_binary = walk_cameras(tmp_path / "bin" / "cameras.bin")
    assert from_binary == expected
    assert parse_cameras(cameras_bin) == expected
    assert read_cameras(tmp_path / "txt" / "cameras.txt") == expected
    # The one record type writes the record it was read from.
    assert COUNT.pack(len(from_binary)) + b"".join(camera.to_bytes() for camera in from_binary.values()) == cameras_bin


def test_text_cameras_name_the_bad_line(tmp_path):
    cameras_txt = tmp_path / "cameras.txt"
    cameras_txt.write_text("# Camera list\n1 PINHOLE 64 48 50 50 32 24\n2 PINHOLE 64 48 50 50 32\n")
    with pytest.raises(CorruptFile, match="line 3: PINHOLE takes 4 parameters, found 3"):
        read_cameras(cameras_txt)
    cameras_txt.write_text("1 NOT_A_MODEL 64 48 50\n")
    with pytest.raises(CorruptFile, match="line 1: unknown camera model 'NOT_A_MODEL'"):
        read_cameras(cameras_txt)


def test_the_walk_and_the_vectorised_reader_agree(make_scene):
    model_dir = make_scene(num_images=5, num_points=80) / "sparse" / "0"
    arrays = read_model_arrays(model_dir)
    walked_points = read_points(model_dir / "points3D.bin")
    walked_images = walk_images(model_dir / "images.bin")
    order = np.argsort(walked_points.point_ids)
    assert np.array_equal(walked_points.point_ids[order], arrays.point_ids)
    assert np.array_equal(walked_points.xyz[order], arrays.xyz)
    assert walked_points.total_track_length == len(arrays.obs_point)
    assert tuple(arrays.image_ids) == walked_images.image_ids and arrays.image_names == walked_images.names


def test_a_whole_model_written_back_is_pycolmaps_files_byte_for_byte(make_scene, tmp_path):
    """write_model_subset of every image and point writes the cameras, images and points3D files pycolmap wrote."""
    model_dir = make_scene(num_images=5, num_points=80) / "sparse" / "0"
    arrays = read_model_arrays(model_dir)
    written = write_model_subset(arrays, np.arange(len(arrays.image_ids)), np.arange(len(arrays.point_ids)), tmp_path / "out")
    assert written == (5, 80)
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "out" / name).read_bytes() == (model_dir / name).read_bytes(), name
