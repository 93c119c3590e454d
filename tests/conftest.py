"""Shared fixtures: the real scenes (skipped when absent) and small COLMAP scenes built with pycolmap."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Before any test module imports torch: OpenMP threads must sleep, not spin, on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MLflow stays off in tests unless a test turns it on (tests/test_train.py checks the runs).
os.environ.setdefault("PATCHSPLAT_TRACKING", "0")

from project_copy import copy_project as project_copy
from project_copy import edit_params, small_demo  # noqa: F401 - the tests import them from here

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


# The slowest test files, slowest first (minutes on 2 cores, 2026-12-03). `make test` hands whole files to two
# workers in the order they are collected (--no-loadscope-reorder); starting the longest ones first keeps one
# long file from starting last and running alone at the end (longest-first scheduling). A file not listed
# keeps its place after these; the order within a file never changes (its tests may build on each other).
SLOWEST_FILES_FIRST = ("test_flow.py", "test_pipeline_dvc.py", "test_run_report.py", "test_interrupt.py",
                       "test_real_capture.py", "test_train.py", "test_wheel.py", "test_orchestrate.py",
                       "test_partition_check.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: position for position, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def small_workspace(workspace: Path) -> Path:
    """A copy of the project with the small demo and MLflow off (a test that checks runs turns it on)."""

    def settings(params: dict) -> None:
        small_demo(params)
        params["tracking"]["enabled"] = False

    edit_params(project_copy(workspace), settings)
    return workspace


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API for the whole session (starting one costs ~15 s; see the field notes)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# Headless Chromium for the pages patchsplat makes (the viewer, the run report): Debian's, driven by playwright.
CHROMIUM = Path("/usr/bin/chromium")
# Chromium without a GPU: WebGL through SwiftShader, the software renderer Chromium ships.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def playwright_or_skip():
    """playwright's ``sync_playwright``; the test is skipped, saying what to install, without it or Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `make test` installs it (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `make test` installs Debian's chromium with apt-get when run as root or "
                    "with sudo; otherwise `apt-get install chromium`")
    return sync_playwright


def refuse_requests(page, allowed: Callable[[str], bool]) -> list[str]:
    """Route every request of the playwright ``page``: the ``allowed`` URLs go on, every other one is refused
    and recorded in the returned list (a page that must work offline asks for nothing else)."""
    refused: list[str] = []

    def route(request_route) -> None:
        if allowed(request_route.request.url):
            request_route.continue_()
        else:
            refused.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    return refused


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The read-only real scenes (cup77, fern_llff8); the test is skipped when they are absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real test scenes not available: {REAL_DATA} does not exist (they live outside the repository)")
    return REAL_DATA


def _look_at(centre: np.ndarray):
    """cam_from_world pose of a camera at ``centre`` looking at the origin, z up."""
    import pycolmap

    forward = -centre / np.linalg.norm(centre)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre)


DEFAULT_PARAMS = {
    "PINHOLE": [50.0, 50.0, 32.0, 24.0],
    "SIMPLE_PINHOLE": [50.0, 32.0, 24.0],
    "SIMPLE_RADIAL": [50.0, 32.0, 24.0, 0.05],
    "OPENCV_FISHEYE": [50.0, 50.0, 32.0, 24.0, 0.01, 0.0, 0.0, 0.0],
    "EQUIRECTANGULAR": [64.0, 48.0],
}


def build_scene(
    out: Path,
    *,
    num_images: int = 6,
    num_points: int = 150,
    width: int = 64,
    height: int = 48,
    model: str = "PINHOLE",
    params: list[float] | None = None,
    model_format: str = "bin",
    legacy: bool = False,
    names: dict[int, str] | None = None,
    write_images: bool = True,
    seed: int = 0,
) -> Path:
    """Write a small, valid COLMAP scene: ``out/images/*.png`` and ``out/sparse/0``.

    Cameras sit on a circle of radius 4 around a cube of random points, every point is
    seen by every image at its exact projection. ``legacy`` drops rigs/frames (a model
    as COLMAP < 3.12 wrote it, like the cup77 scene); ``names`` overrides image names
    by image id (1-based); ``model``/``params`` set the single shared camera.
    """
    import pycolmap
    from PIL import Image

    rng = np.random.default_rng(seed)
    reconstruction = pycolmap.Reconstruction()
    camera = pycolmap.Camera(
        model=model, width=width, height=height, params=params if params is not None else DEFAULT_PARAMS[model], camera_id=1
    )
    reconstruction.add_camera_with_trivial_rig(camera)
    points = rng.uniform(-0.8, 0.8, size=(num_points, 3))
    names = names or {}
    for image_id in range(1, num_images + 1):
        angle = 2 * np.pi * image_id / num_images
        pose = _look_at(np.array([4 * np.cos(angle), 4 * np.sin(angle), 1.0]))
        cam_points = (pose.rotation.matrix() @ points.T).T + pose.translation
        # Projection with the pinhole part only: good enough, the validator does not reproject.
        projected = cam_points[:, :2] / cam_points[:, 2:3] * 50.0 + np.array([width / 2, height / 2])
        image = pycolmap.Image(
            name=names.get(image_id, f"img{image_id:03d}.png"), keypoints=projected, camera_id=1, image_id=image_id
        )
        reconstruction.add_image_with_trivial_frame(image, pose)
    for index, xyz in enumerate(points):
        track = pycolmap.Track()
        for image_id in range(1, num_images + 1):
            track.add_element(image_id, index)
        reconstruction.add_point3D(xyz, track, rng.integers(0, 255, 3).astype(np.uint8))

    model_dir = out / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (out / "images").mkdir()
    if model_format == "bin":
        reconstruction.write_binary(str(model_dir))
    else:
        reconstruction.write_text(str(model_dir))
    if legacy:
        for stem in ("rigs", "frames"):
            (model_dir / f"{stem}.{model_format}").unlink()
    if write_images:
        for image in reconstruction.images.values():
            target = out / "images" / image.name
            if image.name and target.resolve().is_relative_to((out / "images").resolve()):
                pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(target)
    return out


@pytest.fixture(scope="session")
def _scene_cache(tmp_path_factory) -> dict:
    return {"root": tmp_path_factory.mktemp("scene-cache"), "built": {}}


@pytest.fixture
def make_scene(_scene_cache, tmp_path) -> Callable[..., Path]:
    """Factory: ``make_scene(**build_scene options)`` -> a fresh copy of that scene in this test's tmp_path.

    Each distinct set of options is built once per session and copied (fast).
    """
    counter = {"n": 0}

    def make(**options) -> Path:
        key = repr(sorted(options.items()))
        built = _scene_cache["built"]
        if key not in built:
            built[key] = build_scene(_scene_cache["root"] / f"scene{len(built)}", **options)
        counter["n"] += 1
        copy = tmp_path / f"scene{counter['n']}"
        shutil.copytree(built[key], copy, symlinks=True)
        return copy

    return make


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> content hash (files), 'dir', or 'link:<target>' for everything under ``folder``."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = path.relative_to(folder).as_posix()
            if path.is_symlink():
                state[key] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                state[key] = "dir"
            else:
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture
def scene_snapshot() -> Callable[[Path], dict[str, str]]:
    """The :func:`snapshot` function, to assert that a folder was left exactly as it was."""
    return snapshot


def trained_metrics(**changes):
    """A training's metrics.json content as training writes it (every key), with ``changes``."""
    from patchsplat.train.records import TrainedMetrics

    example = {
        "train_loss": 0.05, "heldout_psnr": 20.0, "heldout_ssim": 0.7, "heldout_views": 3, "steps": 60,
        "steps_per_second": 10.0, "gaussians": 1000, "gaussians_dropped_non_finite": 0, "peak_memory_mb": 100.0,
        "memory_estimate_mb": 120.0, "memory_plan": "fits", "resolution_factor": 1, "backend": "torch",
        "device": "cpu", "attempts": 1, "recovered": False, "resumed": False,
    }
    return TrainedMetrics(**{**example, **changes})
