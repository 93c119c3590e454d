"""The zero level set of a fused TSDF as a coloured triangle mesh (scikit-image marching cubes).

Only cubes whose eight corners were all observed (weight > 0) produce triangles. Without that rule
the jump from the last fused voxel behind a surface (tsdf about -1) to an unobserved one (still at
its initial +1) would make a false surface one truncation distance behind every real one.
scikit-image's ``mask`` skips a cube when the mask is False at the cube's *upper* corner (measured
with scikit-image 0.26), so the mask passed is "all eight corners of the cube ending here observed";
faces are also checked afterwards against the same rule, which does not rely on that detail.

Contract::

    vertices, faces = extract_surface(tsdf, observed)
    # tsdf (nx, ny, nz) float32, observed (nx, ny, nz) bool; vertices (V, 3) float64 in fractional
    # voxel indices (i, j, k); faces (F, 3) int64, wound so that normals point out of the surface
    # (towards positive tsdf, i.e. the cameras). Empty arrays when there is no surface.

Colours are sampled separately at the vertices (``TsdfVolume.sample_colour``).
"""

from __future__ import annotations

import numpy as np
from skimage import measure

from patchsplat.mesh.ops import drop_unreferenced


def observed_cubes(observed: np.ndarray) -> np.ndarray:
    """(nx-1, ny-1, nz-1) bool: cube (i, j, k) (corners i..i+1, j..j+1, k..k+1) has all corners observed."""
    cubes = observed[:-1, :-1, :-1].copy()
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                if di or dj or dk:
                    cubes &= observed[di : di + observed.shape[0] - 1, dj : dj + observed.shape[1] - 1, dk : dk + observed.shape[2] - 1]
    return cubes


def extract_surface(tsdf: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at level 0 over the fully observed cubes; see the module docstring."""
    empty = (np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    if min(tsdf.shape) < 2:
        return empty
    cubes = observed_cubes(np.asarray(observed, dtype=bool))
    if not cubes.any():
        return empty
    mask = np.zeros(tsdf.shape, dtype=bool)
    mask[1:, 1:, 1:] = cubes  # scikit-image reads a cube's flag at its upper corner
    volume = np.ascontiguousarray(tsdf, dtype=np.float32)
    if not ((volume[mask] <= 0).any() and (volume[mask] >= 0).any()):
        return empty
    try:
        # The inside (behind the surface) is the low side; with "descent" scikit-image winds the faces so
        # their normals point to the high side, out of the surface (measured on a sphere with 0.26).
        vertices, faces, _, _ = measure.marching_cubes(volume, level=0.0, mask=mask, gradient_direction="descent",
                                                       allow_degenerate=False)
    except (RuntimeError, ValueError):  # "No surface found at the given iso value" in the masked region
        return empty
    vertices = vertices.astype(np.float64)
    faces = faces.astype(np.int64)
    # The guarantee that does not depend on how the mask is read: a face lies inside one cube
    # (marching cubes triangulates cube by cube); that cube must be fully observed.
    cube = np.floor(vertices[faces].mean(axis=1)).astype(np.int64)
    cube = np.clip(cube, 0, np.array(cubes.shape) - 1)
    faces = faces[cubes[cube[:, 0], cube[:, 1], cube[:, 2]]]
    return drop_unreferenced(vertices, faces)
