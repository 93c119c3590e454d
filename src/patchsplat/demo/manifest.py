"""manifest.json: the ground truth that validation statistics are later compared against.

Contract: plain JSON types only, no timestamps and no absolute paths, so the same config gives a
byte-identical file. Point ids are pycolmap ids (point ``j`` of the model has id ``j + 1``); images
are named ``00000.png`` ... with id ``index + 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from patchsplat.config import DemoSceneConfig
from patchsplat.demo.colmap_model import SparseModel, image_name
from patchsplat.demo.layout import KIND_NAMES, ORBIT, PATH, SPHERE, SceneLayout

GENERATOR_NAME = "patchsplat.demo"
# Bump whenever the same config would produce different files.
GENERATOR_VERSION = "1"
QUADRANTS = {"+x+y": (1, 1), "-x+y": (-1, 1), "-x-y": (-1, -1), "+x-y": (1, -1)}
NN_NEIGHBOURS = 3


def nn_spacing(points: np.ndarray) -> np.ndarray:
    """Per point: sqrt of the mean squared distance to its 3 nearest neighbours (gsplat's init-scale rule)."""
    if len(points) <= NN_NEIGHBOURS:
        return np.zeros(len(points))
    distance, _ = cKDTree(points).query(points, k=NN_NEIGHBOURS + 1, workers=-1)
    return np.sqrt((distance[:, 1:] ** 2).mean(axis=1))


def _bbox(points: np.ndarray) -> dict[str, list[float]]:
    return {"min": [float(v) for v in points.min(axis=0)], "max": [float(v) for v in points.max(axis=0)]}


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _objects(layout: SceneLayout) -> list[dict[str, Any]]:
    objects = layout.objects
    listed = []
    for k in range(len(objects)):
        entry: dict[str, Any] = {"id": k, "type": KIND_NAMES[int(objects.kind[k])], "centre": _floats(objects.centre[k])}
        if objects.kind[k] == SPHERE:
            entry["radius"] = float(objects.half_size[k, 0])
        else:
            entry["size"] = _floats(2.0 * objects.half_size[k])
            entry["yaw_deg"] = float(np.degrees(objects.yaw[k]))
        entry["top"] = float(objects.top[k])
        entry["scaled"] = bool(objects.scaled[k])
        listed.append(entry)
    return listed


def build_manifest(
    config: DemoSceneConfig,
    layout: SceneLayout,
    model: SparseModel,
    num_surface_points: int,
    missing_images: np.ndarray,
    images_written: int,
    mesh_info: dict[str, Any],
) -> dict[str, Any]:
    cameras = layout.cameras
    surface = model.xyz[:num_surface_points]
    spacing = nn_spacing(surface)
    spacing_all = spacing if len(model) == num_surface_points else nn_spacing(model.xyz)
    by_quadrant = {}
    for name, (sx, sy) in QUADRANTS.items():
        rows = (np.sign(surface[:, 0]) == sx) & (np.sign(surface[:, 1]) == sy)
        by_quadrant[name] = {"num_points": int(rows.sum()), "mean_nn_spacing": float(spacing[rows].mean()) if rows.any() else None}
    per_image = np.bincount(model.camera, minlength=len(cameras))
    track_length = model.track_length
    outlier_ids = list(range(num_surface_points + 1, len(model) + 1))
    a, g = layout.area_half, layout.ground_half

    return {
        "generator": {"name": GENERATOR_NAME, "version": GENERATOR_VERSION},
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "num_images": len(cameras),
        "num_images_written": images_written,
        "num_points": len(model),
        "num_surface_points": num_surface_points,
        "num_observations": int(len(model.camera)),
        "mean_track_length": float(track_length.mean()),
        "min_track_length": int(track_length.min()),
        "max_track_length": int(track_length.max()),
        "mean_reprojection_error_px": float(model.error.mean()),
        "mean_reprojection_error_px_surface": float(model.error[:num_surface_points].mean()),
        "mean_observations_per_image": float(per_image.mean()),
        "min_observations_per_image": int(per_image.min()),
        "camera": {
            "model": "PINHOLE",
            "camera_id": 1,
            "width": cameras.width,
            "height": cameras.height,
            "params": [cameras.fx, cameras.fy, cameras.cx, cameras.cy],
            "fov_deg": config.fov_deg,
        },
        "image_size": [cameras.width, cameras.height],
        "up": [0.0, 0.0, 1.0],
        "scene_extent": {
            "area_side": config.extent,
            "area_bounds": {"min": [-a, -a, 0.0], "max": [a, a, float(layout.max_object_top)]},
            "ground_square": {"min": [-g, -g], "max": [g, g]},
        },
        "points_bbox": _bbox(model.xyz),
        "surface_points_bbox": _bbox(surface),
        "camera_centres_bbox": _bbox(cameras.centre),
        "mean_nn_spacing": float(spacing.mean()),
        "mean_nn_spacing_all_points": float(spacing_all.mean()),
        "nn_spacing_by_quadrant": by_quadrant,
        "cameras": {
            "num_path": int((cameras.role == PATH).sum()),
            "num_orbit": int((cameras.role == ORBIT).sum()),
            "orbit_centres": [_floats(c) for c in layout.cluster_centres],
        },
        "objects": _objects(layout),
        "mesh": mesh_info,
        "defects": {
            "large_scale_region": {
                "factor": layout.large_scale_factor,
                "quadrant": "+x+y",
                "scaled_objects": [int(k) for k in np.flatnonzero(layout.objects.scaled)],
            },
            "outlier_points": {"point_ids": outlier_ids},
            "missing_images": {"names": [image_name(int(i)) for i in missing_images]},
        },
        "files": {
            "images": "images" if config.render_images else None,
            "sparse": "sparse/0",
            "mesh": "ground_truth_mesh.ply",
        },
    }
