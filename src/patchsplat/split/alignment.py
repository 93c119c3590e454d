"""Gravity alignment: a rotation that puts the scene's up direction on +z.

Patches are cells on the ground plane, so the split first needs to know where
"up" is. COLMAP's world frame is arbitrary (the first camera's), so up comes from
the cameras (people hold cameras upright: the image's -y axis points up on
average) or, for nadir captures where that fails, from the points' dominant plane.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# Cameras "agree" on up when their mean up vector is at least this long (1 = all identical).
_CAMERA_UP_AGREEMENT = 0.5


def camera_up_vectors(rotations_cam_from_world: np.ndarray) -> np.ndarray:
    """(M, 3) world-space up vector of each camera: the image's -y axis (COLMAP: y points down)."""
    return -rotations_cam_from_world[:, 1, :]


def pca_up(xyz: np.ndarray, camera_centres: np.ndarray) -> np.ndarray:
    """Normal of the points' best-fit plane, oriented towards the cameras."""
    finite = xyz[np.all(np.isfinite(xyz), axis=1)]
    low, high = np.percentile(finite, [2, 98], axis=0)
    inliers = finite[np.all((finite >= low) & (finite <= high), axis=1)]
    if len(inliers) < 3:
        inliers = finite
    centred = inliers - inliers.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    normal = vt[-1]
    if np.dot(camera_centres.mean(axis=0) - inliers.mean(axis=0), normal) < 0:
        normal = -normal
    return normal / np.linalg.norm(normal)


def estimate_up(
    rotations_cam_from_world: np.ndarray,
    xyz: np.ndarray,
    camera_centres: np.ndarray,
    method: Literal["auto", "cameras", "pca", "z"],
) -> tuple[np.ndarray, str]:
    """The unit up vector in world coordinates and the method that produced it."""
    if method == "z":
        return np.array([0.0, 0.0, 1.0]), "z"
    if method in ("auto", "cameras"):
        mean_up = camera_up_vectors(rotations_cam_from_world).mean(axis=0)
        if method == "cameras" or np.linalg.norm(mean_up) >= _CAMERA_UP_AGREEMENT:
            return mean_up / np.linalg.norm(mean_up), "cameras"
    return pca_up(xyz, camera_centres), "pca"


def ground_rotation(
    up: np.ndarray, camera_centres: np.ndarray, axes: Literal["pca", "model"]
) -> np.ndarray:
    """World -> aligned rotation (3x3): rows are the aligned x, y and z (= up) axes in world coordinates.

    ``pca``: x is the principal direction of the camera positions on the ground (so
    quantile columns cut across the long side of an elongated capture); ``model``:
    x is the model's own x axis projected on the ground.
    """
    up = up / np.linalg.norm(up)
    x_axis = None
    if axes == "pca" and len(camera_centres) >= 2:
        on_ground = camera_centres - np.outer(camera_centres @ up, up)
        centred = on_ground - on_ground.mean(axis=0)
        _, singular_values, vt = np.linalg.svd(centred, full_matrices=False)
        if singular_values[0] > 1e-12:
            x_axis = vt[0]
            # The sign of a principal axis is arbitrary; fix it so the result is deterministic.
            if x_axis[np.argmax(np.abs(x_axis))] < 0:
                x_axis = -x_axis
    if x_axis is None:
        reference = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        x_axis = reference - np.dot(reference, up) * up
    x_axis = x_axis - np.dot(x_axis, up) * up
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(up, x_axis)
    return np.stack([x_axis, y_axis, up])
