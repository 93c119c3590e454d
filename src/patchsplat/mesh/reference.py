"""The part of the demo's ground-truth mesh a mesh extracted from its views can be held to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patchsplat.reading import read_json_object

# A ground-truth sample counts as seen when its depth is within this of the nearest sample in its pixel.
_SEEN_RELATIVE, _SEEN_ABSOLUTE = 0.01, 0.05


def visible_ground_truth_samples(scene: Path, cameras, depth_trunc: float, count: int = 400_000, seed: int = 0) -> np.ndarray:
    """Points sampled on ``scene/ground_truth_mesh.ply`` that one of ``cameras`` sees (in the image,
    within ``depth_trunc``, not hidden: depth within 1% + 5 cm of the nearest sample in the same
    pixel), inside the area holding the scene's points (the ground square reaches 1.5x further,
    but nothing was sampled or trained there)."""
    import trimesh

    manifest = read_json_object(scene / "manifest.json", "demo scene manifest", ["scene_extent"])
    truth = trimesh.load(scene / "ground_truth_mesh.ply", force="mesh", process=False)
    points, _ = trimesh.sample.sample_surface(truth, count, seed=seed)
    seen = np.zeros(len(points), dtype=bool)
    for camera in cameras:
        in_camera = points @ camera.rotation.T + camera.translation
        depth = np.where(in_camera[:, 2] > 1e-6, in_camera[:, 2], np.nan)
        column = np.floor(camera.K[0, 0] * in_camera[:, 0] / depth + camera.K[0, 2])
        row = np.floor(camera.K[1, 1] * in_camera[:, 1] / depth + camera.K[1, 2])
        inside = np.flatnonzero((column >= 0) & (column < camera.width) & (row >= 0) & (row < camera.height) & (depth <= depth_trunc))
        pixel = (row[inside] * camera.width + column[inside]).astype(np.int64)
        nearest = np.full(camera.width * camera.height, np.inf)
        np.minimum.at(nearest, pixel, depth[inside])
        seen[inside[depth[inside] <= (1 + _SEEN_RELATIVE) * nearest[pixel] + _SEEN_ABSOLUTE]] = True
    area = manifest["scene_extent"]["area_bounds"]
    in_area = np.all((points[:, :2] >= area["min"][:2]) & (points[:, :2] <= area["max"][:2]), axis=1)
    return points[seen & in_area]
