"""Synthetic cameras and Gaussian clouds for tests and benchmarks of the renderers.

Contract: pure functions of their arguments (and a seed) returning float32 tensors on ``device``:

* :func:`look_at` -> a world-to-camera matrix [4, 4] (OpenCV convention: x right, y down, z forward);
* :func:`pinhole_intrinsics` -> K [3, 3] for a horizontal field of view;
* :func:`scene_like_gaussians` -> a dict of activated Gaussian parameters spread like a reconstructed
  scene in patchsplat's canonical frame (a ground square of side 2 around the origin plus the surfaces
  of a few boxes standing on it), with scales set from the point spacing the way training initialises
  them, and a camera that looks at it (:func:`scene_camera`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def look_at(eye: Tensor | tuple, target: Tensor | tuple, up: Tensor | tuple = (0.0, 0.0, 1.0)) -> Tensor:
    """World-to-camera [4, 4] of a camera at ``eye`` looking at ``target`` (``up`` is world up)."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float32) for v in (eye, target, up))
    forward = target - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rotation = torch.stack([right, down, forward])          # rows: camera axes in world coordinates
    viewmat = torch.eye(4)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ eye
    return viewmat


def pinhole_intrinsics(width: int, height: int, fov_x_deg: float = 60.0) -> Tensor:
    """K [3, 3] with square pixels, the principal point at the image centre."""
    focal = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2.0)
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def scene_camera(width: int, height: int) -> tuple[Tensor, Tensor]:
    """(viewmats [1, 4, 4], Ks [1, 3, 3]): a camera above one edge of the ground looking across it."""
    viewmat = look_at((0.0, -1.4, 0.7), (0.0, 0.2, 0.0))
    return viewmat[None], pinhole_intrinsics(width, height)[None]


def scene_like_gaussians(n: int, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """``n`` Gaussians: 70% on the ground square [-1, 1]^2 x {0}, 30% on the faces of 6 boxes.

    Returns means [n, 3], quats [n, 4], scales [n, 3] (about the mean point spacing, log-normal spread),
    opacities [n] in [0.05, 0.95] and colors [n, 3] in [0, 1].
    """
    gen = torch.Generator().manual_seed(seed)
    n_ground = int(0.7 * n)
    ground = torch.cat([torch.rand(n_ground, 2, generator=gen) * 2.0 - 1.0, torch.zeros(n_ground, 1)], dim=1)

    n_box = n - n_ground
    centres = torch.rand(6, 2, generator=gen) * 1.4 - 0.7
    sizes = torch.rand(6, 3, generator=gen) * torch.tensor([0.3, 0.3, 0.5]) + 0.1
    which = torch.randint(0, 6, (n_box,), generator=gen)
    # A uniform point in the box, pushed onto a random face (axis, side).
    unit = torch.rand(n_box, 3, generator=gen)
    axis = torch.randint(0, 3, (n_box,), generator=gen)
    side = torch.randint(0, 2, (n_box,), generator=gen).to(torch.float32)
    unit[torch.arange(n_box), axis] = side
    box_min = torch.cat([centres[which] - sizes[which, :2] / 2, torch.zeros(n_box, 1)], dim=1)
    boxes = box_min + unit * sizes[which]

    means = torch.cat([ground, boxes])
    spacing = math.sqrt(4.0 / n)  # mean distance between neighbours on the ground
    scales = spacing * torch.exp(0.3 * torch.randn(n, 3, generator=gen))
    quats = torch.randn(n, 4, generator=gen)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=gen)
    colors = torch.rand(n, 3, generator=gen)
    return {
        k: v.to(device)
        for k, v in dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors).items()
    }
