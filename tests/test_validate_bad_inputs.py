"""A corpus of broken scenes: each must fail validation with one line naming the culprit, and write nothing.

Every case starts from a small valid scene (built with pycolmap, see conftest.build_scene)
and damages one thing. For each case:

(a) the CLI (``patchsplat validate``, in-process through typer's CliRunner: the same code
    path as the console script) exits non-zero with exactly one stderr line starting with
    ``error:`` that names the offending file or image, and no traceback;
(b) the error kind is the expected one (InputError raised by run_validation);
(c) nothing is written: a fresh ``--out`` path does not exist afterwards, an earlier report
    at ``--out`` is byte-identical afterwards, no temporary file is left beside it, and the
    scene folder is unchanged.

A representative subset also runs the CLI in a real subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from damage import (CAM, IMAGE, POINT, assert_one_line, drop_first_point, edit_text_line, garbage, model_file, patch_bytes,
                    truncate, write_png)
from patchsplat.config import ValidateConfig
from patchsplat.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
# An earlier run's report (the keys validate writes: it may replace the file, and must not on a failure).
EARLIER_REPORT = b'{"report_version": 1, "scene_dir": "scene", "num_images": 6, "an": "earlier report"}\n'


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    names: str                       # what the error line must mention
    mutate: Callable[[Path], None] = lambda scene: None
    build: dict = field(default_factory=dict)
    cli_args: tuple[str, ...] = ()


CASES = [
    # --- binary model files
    Case("truncated_cameras_bin", "corrupt_file", "cameras.bin", truncate("cameras.bin", drop=5)),
    Case("truncated_images_bin", "corrupt_file", "images.bin", truncate("images.bin", keep_fraction=0.5)),
    Case("truncated_points_bin", "corrupt_file", "points3D.bin", truncate("points3D.bin", keep_fraction=0.5)),
    # pycolmap alone accepts this one silently.
    Case("points_bin_short_by_one_byte", "corrupt_file", "points3D.bin", truncate("points3D.bin", drop=1)),
    # pycolmap alone would allocate until std::bad_alloc on this one.
    Case("garbage_track_length", "corrupt_file", "points3D.bin",
         lambda s: patch_bytes(s, "points3D.bin", POINT + 43, "<Q", 2**40)),
    Case("garbage_cameras_bin", "corrupt_file", "cameras.bin", garbage("cameras.bin")),
    Case("empty_images_bin", "corrupt_file", "images.bin", truncate("images.bin", keep_fraction=0.0)),
    Case("bytes_appended_to_images_bin", "corrupt_file", "images.bin",
         lambda s: model_file(s, "images.bin").write_bytes(model_file(s, "images.bin").read_bytes() + b"\0" * 100)),
    # pycolmap alone loops forever on this one.
    Case("garbage_frames_bin", "corrupt_file", "frames.bin", garbage("frames.bin")),
    Case("missing_points_bin", "missing_file", "points3D.bin", lambda s: model_file(s, "points3D.bin").unlink()),
    Case("folder_instead_of_points_bin", "corrupt_file", "points3D.bin",
         lambda s: (model_file(s, "points3D.bin").unlink(), model_file(s, "points3D.bin").mkdir())),
    Case("frames_bin_missing_beside_rigs_bin", "missing_file", "frames.bin", lambda s: model_file(s, "frames.bin").unlink()),
    Case("track_refers_to_missing_image", "corrupt_file", "points3D.bin",
         lambda s: patch_bytes(s, "points3D.bin", POINT + 51, "<I", 99)),
    Case("image_uses_undefined_camera", "inconsistent_model", "images.bin",
         lambda s: patch_bytes(s, "images.bin", IMAGE + 60, "<I", 7)),
    Case("point_missing_but_referenced", "inconsistent_model", "points3D.bin", drop_first_point),
    Case("model_without_points", "no_points", "points3D.bin", build={"num_points": 0}),
    Case("nan_point", "nonfinite_points", "points3D.bin",
         lambda s: patch_bytes(s, "points3D.bin", POINT + 8, "<d", float("nan"))),
    Case("zero_quaternion_pose", "bogus_pose", "images.bin",
         lambda s: patch_bytes(s, "images.bin", IMAGE + 4, "<4d", 0.0, 0.0, 0.0, 0.0), build={"legacy": True}),
    # --- cameras
    Case("zero_width_camera", "bogus_intrinsics", "cameras.bin", lambda s: patch_bytes(s, "cameras.bin", CAM + 8, "<Q", 0)),
    Case("bogus_focal_length", "bogus_intrinsics", "cameras.bin", build={"params": [5000.0, 5000.0, 32.0, 24.0]}),
    Case("principal_point_outside_image", "bogus_intrinsics", "cameras.bin", build={"params": [50.0, 50.0, 200.0, 24.0]}),
    Case("spherical_camera_model", "unsupported_camera_model", "cameras.bin", build={"model": "EQUIRECTANGULAR"}),
    Case("fisheye_without_undistort", "unsupported_camera_model", "cameras.bin", build={"model": "OPENCV_FISHEYE"}),
    # --- text model files
    Case("corrupt_txt_line", "corrupt_file", "images.txt",
         edit_text_line("images.txt", 2, lambda line: line.replace(" ", " oops ", 1)), build={"model_format": "txt"}),
    # pycolmap alone reads half of the points and says nothing.
    Case("truncated_points_txt", "corrupt_file", "points3D.txt", truncate("points3D.txt", keep_fraction=0.5),
         build={"model_format": "txt"}),
    Case("empty_cameras_txt", "corrupt_file", "cameras.txt", truncate("cameras.txt", keep_fraction=0.0),
         build={"model_format": "txt"}),
    # --- scene layout
    Case("missing_sparse_folder", "missing_model", "sparse", lambda s: shutil.rmtree(s / "sparse")),
    Case("missing_images_folder", "missing_images_folder", "images", lambda s: shutil.rmtree(s / "images")),
    Case("only_sparse_1", "missing_model", "sparse/0", lambda s: (s / "sparse" / "0").rename(s / "sparse" / "1")),
    # --- image files
    Case("missing_image", "missing_image", "img002.png", lambda s: (s / "images" / "img002.png").unlink()),
    Case("truncated_image", "undecodable_image", "img003.png",
         lambda s: os.truncate(s / "images" / "img003.png", (s / "images" / "img003.png").stat().st_size // 2)),
    Case("image_of_wrong_size", "image_size_mismatch", "img004.png", lambda s: write_png(s / "images" / "img004.png", 32, 48)),
    Case("image_is_a_folder", "missing_image", "img005.png",
         lambda s: ((s / "images" / "img005.png").unlink(), (s / "images" / "img005.png").mkdir())),
    Case("name_escapes_with_dotdot", "path_escape", "../outside.png", lambda s: write_png(s / "outside.png", 64, 48),
         build={"names": {2: "../outside.png"}}),
    Case("absolute_image_name", "path_escape", "/etc/hostname", build={"names": {2: "/etc/hostname"}}),
    Case("symlink_out_of_images", "path_escape", "img002.png",
         lambda s: (write_png(s.parent / f"{s.name}-elsewhere.png", 64, 48), (s / "images" / "img002.png").unlink(),
                    (s / "images" / "img002.png").symlink_to(s.parent / f"{s.name}-elsewhere.png"))),
    Case("empty_image_name", "bad_image_name", "images.bin", build={"names": {3: ""}}),
]

SUBPROCESS_CASES = {"truncated_points_bin", "missing_image", "name_escapes_with_dotdot", "corrupt_txt_line"}


def _prepare(case: Case, make_scene, tmp_path: Path) -> tuple[Path, Path]:
    scene = make_scene(**case.build)
    case.mutate(scene)
    reports = tmp_path / "reports"
    reports.mkdir()
    return scene, reports


def test_corpus_is_large_and_distinct():
    assert len(CASES) >= 15
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({(case.kind, case.names) for case in CASES}) >= 15


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_cleanly(case: Case, make_scene, scene_snapshot, tmp_path):
    from typer.testing import CliRunner

    from patchsplat.cli import app
    from patchsplat.validate import run_validation

    scene, reports = _prepare(case, make_scene, tmp_path)
    before = scene_snapshot(scene)
    fresh_out = reports / "fresh.json"
    earlier_out = reports / "earlier.json"
    earlier_out.write_bytes(EARLIER_REPORT)

    # (a) the command line, in-process.
    result = CliRunner().invoke(
        app, ["validate", str(scene), "--out", str(fresh_out), "--params", str(tmp_path / "no-params.yaml"), *case.cli_args]
    )
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_one_line(result, case.names)

    # (b) the kind, through the library call the command uses.
    with pytest.raises(InputError) as raised:
        run_validation(scene, earlier_out, ValidateConfig())
    assert raised.value.kind == case.kind, raised.value.one_line()
    assert case.names in raised.value.one_line()

    # (c) nothing written anywhere.
    assert not fresh_out.exists()
    assert earlier_out.read_bytes() == EARLIER_REPORT
    assert sorted(p.name for p in reports.iterdir()) == ["earlier.json"], "temporary files left behind"
    assert scene_snapshot(scene) == before


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=sorted(SUBPROCESS_CASES))
def test_bad_input_fails_cleanly_in_a_subprocess(case: Case, make_scene, scene_snapshot, tmp_path):
    scene, reports = _prepare(case, make_scene, tmp_path)
    before = scene_snapshot(scene)
    out = reports / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        [sys.executable, "-m", "patchsplat.cli", "validate", str(scene), "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert_one_line(completed, case.names)
    assert not out.exists()
    assert scene_snapshot(scene) == before


def test_fisheye_is_accepted_when_undistorting(make_scene, tmp_path):
    """The one camera error --undistort resolves: a fisheye model becomes a warning and a PINHOLE copy is written."""
    import pycolmap

    from patchsplat.validate import run_validation

    scene = make_scene(model="OPENCV_FISHEYE")
    out_dir = tmp_path / "undistorted"
    report = run_validation(scene, tmp_path / "report.json", ValidateConfig(), undistort_dir=out_dir)
    assert [f.kind for f in report.findings] == ["distorted_camera"]
    cameras = pycolmap.Reconstruction(str(out_dir / "sparse" / "0")).cameras
    assert {camera.model.name for camera in cameras.values()} == {"PINHOLE"}


@pytest.mark.parametrize(
    "where", ["report_in_scene", "report_is_scene", "undistort_in_scene", "report_in_undistort_dir", "foreign_undistort_dir"]
)
def test_refuses_to_write_into_the_scene_or_foreign_folders(where, make_scene, scene_snapshot, tmp_path):
    from patchsplat.validate import run_validation

    scene = make_scene()
    foreign = tmp_path / "my-documents"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    out, undistort = {
        "report_in_scene": (scene / "validation.json", None),
        "report_is_scene": (scene, None),
        "undistort_in_scene": (tmp_path / "report.json", scene / "undistorted"),
        "report_in_undistort_dir": (tmp_path / "und" / "report.json", tmp_path / "und"),
        "foreign_undistort_dir": (tmp_path / "report.json", foreign),
    }[where]
    before = scene_snapshot(scene)
    with pytest.raises(InputError) as raised:
        run_validation(scene, out, ValidateConfig(), undistort_dir=undistort)
    assert raised.value.kind == "bad_output"
    assert scene_snapshot(scene) == before
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / "report.json").exists()
