"""Every stage that reads a COLMAP model is guarded like the validator; the undistortion checks images first.

Each case damages one thing in a small valid scene (conftest.build_scene) and runs the command a
user runs, in a real subprocess:

- ``patchsplat split SCENE OUT`` and ``patchsplat init WS --colmap SCENE`` (both read the model
  through :func:`patchsplat.colmap_io.arrays.read_model_arrays`);
- the ``scene`` stage (``python stages/scene.py`` in a workspace) for a SIMPLE_RADIAL capture,
  which undistorts it (``scene.undistort: auto``).

Each must exit non-zero with exactly one ``error:`` line on stderr naming the file at fault and no
traceback, create nothing where its output would go (no temporary folder left either), and leave
the scene exactly as it was.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from damage import (CAM, IMAGE, POINT, assert_one_line, drop_first_point, edit_text_line, garbage, model_file, patched,
                    replace_token, truncate, write_png)

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES = 6
POINT_RECORD = 51 + 8 * NUM_IMAGES  # every point of the base scene is seen by every image


def all_points_nan(scene: Path) -> None:
    path = model_file(scene, "points3D.bin")
    data = bytearray(path.read_bytes())
    (count,) = struct.unpack_from("<Q", data, 0)
    for index in range(count):
        struct.pack_into("<3d", data, 8 + POINT_RECORD * index + 8, *[float("nan")] * 3)
    path.write_bytes(bytes(data))


@dataclass(frozen=True)
class Case:
    id: str
    names: str                                  # what the error line must mention
    mutate: Callable[[Path], None] = lambda scene: None
    build: dict = field(default_factory=dict)


MODEL_CASES = [
    Case("truncated_points_bin", "points3D.bin", truncate("points3D.bin", 0.5)),
    Case("zero_byte_points_bin", "points3D.bin", truncate("points3D.bin", 0.0)),
    Case("garbage_track_length", "points3D.bin", patched("points3D.bin", POINT + 43, "<Q", 2**40)),
    Case("random_cameras_bin", "cameras.bin", garbage("cameras.bin")),
    Case("truncated_images_bin", "images.bin", truncate("images.bin", 0.5)),
    Case("missing_points_bin", "points3D.bin", lambda s: model_file(s, "points3D.bin").unlink()),
    Case("image_uses_missing_camera", "images.bin", patched("images.bin", IMAGE + 60, "<I", 7)),
    Case("track_refers_to_missing_image", "points3D.bin", patched("points3D.bin", POINT + 51, "<I", 99)),
    Case("point_missing_but_referenced", "points3D.bin", drop_first_point),
    Case("camera_of_width_0", "cameras.bin", patched("cameras.bin", CAM + 8, "<Q", 0)),
    Case("image_named_etc_passwd", "images.bin", build={"names": {2: "../../etc/passwd"}}),
    Case("absolute_image_name", "images.bin", build={"names": {2: "/etc/hostname"}}),
    Case("nan_pose", "images.bin", patched("images.bin", IMAGE + 36, "<d", float("nan"))),
    Case("no_points", "points3D.bin", build={"num_points": 0}),
    Case("all_points_nan", "points3D.bin", all_points_nan),
    Case("one_point_nan", "points3D.bin", patched("points3D.bin", POINT + 8, "<d", float("nan"))),
    Case("malformed_images_txt_line", "images.txt",
         edit_text_line("images.txt", 2, lambda line: line.replace(" ", " oops ", 1)), build={"model_format": "txt"}),
    Case("txt_track_refers_to_missing_image", "points3D.txt",
         edit_text_line("points3D.txt", 0, replace_token(8, "99")), build={"model_format": "txt"}),
    Case("txt_camera_of_width_0", "cameras.txt",
         edit_text_line("cameras.txt", 0, replace_token(2, "0")), build={"model_format": "txt"}),
]

INIT_CASES = {"truncated_points_bin", "image_named_etc_passwd", "all_points_nan", "malformed_images_txt_line"}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "200"}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False)


def _damaged_scene(case: Case, make_scene) -> Path:
    scene = make_scene(**case.build)
    case.mutate(scene)
    return scene


@pytest.mark.parametrize("case", MODEL_CASES, ids=[case.id for case in MODEL_CASES])
def test_split_refuses_a_bad_model_in_one_line(case: Case, make_scene, scene_snapshot, tmp_path):
    scene = _damaged_scene(case, make_scene)
    before = scene_snapshot(scene)
    work = tmp_path / "work"
    work.mkdir()
    completed = _run([sys.executable, "-m", "patchsplat.cli", "split", str(scene), "out/patches"], cwd=work)
    assert_one_line(completed, case.names)
    assert list(work.iterdir()) == []  # no output folder, no temporary one
    assert scene_snapshot(scene) == before


@pytest.mark.parametrize("case", [c for c in MODEL_CASES if c.id in INIT_CASES], ids=sorted(INIT_CASES, key=[c.id for c in MODEL_CASES].index))
def test_init_refuses_a_bad_model_in_one_line(case: Case, make_scene, scene_snapshot, tmp_path):
    scene = _damaged_scene(case, make_scene)
    before = scene_snapshot(scene)
    work = tmp_path / "work"
    work.mkdir()
    completed = _run([sys.executable, "-m", "patchsplat.cli", "init", "ws", "--colmap", str(scene)], cwd=work)
    assert_one_line(completed, case.names)
    assert list(work.iterdir()) == []
    assert scene_snapshot(scene) == before


def test_corpus_is_large_and_distinct():
    assert len(MODEL_CASES) + len(IMAGE_CASES) >= 15
    assert len({case.id for case in MODEL_CASES + IMAGE_CASES}) == len(MODEL_CASES) + len(IMAGE_CASES)


# ------------------------------------------------------------------ undistortion (scene stage)

def _truncated_jpeg(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 120, 150)).save(path, format="JPEG", quality=95)
    os.truncate(path, path.stat().st_size // 2)


IMAGE_CASES = [
    Case("truncated_jpeg", "img003.png", lambda s: _truncated_jpeg(s / "images" / "img003.png")),
    Case("zero_byte_image", "img002.png", lambda s: os.truncate(s / "images" / "img002.png", 0)),
    Case("image_of_wrong_size", "img004.png", lambda s: write_png(s / "images" / "img004.png", 32, 48)),
    Case("missing_image", "img001.png", lambda s: (s / "images" / "img001.png").unlink()),
]


def _scene_workspace(tmp_path: Path, scene: Path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "params.yaml").write_text(
        f"scene:\n  source: colmap\n  colmap_path: {scene}\n  undistort: auto\ntracking:\n  enabled: false\n", encoding="utf-8"
    )
    return workspace


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.id for case in IMAGE_CASES])
def test_undistortion_checks_every_image_first(case: Case, make_scene, scene_snapshot, tmp_path):
    scene = make_scene(model="SIMPLE_RADIAL")
    case.mutate(scene)
    before = scene_snapshot(scene)
    workspace = _scene_workspace(tmp_path, scene)
    completed = _run([sys.executable, str(REPO_ROOT / "stages" / "scene.py")], cwd=workspace)
    assert_one_line(completed, case.names)
    assert sorted(path.name for path in workspace.iterdir()) == ["params.yaml"]  # no data/, no .scene.*.tmp
    assert scene_snapshot(scene) == before


def test_undistortion_refuses_a_bad_model_before_pycolmap(make_scene, scene_snapshot, tmp_path):
    scene = make_scene(model="SIMPLE_RADIAL", names={2: "../../etc/passwd"})
    before = scene_snapshot(scene)
    workspace = _scene_workspace(tmp_path, scene)
    completed = _run([sys.executable, str(REPO_ROOT / "stages" / "scene.py")], cwd=workspace)
    assert_one_line(completed, "../../etc/passwd")
    assert sorted(path.name for path in workspace.iterdir()) == ["params.yaml"]
    assert scene_snapshot(scene) == before


def test_a_good_scene_still_splits_and_undistorts(make_scene, tmp_path):
    """The guards refuse nothing the pipeline used to read."""
    from patchsplat.colmap_io.arrays import read_model_arrays

    for options in ({}, {"model_format": "txt"}):
        arrays = read_model_arrays(make_scene(**options) / "sparse" / "0")
        assert len(arrays.image_ids) == NUM_IMAGES and len(arrays.point_ids) == 150
    scene = make_scene(model="SIMPLE_RADIAL")
    workspace = _scene_workspace(tmp_path, scene)
    completed = _run([sys.executable, str(REPO_ROOT / "stages" / "scene.py")], cwd=workspace)
    assert completed.returncode == 0, completed.stderr
    assert (workspace / "data" / "scene" / "undistorted" / "sparse" / "0" / "cameras.bin").is_file()


def test_points_out_of_id_order_are_read_by_the_bounded_walk(make_scene):
    """A hand-edited points3D.bin (records not sorted by id) is valid: it takes the walked path, same arrays."""
    import numpy as np

    from patchsplat.colmap_io.arrays import read_model_arrays

    scene = make_scene()
    expected = read_model_arrays(scene / "sparse" / "0")
    path = model_file(scene, "points3D.bin")
    data = path.read_bytes()
    records = [data[8 + POINT_RECORD * i : 8 + POINT_RECORD * (i + 1)] for i in range((len(data) - 8) // POINT_RECORD)]
    path.write_bytes(data[:8] + b"".join(reversed(records)))
    arrays = read_model_arrays(scene / "sparse" / "0")
    for name in ("point_ids", "xyz", "rgb", "error", "obs_point"):
        assert np.array_equal(getattr(arrays, name), getattr(expected, name)), name
