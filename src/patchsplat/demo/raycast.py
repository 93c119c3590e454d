"""Vectorised ray casting against the analytic scene (ground square, yawed boxes, spheres).

Contract: rays are ``origin + t * dirs`` with ``dirs`` not necessarily unit length; every function
works on many rays at once and loops in Python only over the (few) candidate objects. Surface ids:
``SKY`` (-1) for a miss, ``GROUND`` (0) for the ground square, ``k + 1`` for object ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchsplat.demo.layout import SPHERE, SceneLayout, SceneObjects

SKY = -1
GROUND = 0
# Along a segment camera->point, hits this close to the point are the point's own neighbourhood.
SEGMENT_END_TOLERANCE = 1e-6


@dataclass
class RayHits:
    """The first surface each ray meets."""

    t: np.ndarray  # (N,) ray parameter of the hit (inf for sky)
    surface: np.ndarray  # (N,) int32 surface id (SKY, GROUND or object index + 1)
    point: np.ndarray  # (N, 3) hit position (undefined for sky)
    normal: np.ndarray  # (N, 3) unit outward normal (undefined for sky)


def sphere_interval(objects: SceneObjects, k: int, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit parameters of the rays through sphere ``k`` (entry > exit where they miss)."""
    offset = origin - objects.centre[k]
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = (dirs * offset).sum(axis=-1)
    c = (offset * offset).sum(axis=-1) - objects.half_size[k, 0] ** 2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t_in = (-b - root) / a
    t_out = np.where(disc >= 0.0, (-b + root) / a, -np.inf)
    return t_in, t_out


def box_interval(objects: SceneObjects, k: int, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit parameters of the rays through box ``k`` (slab method in the box's frame)."""
    cos, sin = np.cos(objects.yaw[k]), np.sin(objects.yaw[k])
    offset = np.asarray(origin - objects.centre[k], dtype=float)
    offset = np.broadcast_to(offset, dirs.shape)
    local_o = np.stack([cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1], offset[:, 2]], axis=1)
    local_d = np.stack([cos * dirs[:, 0] + sin * dirs[:, 1], -sin * dirs[:, 0] + cos * dirs[:, 1], dirs[:, 2]], axis=1)
    # A zero component would give 0/0 on a slab boundary; a tiny one gives the right +-inf instead.
    local_d = np.where(np.abs(local_d) < 1e-15, np.copysign(1e-15, local_d), local_d)
    inv = 1.0 / local_d
    half = objects.half_size[k]
    t_a = (-half - local_o) * inv
    t_b = (half - local_o) * inv
    t_in = np.minimum(t_a, t_b).max(axis=1)
    t_out = np.maximum(t_a, t_b).min(axis=1)
    return t_in, t_out


def object_interval(objects: SceneObjects, k: int, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if objects.kind[k] == SPHERE:
        return sphere_interval(objects, k, origin, dirs)
    return box_interval(objects, k, origin, dirs)


def surface_normals(objects: SceneObjects, surface: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Outward unit normals of surface points (P, 3) given their surface ids."""
    normals = np.zeros_like(points)
    normals[:, 2] = 1.0  # ground (and a harmless value for sky)
    for k in np.unique(surface[surface > GROUND]) - 1:
        rows = surface == k + 1
        offset = points[rows] - objects.centre[k]
        if objects.kind[k] == SPHERE:
            normals[rows] = offset / np.linalg.norm(offset, axis=1, keepdims=True)
            continue
        cos, sin = np.cos(objects.yaw[k]), np.sin(objects.yaw[k])
        local = np.stack([cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1], offset[:, 2]], axis=1)
        # The face a point lies on is the axis where it is relatively farthest out.
        axis = np.argmax(np.abs(local) / objects.half_size[k], axis=1)
        local_n = np.zeros_like(local)
        local_n[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
        normals[rows] = np.stack(
            [cos * local_n[:, 0] - sin * local_n[:, 1], sin * local_n[:, 0] + cos * local_n[:, 1], local_n[:, 2]], axis=1
        )
    return normals


def cast_rays(layout: SceneLayout, origin: np.ndarray, dirs: np.ndarray, object_ids: np.ndarray) -> RayHits:
    """First hits of rays from one ``origin`` (3,) along ``dirs`` (N, 3) against the ground square
    and the objects listed in ``object_ids`` (pre-culled by the caller)."""
    count = len(dirs)
    best_t = np.full(count, np.inf)
    surface = np.full(count, SKY, dtype=np.int32)

    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = -origin[2] / dirs[:, 2]
    ground_xy = origin[None, :2] + t_ground[:, None] * dirs[:, :2]
    on_ground = (dirs[:, 2] < 0.0) & (np.abs(ground_xy) <= layout.ground_half).all(axis=1)
    best_t[on_ground] = t_ground[on_ground]
    surface[on_ground] = GROUND

    objects = layout.objects
    for k in object_ids:
        t_in, t_out = object_interval(objects, int(k), origin, dirs)
        nearer = (t_in <= t_out) & (t_in > 0.0) & (t_in < best_t)
        best_t[nearer] = t_in[nearer]
        surface[nearer] = k + 1

    hit = surface != SKY
    point = np.zeros((count, 3))
    point[hit] = origin + best_t[hit, None] * dirs[hit]
    normal = surface_normals(objects, surface, point)
    return RayHits(t=best_t, surface=surface, point=point, normal=normal)


def occluded(
    layout: SceneLayout, origin: np.ndarray, targets: np.ndarray, target_surface: np.ndarray, object_ids: np.ndarray
) -> np.ndarray:
    """For each target point (P, 3) on surface ``target_surface``, whether any listed object other
    than its own blocks the straight segment from ``origin`` to it.

    The ground cannot block: every surface point has z >= 0 and cameras are above the ground.
    Self-occlusion of a convex object is the caller's back-face test. A cheap bounding-cone test
    narrows each object to the few segments that can reach it before the exact interval test.
    """
    objects = layout.objects
    blocked = np.zeros(len(targets), dtype=bool)
    if len(targets) == 0:
        return blocked
    segment = targets - origin
    length = np.linalg.norm(segment, axis=1)
    for k in object_ids:
        k = int(k)
        to_centre = objects.centre[k] - origin
        centre_distance = float(np.linalg.norm(to_centre))
        radius = float(objects.bounding_radius[k])
        candidates = ~blocked & (target_surface != k + 1)
        if centre_distance > radius:
            # Inside the cone from the origin around the bounding sphere, and not in front of it.
            cone = segment @ to_centre >= length * np.sqrt(centre_distance**2 - radius**2)
            candidates &= cone & (length >= centre_distance - radius)
        rows = np.flatnonzero(candidates)
        if len(rows) == 0:
            continue
        t_in, t_out = object_interval(objects, k, origin, segment[rows])
        hit = (t_in <= t_out) & (t_out > 0.0) & (t_in < 1.0 - SEGMENT_END_TOLERANCE)
        blocked[rows[hit]] = True
    return blocked
