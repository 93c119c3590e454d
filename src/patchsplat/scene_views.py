"""A whole scene's cameras, and rendering world-frame splats from them.

Training works per patch in a canonical frame; merging, meshing and evaluation work on
the scene in its world frame. :func:`render_world` renders world-frame splats from a
world-frame camera by moving both into a normalised frame first (so the rasterizer's
near plane and numerics do not depend on the capture's units) and returns depths back
in world units. Meshing and evaluation render at the resolution a patch was trained at
(:class:`~patchsplat.train.records.TrainedMetrics`): :meth:`Camera.scaled` and
:func:`describe_resolution` give the size and say it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from patchsplat.colmap_io.arrays import ModelArrays, parse_cameras, read_model_arrays
from patchsplat.errors import InputError
from patchsplat.prepare import CanonicalFrame, canonical_frame
from patchsplat.split import heldout_names
from patchsplat.train.data import PINHOLE_MODELS, _intrinsics_matrix, load_image_file
from patchsplat.validate.image_files import safe_image_path


@dataclass(frozen=True)
class Camera:
    """A world-frame pinhole camera."""

    name: str
    image_path: Path
    rotation: np.ndarray     # (3, 3) cam_from_world
    translation: np.ndarray  # (3,)
    K: np.ndarray            # (3, 3)
    width: int
    height: int

    @property
    def centre(self) -> np.ndarray:
        return -self.rotation.T @ self.translation

    def scaled(self, resolution_factor: int) -> tuple[np.ndarray, int, int]:
        """(K, width, height) at ``resolution_factor``: the size training uses (``size // factor``, as
        patchsplat.train.data does), K scaled to it."""
        width, height = max(1, self.width // resolution_factor), max(1, self.height // resolution_factor)
        K = self.K.copy()
        K[:2] *= np.array([[width / self.width], [height / self.height]])
        return K, width, height


class SceneCameras:
    """The registered cameras of a COLMAP model, sorted by image name, with the scene-wide held-out set."""

    def __init__(self, model_dir: Path, images_dir: Path, arrays: ModelArrays | None = None) -> None:
        arrays = arrays if arrays is not None else read_model_arrays(model_dir)
        intrinsics = parse_cameras(arrays.cameras_bin)
        rotations = arrays.rotations
        cameras = []
        for index in np.argsort(np.array(arrays.image_names)):
            camera = intrinsics[int(arrays.camera_ids[index])]
            if camera.model not in PINHOLE_MODELS:
                raise InputError(model_dir / "cameras.bin", f"camera {camera.camera_id} is {camera.model}: undistort first", kind="unsupported_camera_model")
            cameras.append(Camera(arrays.image_names[index], safe_image_path(images_dir, arrays.image_names[index]),
                                  rotations[index], arrays.translations[index],
                                  _intrinsics_matrix(camera.model, camera.params), camera.width, camera.height))
        self.cameras = cameras
        self.by_name = {camera.name: camera for camera in cameras}
        held_out = set(heldout_names([camera.name for camera in cameras]))
        self.heldout = [camera for camera in cameras if camera.name in held_out]
        self.frame = canonical_frame(np.stack([camera.centre for camera in cameras]), arrays.xyz)


def describe_resolution(cameras: list[Camera], resolution_factor: int) -> str:
    """``"200x150 (1/4 of 800x600)"`` (``"800x600 (full resolution)"`` at factor 1), one entry per distinct
    camera size, for reports that must say what resolution their numbers are at."""
    sizes = sorted({(camera.width, camera.height) for camera in cameras}, reverse=True)
    parts = []
    for width, height in sizes[:3]:
        scaled = f"{max(1, width // resolution_factor)}x{max(1, height // resolution_factor)}"
        parts.append(f"{scaled} (full resolution)" if resolution_factor == 1 else f"{scaled} (1/{resolution_factor} of {width}x{height})")
    more = f" and {len(sizes) - 3} more sizes" if len(sizes) > 3 else ""
    return ", ".join(parts) + more


def load_image(camera: Camera, width: int | None = None, height: int | None = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]; resized (box filter) when a size is given."""
    return load_image_file(camera.image_path, width, height)


@torch.no_grad()
def render_world(
    splats: dict[str, torch.Tensor], camera: Camera, frame: CanonicalFrame, *, resolution_factor: int = 1,
    backend: str = "auto", render_mode: str = "RGB", device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Render world-frame splats (keyed by :data:`~patchsplat.gaussians.GAUSSIAN_FIELDS`) from ``camera``: (colour HxWx3 in [0,1], depth HxW in world
    units or None, alpha HxW). ``frame`` normalises the scene for the rasterizer (any frame of similar scale)."""
    from patchsplat.render import rasterize

    device = device or torch.device("cpu")
    K, width, height = camera.scaled(resolution_factor)
    viewmat = np.eye(4)
    viewmat[:3, :3] = camera.rotation
    viewmat[:3, 3] = frame.scale * (camera.rotation @ frame.centre + camera.translation)
    means = (splats["means"].to(device).double() - torch.as_tensor(frame.centre, device=device)) * frame.scale
    colours = torch.cat([splats["sh0"], splats["shN"]], dim=1).to(device)
    sh_degree = int(round(np.sqrt(colours.shape[1]))) - 1
    rendered, alphas, _ = rasterize(
        means.float(), splats["quats"].to(device), torch.exp(splats["scales"].to(device)) * frame.scale,
        torch.sigmoid(splats["opacities"].to(device)), colours,
        torch.tensor(viewmat, dtype=torch.float32, device=device)[None], torch.tensor(K, dtype=torch.float32, device=device)[None],
        width, height, sh_degree=sh_degree, backend=backend, render_mode=render_mode,
    )
    colour = rendered[0, ..., :3].clamp(0, 1).cpu().numpy()
    depth = rendered[0, ..., 3].cpu().numpy() / frame.scale if render_mode.endswith("D") else None
    return colour, depth, alphas[0, ..., 0].cpu().numpy()
