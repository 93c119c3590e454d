"""One patch's surface: render its training views from its trained splats, fuse, march, crop to its core cell.

Contract::

    inputs = load_patch(patch_dir, splats_path)             # cameras, cell, frame, points, splats
    settings = patch_settings(inputs.scene_scale, config)   # voxel size, truncations
    piece = mesh_patch(inputs, settings, config, device)    # PatchPiece: world-frame mesh + record

Views fused are the patch's training views: ``patch.json``'s ``image_names`` less its
``heldout_image_names`` (those are kept for evaluation). Depth is the rasterizer's expected depth
("RGB+ED"); a pixel is fused only where its accumulated opacity reaches ``min_alpha`` (elsewhere the
expected depth is an average of a few faint splats) and its depth is within ``depth_trunc``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from patchsplat.colmap_arrays import read_model_arrays
from patchsplat.config import MeshConfig
from patchsplat.errors import InputError
from patchsplat.mesh.grid import VoxelGrid, describe_grid, patch_grid, voxel_bytes
from patchsplat.mesh.ops import crop_to_cell, drop_unreferenced
from patchsplat.mesh.surface import extract_surface
from patchsplat.mesh.tsdf import TsdfVolume
from patchsplat.prepare import CanonicalFrame
from patchsplat.scene_views import Camera, SceneCameras, render_world
from patchsplat.splat_io import read_splats_ply
from patchsplat.split import PATCH_FILE, patch_images_dir
from patchsplat.split.partition import Cell

# A dense grid above this many voxels (3 GB of TSDF) is refused: the voxel is too small for the patch.
MAX_VOXELS = 1 << 27
# The grid reaches this many voxels (plus the truncation band) past the core cell, so the surface
# just inside the cell's border is complete before it is cropped.
BORDER_VOXELS = 2


@dataclass(frozen=True)
class PatchInputs:
    patch_id: str
    patch_dir: Path
    cell: Cell                      # core cell, aligned ground frame
    world_to_aligned: np.ndarray    # (3, 3)
    cameras: list[Camera]           # the views to fuse (training views only)
    held_out: int                   # views of the patch left out because they are held out
    frame: CanonicalFrame           # the patch's canonical frame: scene scale = 1 / frame.scale
    points_world: np.ndarray        # (N, 3) the patch's sparse points
    splats: dict[str, torch.Tensor]

    @property
    def scene_scale(self) -> float:
        return 1.0 / self.frame.scale


@dataclass(frozen=True)
class PatchSettings:
    voxel_size: float
    sdf_trunc: float
    depth_trunc: float


@dataclass
class PatchPiece:
    """A patch's cropped mesh in the world frame and what happened on the way (the mesh.json record)."""

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray
    world_to_aligned: np.ndarray    # the frame of the lattice it was fused on (voxel size: record)
    record: dict = field(default_factory=dict)


def load_patch(patch_dir: Path, splats_path: Path) -> PatchInputs:
    """Read what meshing a patch needs; InputError naming the file when something is missing."""
    patch_file = patch_dir / PATCH_FILE
    if not patch_file.exists():
        raise InputError(patch_dir, "not a patch folder (no patch.json): run the split first", kind="missing_file")
    if not splats_path.exists():
        raise InputError(splats_path, "trained splats not found: train this patch first", kind="missing_file")
    patch = json.loads(patch_file.read_text(encoding="utf-8"))
    model_dir = patch_dir / "sparse" / "0"
    arrays = read_model_arrays(model_dir)
    scene_cameras = SceneCameras(model_dir, patch_images_dir(patch_dir), arrays)
    held_out = set(patch.get("heldout_image_names", []))
    wanted = set(patch.get("image_names", scene_cameras.by_name)) - held_out
    cameras = [camera for camera in scene_cameras.cameras if camera.name in wanted]
    return PatchInputs(
        patch_id=str(patch.get("id", patch_dir.name)),
        patch_dir=patch_dir,
        cell=Cell.from_list(patch["core_cell"]),
        world_to_aligned=np.asarray(patch["world_to_aligned"], dtype=np.float64),
        cameras=cameras,
        held_out=sum(1 for camera in scene_cameras.cameras if camera.name in held_out),
        frame=scene_cameras.frame,
        points_world=arrays.xyz,
        splats=read_splats_ply(splats_path),
    )


def patch_settings(scene_scale: float, config: MeshConfig) -> PatchSettings:
    """The voxel size and truncations of a patch: the configured ones, or the defaults from its scene scale."""
    voxel = config.voxel_size if config.voxel_size is not None else scene_scale / config.voxels_per_scene
    depth_trunc = config.depth_trunc if config.depth_trunc is not None else 2.0 * scene_scale
    return PatchSettings(float(voxel), float(config.sdf_trunc_voxels * voxel), float(depth_trunc))


def render_for_fusion(splats: dict[str, torch.Tensor], camera: Camera, frame: CanonicalFrame, config: MeshConfig,
                      depth_trunc: float, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth HxW with 0 = not fused, colour HxWx3, K of the rendered size) of one view."""
    colour, depth, alpha = render_world(splats, camera, frame, resolution_factor=config.resolution_factor,
                                        render_mode="RGB+ED", device=device)
    fused = (alpha >= config.min_alpha) & np.isfinite(depth) & (depth > 0) & (depth <= depth_trunc)
    height, width = depth.shape
    K = camera.K.copy()
    K[:2] *= np.array([[width / camera.width], [height / camera.height]])  # as render_world scales it
    return np.where(fused, depth, 0.0).astype(np.float32), colour, K


def fuse_views(inputs: PatchInputs, grid: VoxelGrid, settings: PatchSettings, config: MeshConfig,
               device: torch.device, on_view: Callable[[], None] | None = None) -> tuple[TsdfVolume, dict]:
    """Render and integrate every training view; returns the volume and timings/counts."""
    volume = TsdfVolume(grid, settings.sdf_trunc, device)
    render_seconds = fuse_seconds = 0.0
    pixels_fused = 0
    for camera in inputs.cameras:
        started = time.perf_counter()
        depth, colour, K = render_for_fusion(inputs.splats, camera, inputs.frame, config, settings.depth_trunc, device)
        rendered = time.perf_counter()
        volume.integrate(depth, colour, K, camera.rotation, camera.translation)
        if volume.device.type == "cuda":
            torch.cuda.synchronize(volume.device)
        fuse_seconds += time.perf_counter() - rendered
        render_seconds += rendered - started
        pixels_fused += int((depth > 0).sum())
        if on_view is not None:
            on_view()
    return volume, {"render": render_seconds, "fuse": fuse_seconds, "pixels_fused": pixels_fused}


def _point_distance(points_aligned: np.ndarray, cameras_aligned: np.ndarray) -> dict:
    """``points_median_distance``: how far the sparse points lie from their nearest camera, recorded for
    a patch that gave no surface (the mesh stage's hint when depth_trunc falls short of it)."""
    points_aligned = points_aligned[np.all(np.isfinite(points_aligned), axis=1)]
    if len(points_aligned) == 0 or len(cameras_aligned) == 0:
        return {}
    from scipy.spatial import cKDTree

    return {"points_median_distance": float(np.median(cKDTree(cameras_aligned).query(points_aligned)[0]))}


def mesh_patch(inputs: PatchInputs, settings: PatchSettings, config: MeshConfig, device: torch.device,
               on_view: Callable[[], None] | None = None) -> PatchPiece:
    """Fuse, march and crop one patch (see the module docstring). An empty piece when the patch
    has no points in its core cell or no surface was found there."""
    record: dict = {
        "id": inputs.patch_id,
        "views_fused": len(inputs.cameras),
        "views_held_out": inputs.held_out,
        "scene_scale": inputs.scene_scale,
        "voxel_size": settings.voxel_size,
        "sdf_trunc": settings.sdf_trunc,
        "depth_trunc": settings.depth_trunc,
    }
    empty = PatchPiece(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32),
                       inputs.world_to_aligned, record)
    points_aligned = np.asarray(inputs.points_world, np.float64) @ inputs.world_to_aligned.T
    margin = settings.sdf_trunc + BORDER_VOXELS * settings.voxel_size
    cameras_aligned = np.array([camera.centre for camera in inputs.cameras], np.float64).reshape(-1, 3) @ inputs.world_to_aligned.T
    grid = patch_grid(points_aligned, inputs.cell, settings.voxel_size, margin, inputs.world_to_aligned,
                      cameras_aligned, settings.depth_trunc)
    if grid is None:
        record.update(skipped="no sparse points in the core cell within depth_trunc of its cameras",
                      vertices_before_crop=0, faces_before_crop=0, vertices=0, faces=0, seconds={},
                      **_point_distance(points_aligned, cameras_aligned))
        return empty
    if grid.num_voxels > MAX_VOXELS:
        raise InputError(
            "mesh.voxel_size",
            f"patch {inputs.patch_id}: a TSDF grid of {describe_grid(grid)} exceeds {MAX_VOXELS} voxels "
            f"({voxel_bytes(MAX_VOXELS) / 2**30:.1f} GB); raise mesh.voxel_size or lower mesh.voxels_per_scene",
            kind="bad_params",
        )
    record.update(grid_shape=list(grid.shape), voxels=grid.num_voxels)
    volume, fusion = fuse_views(inputs, grid, settings, config, device, on_view)
    record.update(allocated_voxels=volume.num_allocated_voxels, pixels_fused=fusion["pixels_fused"])

    started = time.perf_counter()
    vertices_index, faces = extract_surface(volume.tsdf_grid(), volume.observed_grid())
    marched = time.perf_counter()
    inside = crop_to_cell(grid.index_to_aligned(vertices_index), faces, inputs.cell)
    kept_index, kept_faces = drop_unreferenced(vertices_index, faces[inside])
    kept_colours = volume.sample_colour(kept_index)
    del volume
    kept_vertices = grid.index_to_aligned(kept_index)
    cropped = time.perf_counter()
    record.update(
        vertices_before_crop=int(len(vertices_index)), faces_before_crop=int(len(faces)),
        vertices=int(len(kept_vertices)), faces=int(len(kept_faces)),
        seconds={"render": fusion["render"], "fuse": fusion["fuse"], "marching_cubes": marched - started,
                 "crop_and_colour": cropped - marched},
    )
    if len(kept_faces) == 0:
        record.update(_point_distance(points_aligned, cameras_aligned))
    return PatchPiece(grid.aligned_to_world(kept_vertices), kept_faces, kept_colours, inputs.world_to_aligned, record)
