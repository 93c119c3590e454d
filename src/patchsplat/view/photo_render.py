"""The one image the viewer renders on this machine: a camera's photo beside patchsplat's own render from it.

viser draws the splats in the browser with its own WebGL renderer, which shows the base colour only; a GUI image
is where viser needs pixels, and there the pipeline's renderer (gsplat on a GPU, pure torch on a CPU, all SH
degrees, as evaluation renders) shows what the held-out metrics score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from patchsplat.errors import InputError

# The rendered pair stays small: the GUI panel is a few hundred pixels wide, and a CPU render of a large scene
# at full resolution takes minutes.
MAX_RENDER_WIDTH = 320


def resolution_factor_for(width: int, max_width: int = MAX_RENDER_WIDTH) -> int:
    """The smallest integer downscale (as training uses) that brings ``width`` to ``max_width`` or less."""
    return max(1, -(-width // max_width))


def photo_and_render(gaussians: dict[str, torch.Tensor], model_dir: Path, images_dir: Path, image_name: str) -> np.ndarray:
    """(H, 2W, 3) uint8: the photo of ``image_name`` (grey when its file is missing) and the render of ``gaussians``
    from its camera, side by side, at a width of at most :data:`MAX_RENDER_WIDTH` each."""
    from patchsplat.render import select_backend
    from patchsplat.scene_views import SceneCameras, load_image, render_world

    scene = SceneCameras(model_dir, images_dir)
    camera = scene.by_name.get(image_name)
    if camera is None:
        raise InputError(model_dir, f"has no registered image {image_name!r}", kind="missing_images")
    factor = resolution_factor_for(camera.width)
    _, width, height = camera.scaled(factor)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    render, _, _ = render_world(gaussians, camera, scene.frame, resolution_factor=factor,
                                backend=select_backend("auto", device=device), device=device)
    photo = load_image(camera, width, height) if camera.image_path.is_file() else np.full((height, width, 3), 0.5, np.float32)
    return (np.concatenate([photo, render], axis=1) * 255.0).round().astype(np.uint8)
