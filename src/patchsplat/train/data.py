"""A patch's training views: cameras in the canonical frame, images loaded lazily.

Images stay on the CPU in an LRU cache of bounded size and only the view being
trained on goes to the device: holding every image on the GPU at once is one of the
ways a 16 GB card ran out of memory. Every 8th image (sorted by name) is held out
and never trained on, the convention of the 3DGS literature.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from patchsplat.colmap_io.arrays import read_model_arrays, parse_cameras
from patchsplat.errors import InputError
from patchsplat.prepare import CanonicalFrame
from patchsplat.validate.image_files import safe_image_path

PINHOLE_MODELS = {"PINHOLE", "SIMPLE_PINHOLE"}


@dataclass(frozen=True)
class View:
    """One image and its camera, ready for the rasterizer (canonical frame, at the training resolution)."""

    name: str
    path: Path
    viewmat: torch.Tensor     # (4, 4) canonical world -> camera
    K: torch.Tensor           # (3, 3) at the training resolution
    width: int
    height: int


def core_fractions(arrays, description) -> dict[str, float]:
    """Image name -> the fraction of the SfM points it observes that lie in the patch's core cell (1 for an
    image observing none: nothing says it looks elsewhere)."""
    inside = arrays.observed_fractions(description.core_contains(arrays.xyz).astype(np.int64), 2)[:, 1]
    observed = np.bincount(arrays.obs_image, minlength=len(arrays.image_names)) > 0
    return {name: float(fraction) if seen else 1.0 for name, fraction, seen in zip(arrays.image_names, inside, observed)}


def _intrinsics_matrix(model: str, params: tuple[float, ...]) -> np.ndarray:
    if model == "SIMPLE_PINHOLE":
        focal_x = focal_y = params[0]
        centre_x, centre_y = params[1], params[2]
    else:
        focal_x, focal_y, centre_x, centre_y = params[:4]
    return np.array([[focal_x, 0.0, centre_x], [0.0, focal_y, centre_y], [0.0, 0.0, 1.0]])


class PatchViews:
    """The views of one patch, split into training and held-out views, with a bounded image cache."""

    def __init__(self, patch_dir: Path, frame: CanonicalFrame, resolution_factor: int = 1, cache_images: int = 64) -> None:
        from patchsplat.split import PatchDescription

        description = PatchDescription.load(patch_dir)
        arrays = read_model_arrays(patch_dir / "sparse" / "0")
        cameras = parse_cameras(arrays.cameras_bin)
        self.images_dir = description.images_folder(patch_dir)
        self.resolution_factor = resolution_factor
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = max(1, cache_images)

        rotations = arrays.rotations
        views = []
        for index in np.argsort(np.array(arrays.image_names)):
            camera = cameras[int(arrays.camera_ids[index])]
            if camera.model not in PINHOLE_MODELS:
                raise InputError(
                    patch_dir / "sparse" / "0" / "cameras.bin",
                    f"camera {camera.camera_id} is {camera.model}; training needs undistorted (PINHOLE) cameras: "
                    "set scene.undistort: auto in params.yaml (the default), or run "
                    "`patchsplat validate SCENE --undistort OUT_DIR` and use OUT_DIR",
                    kind="unsupported_camera_model",
                )
            # A camera maps world x to R x + t; in canonical coordinates c = s (x - centre) that is
            # (R c + s (R centre + t)) / s. Projection ignores the common 1/s, so the rigid part is the view.
            rotation = rotations[index]
            translation = frame.scale * (rotation @ frame.centre + arrays.translations[index])
            viewmat = np.eye(4)
            viewmat[:3, :3], viewmat[:3, 3] = rotation, translation
            intrinsics = _intrinsics_matrix(camera.model, camera.params)
            width, height = camera.width // resolution_factor, camera.height // resolution_factor
            intrinsics[:2] *= np.array([[width / camera.width], [height / camera.height]])
            views.append(View(
                name=arrays.image_names[index],
                path=safe_image_path(self.images_dir, arrays.image_names[index]),
                viewmat=torch.tensor(viewmat, dtype=torch.float32),
                K=torch.tensor(intrinsics, dtype=torch.float32),
                width=width, height=height,
            ))
        self.all_views = views
        held_out = set(description.heldout_image_names)
        self.test_views = [view for view in views if view.name in held_out]
        self.train_views = [view for view in views if view.name not in held_out]
        if not self.train_views:
            raise InputError(patch_dir, f"its {len(views)} images are all held-out views of the scene (patch.json): none left to train on", kind="too_small")
        self.core_fractions = core_fractions(arrays, description)


    def image(self, view: View) -> torch.Tensor:
        """(H, W, 3) float32 in [0, 1] at the training resolution (cached, least recently used evicted)."""
        cached = self._cache.get(view.name)
        if cached is not None:
            self._cache.move_to_end(view.name)
            return cached
        pixels = torch.from_numpy(load_image_file(view.path, view.width, view.height))
        self._cache[view.name] = pixels
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return pixels


def load_image_file(path: Path, width: int | None = None, height: int | None = None) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1], resized to ``width`` x ``height`` when given and different."""
    try:
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
            if width and height and picture.size != (width, height):
                # BOX averages the source pixels a training pixel covers (no aliasing when downscaling).
                picture = picture.resize((width, height), Image.Resampling.BOX)
            return np.asarray(picture, dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot read image ({error})", kind="undecodable_image") from None


def check_patch_images(patch_dir: Path) -> None:
    """Every image of the patch is there and its header says its camera's size: checked before anything is
    written, so that `patchsplat train` on a patch whose images moved or changed stops at once with one line
    (the pipeline's validate stage decodes every image; a standalone train reads only the headers, which is
    quick at any scale, so an image damaged past its header is still found when training first loads it)."""
    from patchsplat.split import PatchDescription

    images_dir = PatchDescription.load(patch_dir).images_folder(patch_dir)  # first: a folder that is not a patch is named as such
    arrays = read_model_arrays(patch_dir / "sparse" / "0")
    cameras = parse_cameras(arrays.cameras_bin)
    for name, camera_id in zip(arrays.image_names, arrays.camera_ids):
        path = safe_image_path(images_dir, name)
        camera = cameras[int(camera_id)]
        try:
            with Image.open(path) as opened:
                size = opened.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise InputError(path, f"cannot read image ({' '.join(str(error).split())})", kind="undecodable_image") from None
        if size != (camera.width, camera.height):
            raise InputError(path, f"is {size[0]}x{size[1]} but its camera {camera.camera_id} is "
                                   f"{camera.width}x{camera.height}: not the image the model was made from",
                             kind="image_size_mismatch")
