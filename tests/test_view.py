"""``patchsplat view``: what it shows of a workspace, its one-line errors, and the page in a real headless browser.

The browser test drives Debian's Chromium (``/usr/bin/chromium``) with playwright; ``make test`` installs both
(playwright from the ``test`` extra, chromium with apt-get when it can). Without them it skips, saying which is
missing. Its screenshots are saved as ``viewer.png`` (then ``viewer-camera.png``, ``viewer-mesh.png``) in the
test's tmp folder, whose path the test prints (``pytest -s`` or ``-rA`` shows it).
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from conftest import CHROMIUM, CHROMIUM_ARGS, build_scene, playwright_or_skip, refuse_requests
from patchsplat.config import SplitConfig, ValidateConfig
from patchsplat.errors import InputError
from patchsplat.gaussians import SH_C0
from patchsplat.split import heldout_names, split_scene
from patchsplat.splat_io import write_splats_ply
from patchsplat.view import load_view_scene
from patchsplat.view.scene import CameraPoses, first_view
from patchsplat.workspace import Workspace

# The test splats' colour: no other layer of the viewer (cameras, cells, GUI) is magenta.
MAGENTA = (0.85, 0.15, 0.85)
NUM_IMAGES = 16
NUM_SPLATS = 4000


def _magenta_splats(count: int, seed: int = 0) -> dict:
    """Opaque magenta Gaussians filling the test scene's cube of points."""
    rng = np.random.default_rng(seed)
    sh0 = (np.asarray(MAGENTA) - 0.5) / SH_C0
    return {"means": torch.tensor(rng.uniform(-0.8, 0.8, (count, 3)), dtype=torch.float32),
            "scales": torch.full((count, 3), float(np.log(0.04))), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(count, 1),
            "opacities": torch.full((count,), 3.0), "sh0": torch.tensor(sh0, dtype=torch.float32).reshape(1, 1, 3).repeat(count, 1, 1),
            "shN": torch.zeros((count, 0, 3))}


def _magenta_fraction(png: bytes) -> float:
    """The fraction of the PNG's pixels that are the test splats' magenta."""
    from PIL import Image

    return _magenta_fraction_of(np.asarray(Image.open(BytesIO(png)).convert("RGB")))


def _magenta_fraction_of(pixels: np.ndarray) -> float:
    pixels = pixels.astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return float(np.mean((red > 120) & (blue > 120) & (green < 0.6 * np.minimum(red, blue)) & (abs(red - blue) < 60)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace as the pipeline leaves it, written directly: scene, a 1 x 2 split, merged splats, p0's, a mesh."""
    import trimesh

    root = tmp_path_factory.mktemp("view-workspace")
    ws = Workspace(root)
    build_scene(ws.scene_dir, num_images=NUM_IMAGES, num_points=300)
    split_scene(ws.scene_dir, ws.patches_dir, SplitConfig(mode="grid", rows=1, cols=2, min_cameras=1), ValidateConfig(), progress=False)
    write_splats_ply(ws.merged_splats, **_magenta_splats(NUM_SPLATS))
    write_splats_ply(ws.patch("p0").trained_dir / "splats.ply", **_magenta_splats(NUM_SPLATS // 2, seed=1))
    ws.mesh_dir.mkdir(parents=True)
    trimesh.creation.box(extents=(1.6, 1.6, 1.6)).export(ws.mesh_ply)
    return root


def test_the_merged_view_shows_the_splats_every_camera_and_every_patch_cell(workspace):
    scene = load_view_scene(Workspace(workspace))

    assert scene.title == "merged splats" and len(scene.splats) == NUM_SPLATS
    assert np.allclose(scene.splats.rgbs, MAGENTA, atol=1e-5)
    # Isotropic Gaussians of standard deviation 0.04: covariance 0.04^2 I.
    assert np.allclose(scene.splats.covariances, np.eye(3) * 0.04**2, atol=1e-7)
    assert len(scene.cameras.names) == NUM_IMAGES
    heldout = {name for name, held in zip(scene.cameras.names, scene.cameras.heldout) if held}
    assert heldout == set(heldout_names(scene.cameras.names)) and 0 < len(heldout) < NUM_IMAGES
    # The cameras sit on a circle of radius 4 at height 1, looking at the origin (OpenCV: +z forward).
    assert np.allclose(np.linalg.norm(scene.cameras.positions[:, :2], axis=1), 4.0)
    forward = scene.cameras.world_from_camera[:, :, 2]
    assert np.all(np.einsum("ni,ni->n", forward, -scene.cameras.positions) > 0)
    assert [cells.patch_id for cells in scene.cells] == ["p0", "p1"]
    for cells in scene.cells:
        # Each cell: a closed rectangle of 4 finite segments on one ground plane, the expanded cell around the core.
        for outline in (cells.core, cells.expanded):
            assert outline.shape == (4, 2, 3) and np.all(np.isfinite(outline))
            assert np.allclose(outline[:, 1], np.roll(outline[:, 0], -1, axis=0))
        heights = np.concatenate([cells.core, cells.expanded]) @ scene.up
        assert np.ptp(heights) < 1e-9
        # The expanded cell holds the core cell, so its bounding box holds the core's in any frame.
        core, expanded = cells.core.reshape(-1, 3), cells.expanded.reshape(-1, 3)
        assert np.all(expanded.min(axis=0) <= core.min(axis=0) + 1e-9) and np.all(expanded.max(axis=0) >= core.max(axis=0) - 1e-9)
    assert scene.mesh_path == Workspace(workspace).mesh_ply


def test_cameras_looking_at_one_subject_are_first_seen_through_the_most_central_one(workspace):
    """An object orbit (this ring of cameras, cup77) starts where a photo was taken, looking along its axis."""
    scene = load_view_scene(Workspace(workspace))
    distances = np.linalg.norm(scene.cameras.positions - scene.start_position, axis=1)
    camera = int(np.argmin(distances))
    assert distances[camera] < 1e-6
    direction = (scene.look_at - scene.start_position) / np.linalg.norm(scene.look_at - scene.start_position)
    assert np.allclose(direction, scene.cameras.world_from_camera[camera][:, 2], atol=1e-6)


def test_cameras_that_do_not_converge_see_the_scene_from_above_one_side():
    """A survey flight (parallel axes, all looking down): an overview from the scene's edge, not a camera."""
    down = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])           # world_from_camera: +z forward = down
    positions = np.array([[x, y, 10.0] for x in range(3) for y in range(3)])
    cameras = CameraPoses(tuple(f"{i}.png" for i in range(9)), positions, np.repeat(down[None], 9, axis=0),
                          np.full(9, 0.8), np.full(9, 1.5), np.zeros(9, dtype=bool))
    middle, offset = np.array([1.0, 1.0, 0.0]), np.array([0.0, -8.0, 6.0])
    look_at, start = first_view(cameras, middle, offset)
    assert np.allclose(look_at, middle) and np.allclose(start, middle + offset)


def test_one_patch_is_shown_with_its_own_cameras_and_held_out_views(workspace):
    from patchsplat.split.layout import PatchDescription

    ws = Workspace(workspace)
    scene = load_view_scene(ws, "p0")
    patch = PatchDescription.load(ws.patch("p0").patch_dir)

    assert scene.title == "patch p0" and len(scene.splats) == NUM_SPLATS // 2
    assert set(scene.cameras.names) == set(patch.image_names)
    assert {name for name, held in zip(scene.cameras.names, scene.cameras.heldout) if held} == set(patch.heldout_image_names)


@pytest.mark.parametrize(("patch", "named"), [("p1", "data/trained/p1/splats.ply"), ("p7", "data/patches/p7"),
                                              ("seven", "PATCH_ID")])
def test_a_patch_that_was_not_trained_or_does_not_exist_is_refused(workspace, patch, named):
    with pytest.raises(InputError) as refused:
        load_view_scene(Workspace(workspace), patch)
    assert named in refused.value.where.replace(os.sep, "/")


def test_a_camera_s_photo_is_shown_beside_patchsplat_s_render_from_it(workspace):
    from PIL import Image

    from patchsplat.view.photo_render import photo_and_render

    scene = load_view_scene(Workspace(workspace))
    name = scene.cameras.names[int(np.flatnonzero(scene.cameras.heldout)[0])]
    pair = photo_and_render(scene.gaussians, scene.model_dir, scene.images_dir, name)

    assert pair.shape == (48, 128, 3) and pair.dtype == np.uint8  # the scene's 64 x 48 photos, side by side
    photo = np.asarray(Image.open(scene.images_dir / name).convert("RGB"))
    assert np.array_equal(pair[:, :64], photo)
    assert _magenta_fraction_of(pair[:, 64:]) > 0.1  # the cube of splats in the middle of the view


def test_the_viewer_serves_its_page_on_127_0_0_1_from_the_wheel(workspace):
    from urllib.request import urlopen

    from patchsplat.view import ViewerOptions, start_viewer, viewer_url

    server = start_viewer(load_view_scene(Workspace(workspace)), ViewerOptions(port=0))
    try:
        assert server.get_host() == "127.0.0.1" and viewer_url(server).startswith("http://127.0.0.1:")
        with urlopen(viewer_url(server), timeout=30) as response:
            page = response.read().decode("utf-8")
        assert "<!doctype html>" in page.lower() and len(page) > 100_000  # viser's client, all in one page
    finally:
        server.stop()


def test_a_damaged_mesh_is_refused_before_the_viewer_serves(workspace, tmp_path):
    from dataclasses import replace

    from patchsplat.view import ViewerOptions, start_viewer

    damaged = tmp_path / "mesh.ply"
    damaged.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n")
    with pytest.raises(InputError) as refused:
        start_viewer(replace(load_view_scene(Workspace(workspace)), mesh_path=damaged), ViewerOptions(port=0))
    assert refused.value.where == str(damaged)


def _run_view(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patchsplat.cli", "view", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_a_folder_that_is_not_a_workspace_is_one_line(tmp_path):
    missing = _run_view(str(tmp_path / "nowhere"), cwd=tmp_path)
    empty = _run_view(cwd=tmp_path)  # the current folder, which holds no split

    for completed, named in ((missing, "nowhere"), (empty, "data/patches")):
        assert completed.returncode == 1
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], completed.stderr
        assert "Traceback" not in completed.stdout + completed.stderr


def test_an_address_this_machine_cannot_listen_on_is_one_line(workspace):
    completed = _run_view(str(workspace), "--host", "no-such-host.invalid", cwd=workspace)

    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()] and "--host" in completed.stderr


# --- the page in a real browser -----------------------------------------------------------------------------

class ViewerProcess:
    """``patchsplat view`` in a subprocess; its output is read in a thread so it never blocks on a full pipe."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "patchsplat.cli", "view", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def url(self, timeout: float = 120.0) -> str:
        """The URL the viewer says it serves on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            found = re.search(r"^view: .* at (http://\S+)", line)
            if found:
                return found.group(1)
        raise AssertionError(f"the viewer printed no URL:\n{''.join(self.output)}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait_for(measure, condition, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = measure()
    while not condition(value) and time.monotonic() < deadline:
        time.sleep(1.0)
        value = measure()
    return value


@pytest.mark.timeout(600)
def test_the_page_shows_the_splats_in_headless_chromium_and_its_controls_work(workspace, tmp_path):
    sync_playwright = playwright_or_skip()
    viewer = ViewerProcess(str(workspace), "--port", "0")
    try:
        url = viewer.url()
        assert urlparse(url).hostname == "127.0.0.1", url

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            # Nothing may come from the internet: every request leaving this machine is recorded and refused.
            outside = refuse_requests(page, lambda url: urlparse(url).hostname == "127.0.0.1")
            page.goto(url)
            assert page.evaluate("!!document.createElement('canvas').getContext('webgl2')"), "no WebGL 2 in this Chromium"
            canvas = page.locator("canvas").first
            canvas.wait_for(timeout=60_000)
            # Loaded: the splats are drawn (the canvas is blank white until the scene arrives and is sorted).
            shown = _wait_for(lambda: _magenta_fraction(canvas.screenshot()), lambda fraction: fraction > 0.01, timeout=180)
            screenshot = tmp_path / "viewer.png"
            page.screenshot(path=str(screenshot))
            print(f"viewer screenshot: {screenshot}")
            assert shown > 0.01, f"no splats on the canvas after 180 s (screenshot: {screenshot})"
            for label in ("training cameras (14)", "held-out cameras (2)", "core cells", "expanded cells", "mesh (12 faces)"):
                assert page.get_by_text(label).count() == 1, f"no {label!r} control (screenshot: {screenshot})"

            # The cameras circle the splats, all looking at them: the first view is through one of them (4 units
            # from the cube). Scrolled away from it, the cube shrinks; "look through it" on the first held-out
            # camera (also 4 units away) brings it back; its photo beside patchsplat's render appears in the panel.
            box = canvas.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)  # left of the panel
            for _ in range(8):
                page.mouse.wheel(0, 400)
            away = _wait_for(lambda: _magenta_fraction(canvas.screenshot()), lambda fraction: fraction < shown / 4, timeout=60)
            assert away < shown / 4, f"scrolling did not move away from the splats ({away:.3f} of {shown:.3f})"
            page.get_by_text("look through it").click()
            closer = _wait_for(lambda: _magenta_fraction(canvas.screenshot()), lambda fraction: fraction > 3 * away, timeout=60)
            page.get_by_text("photo | patchsplat render").click()
            page.get_by_text("img001.png: photo | render").wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "viewer-camera.png"))
            assert closer > 3 * away, f"'look through it' did not move the view (screenshot: {tmp_path / 'viewer-camera.png'})"

            # The mesh (an opaque box around the splats) is off at first; its checkbox shows it, hiding the splats.
            page.get_by_text("mesh (12 faces)").click()
            covered = _wait_for(lambda: _magenta_fraction(canvas.screenshot()), lambda fraction: fraction < closer / 4, timeout=60)
            page.screenshot(path=str(tmp_path / "viewer-mesh.png"))
            assert covered < closer / 4, f"the mesh checkbox did not show the mesh (screenshot: {tmp_path / 'viewer-mesh.png'})"
            browser.close()
        assert outside == [], f"the page asked the internet for {outside}"
    finally:
        viewer.stop()
    assert viewer.process.returncode is not None


def test_a_few_far_splats_do_not_push_the_first_view_out_of_sight(workspace, tmp_path):
    """A real capture's distant background or edge floaters lie thousands of units out (fern_llff8: the
    framed extent was 6,917 units for a scene of ~80, and the first view showed nothing)."""
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(workspace, root)
    splats = _magenta_splats(NUM_SPLATS)
    splats["means"][:3] = torch.tensor([[5000.0, 0, 0], [0, -4000.0, 0], [3000.0, 3000.0, 0]])
    write_splats_ply(Workspace(root).merged_splats, **splats)
    far, near = load_view_scene(Workspace(root)), load_view_scene(Workspace(workspace))
    assert far.extent == pytest.approx(near.extent, rel=0.2)
    assert np.linalg.norm(far.start_position - far.look_at) < 3 * near.extent
