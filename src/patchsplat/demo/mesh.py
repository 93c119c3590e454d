"""The ground-truth mesh: the scene's analytic geometry as triangles.

Contract: the mesh is the ground square (two triangles at z = 0), each box as its 12 triangles
(exact), and each sphere as an icosphere whose vertices lie on the sphere (faces deviate inward by
at most :func:`sphere_chord_error` x radius). Components are concatenated, not merged.
"""

from __future__ import annotations

import numpy as np
import trimesh

from patchsplat.demo.layout import SPHERE, SceneLayout

# Finer spheres while the mesh stays small; coarser past this many spheres.
FINE_SPHERE_LIMIT = 500


def sphere_subdivisions(num_spheres: int) -> int:
    return 4 if num_spheres <= FINE_SPHERE_LIMIT else 3


def sphere_chord_error(subdivisions: int) -> float:
    """Largest inward deviation of the icosphere's faces from the sphere, relative to the radius."""
    unit = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return float(1.0 - np.linalg.norm(unit.triangles_center, axis=1).min())


def ground_truth_mesh(layout: SceneLayout) -> trimesh.Trimesh:
    g = layout.ground_half
    ground = trimesh.Trimesh(
        vertices=[[-g, -g, 0.0], [g, -g, 0.0], [g, g, 0.0], [-g, g, 0.0]],
        faces=[[0, 1, 2], [0, 2, 3]],
        process=False,
    )
    parts = [ground]
    objects = layout.objects
    subdivisions = sphere_subdivisions(int((objects.kind == SPHERE).sum()))
    unit_sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    for k in range(len(objects)):
        if objects.kind[k] == SPHERE:
            vertices = unit_sphere.vertices * objects.half_size[k, 0] + objects.centre[k]
            parts.append(trimesh.Trimesh(vertices=vertices, faces=unit_sphere.faces, process=False))
        else:
            transform = trimesh.transformations.rotation_matrix(float(objects.yaw[k]), [0.0, 0.0, 1.0])
            transform[:3, 3] = objects.centre[k]
            parts.append(trimesh.creation.box(extents=2.0 * objects.half_size[k], transform=transform))
    return trimesh.util.concatenate(parts)
