"""Random points on the scene's surfaces, uniform by area.

Contract: :func:`sample_surfaces` draws ``count`` candidates uniformly by area over the ground
inside the area (minus box footprints) and the objects' outer surfaces (box sides and tops, whole
spheres), then thins the large-scale region (the +x,+y quadrant's ground and its scaled objects)
by 1/f^2 so its spacing is f times larger, and returns the survivors in random order (so any
prefix is itself a uniform sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from patchsplat.demo.layout import BOX, SPHERE, SceneLayout, SceneObjects, in_large_scale_region
from patchsplat.demo.raycast import GROUND


@dataclass
class SurfaceSamples:
    points: np.ndarray  # (P, 3)
    normals: np.ndarray  # (P, 3) outward unit normals
    surface: np.ndarray  # (P,) int32: GROUND or object index + 1

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def subset(self, rows: np.ndarray) -> SurfaceSamples:
        return SurfaceSamples(self.points[rows], self.normals[rows], self.surface[rows])


def object_areas(objects: SceneObjects) -> np.ndarray:
    """Sampled area of each object: four sides and the top of a box (its bottom is on the ground), a whole sphere."""
    hx, hy, hz = objects.half_size.T
    box = 8.0 * hz * (hx + hy) + 4.0 * hx * hy
    sphere = 4.0 * math.pi * hx**2
    return np.where(objects.kind == SPHERE, sphere, box)


def keep_probability(layout: SceneLayout) -> tuple[float, np.ndarray]:
    """Thinning keep-probabilities of the ground in the large-scale quadrant and of each object."""
    thin = 1.0 / layout.large_scale_factor**2
    return thin, np.where(layout.objects.scaled, thin, 1.0)


def expected_keep_fraction(layout: SceneLayout) -> float:
    """Expected share of candidates that survive thinning (before visibility)."""
    ground_area = (2.0 * layout.area_half) ** 2
    areas = object_areas(layout.objects)
    thin_ground, keep_objects = keep_probability(layout)
    kept = ground_area * (0.75 + 0.25 * thin_ground) + float((areas * keep_objects).sum())
    return kept / (ground_area + float(areas.sum()))


def sample_surfaces(layout: SceneLayout, count: int, rng: np.random.Generator) -> SurfaceSamples:
    objects = layout.objects
    areas = object_areas(objects)
    ground_area = (2.0 * layout.area_half) ** 2
    weights = np.concatenate([[ground_area], areas])
    counts = rng.multinomial(count, weights / weights.sum())

    parts = [_sample_ground(layout, int(counts[0]), rng)]
    owner = np.repeat(np.arange(len(objects)), counts[1:])
    for kind, sampler in ((BOX, _sample_boxes), (SPHERE, _sample_spheres)):
        ids = owner[objects.kind[owner] == kind]
        if len(ids):
            parts.append(sampler(objects, ids, rng))
    samples = SurfaceSamples(
        np.concatenate([p.points for p in parts]),
        np.concatenate([p.normals for p in parts]),
        np.concatenate([p.surface for p in parts]),
    )

    thin_ground, keep_objects = keep_probability(layout)
    keep_p = np.where(in_large_scale_region(samples.points[:, :2]), thin_ground, 1.0)
    on_object = samples.surface != GROUND
    keep_p[on_object] = keep_objects[samples.surface[on_object] - 1]
    keep = rng.random(len(samples)) < keep_p
    rows = np.flatnonzero(keep)
    return samples.subset(rows[rng.permutation(len(rows))])


def _sample_ground(layout: SceneLayout, count: int, rng: np.random.Generator) -> SurfaceSamples:
    xy = rng.uniform(-layout.area_half, layout.area_half, (count, 2))
    # Ground under a box is not a surface anyone can see; under a sphere it is (from the side).
    xy = xy[~inside_box_footprints(layout.objects, xy)]
    points = np.column_stack([xy, np.zeros(len(xy))])
    normals = np.zeros_like(points)
    normals[:, 2] = 1.0
    return SurfaceSamples(points, normals, np.full(len(xy), GROUND, dtype=np.int32))


def _to_local_xy(objects: SceneObjects, ids: np.ndarray, xy: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(objects.yaw[ids]), np.sin(objects.yaw[ids])
    offset = xy - objects.centre[ids, :2]
    return np.stack([cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1]], axis=1)


def _sample_boxes(objects: SceneObjects, ids: np.ndarray, rng: np.random.Generator) -> SurfaceSamples:
    hx, hy, hz = objects.half_size[ids].T
    # Faces: +x, -x, +y, -y (sides) and top, picked in proportion to their areas.
    face_area = np.stack([hy * hz, hy * hz, hx * hz, hx * hz, hx * hy], axis=1)
    cumulative = np.cumsum(face_area, axis=1)
    face = (rng.random(len(ids))[:, None] * cumulative[:, -1:] > cumulative).sum(axis=1)
    a = rng.uniform(-1.0, 1.0, len(ids))
    b = rng.uniform(-1.0, 1.0, len(ids))
    sign = np.where(face % 2 == 0, 1.0, -1.0)
    local = np.zeros((len(ids), 3))
    local_n = np.zeros((len(ids), 3))
    x_face, y_face, top = face < 2, (face >= 2) & (face < 4), face == 4
    local[x_face] = np.stack([sign[x_face] * hx[x_face], a[x_face] * hy[x_face], b[x_face] * hz[x_face]], axis=1)
    local[y_face] = np.stack([a[y_face] * hx[y_face], sign[y_face] * hy[y_face], b[y_face] * hz[y_face]], axis=1)
    local[top] = np.stack([a[top] * hx[top], b[top] * hy[top], hz[top]], axis=1)
    local_n[x_face, 0] = sign[x_face]
    local_n[y_face, 1] = sign[y_face]
    local_n[top, 2] = 1.0
    cos, sin = np.cos(objects.yaw[ids]), np.sin(objects.yaw[ids])

    def to_world(v: np.ndarray) -> np.ndarray:
        return np.stack([cos * v[:, 0] - sin * v[:, 1], sin * v[:, 0] + cos * v[:, 1], v[:, 2]], axis=1)

    points = to_world(local) + objects.centre[ids]
    return SurfaceSamples(points, to_world(local_n), (ids + 1).astype(np.int32))


def _sample_spheres(objects: SceneObjects, ids: np.ndarray, rng: np.random.Generator) -> SurfaceSamples:
    normals = rng.normal(size=(len(ids), 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    points = objects.centre[ids] + normals * objects.half_size[ids, :1]
    return SurfaceSamples(points, normals, (ids + 1).astype(np.int32))


def inside_box_footprints(objects: SceneObjects, xy: np.ndarray) -> np.ndarray:
    """Whether ground points (P, 2) lie under a box.

    Boxes are bucketed on a grid whose cells are at least a footprint wide, so a point only needs
    testing against the few boxes registered in its own cell.
    """
    inside = np.zeros(len(xy), dtype=bool)
    boxes = np.flatnonzero(objects.kind == BOX)
    if len(boxes) == 0 or len(xy) == 0:
        return inside
    radius = objects.radius_xy[boxes]
    cell = 2.0 * float(radius.max())
    lo = objects.centre[boxes, :2] - radius[:, None]
    origin = lo.min(axis=0)
    first = np.floor((lo - origin) / cell).astype(np.int64)
    # Each footprint box spans at most 2x2 cells; register the box in all four (extra ones are harmless).
    cells_x = np.concatenate([first[:, 0], first[:, 0] + 1, first[:, 0], first[:, 0] + 1])
    cells_y = np.concatenate([first[:, 1], first[:, 1], first[:, 1] + 1, first[:, 1] + 1])
    stride = int(cells_y.max()) + 2
    keys = cells_x * stride + cells_y
    members = np.tile(boxes, 4)
    order = np.argsort(keys, kind="stable")
    keys, members = keys[order], members[order]
    unique_keys, starts, sizes = np.unique(keys, return_index=True, return_counts=True)

    point_cell = np.floor((xy - origin) / cell).astype(np.int64)
    valid = (point_cell >= 0).all(axis=1) & (point_cell[:, 1] < stride)
    point_key = point_cell[:, 0] * stride + point_cell[:, 1]
    slot = np.searchsorted(unique_keys, point_key)
    slot = np.minimum(slot, len(unique_keys) - 1)
    valid &= unique_keys[slot] == point_key
    rows = np.flatnonzero(valid)
    slot = slot[rows]
    for j in range(int(sizes.max())):
        has = sizes[slot] > j
        candidate_rows = rows[has]
        ids = members[starts[slot[has]] + j]
        local = _to_local_xy(objects, ids, xy[candidate_rows])
        within = (np.abs(local[:, 0]) <= objects.half_size[ids, 0]) & (np.abs(local[:, 1]) <= objects.half_size[ids, 1])
        inside[candidate_rows[within]] = True
    return inside
