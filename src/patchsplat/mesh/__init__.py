"""Mesh extraction: per-patch TSDF fusion of rendered depth, marching cubes, crop to the core cell, join.

Public interface::

    from patchsplat.mesh import extract_scene_mesh
    summary = extract_scene_mesh(patches_dir, trained_dir, out_dir, config)   # writes mesh.ply/.glb/.json

and the pieces, for other callers and tests: :mod:`.defaults` (voxel size, depth truncation and memory
budget from the observed point depths), :class:`VoxelGrid` / :func:`lattice_box` (the grid),
:class:`TsdfVolume` (fusion), :func:`extract_surface` (marching cubes), :func:`crop_to_cell`,
:func:`weld_seams`, :func:`remove_small_components` (mesh arrays).
"""

from patchsplat.mesh.extract import extract_scene_mesh, fusion_device
from patchsplat.mesh.grid import VoxelGrid, lattice_box, patch_grid
from patchsplat.mesh.ops import crop_to_cell, remove_small_components, weld_seams
from patchsplat.mesh.surface import extract_surface
from patchsplat.mesh.tsdf import TsdfVolume

__all__ = [
    "extract_scene_mesh", "fusion_device", "VoxelGrid", "lattice_box", "patch_grid",
    "TsdfVolume", "extract_surface", "crop_to_cell", "weld_seams", "remove_small_components",
]
