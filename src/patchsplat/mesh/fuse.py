"""One patch's surface: render its training views from its trained splats, fuse, march, crop to its core cell.

Contract::

    inputs = load_patch(patch_dir, patch, splats_path)      # cameras, observations, cell, frames, points, splats
    settings = patch_settings(inputs, config)               # resolution, voxel, truncations, grid + why
    piece = mesh_patch(inputs, settings, config, device)    # PatchPiece: world-frame mesh + record

Views fused are the patch's training views: ``patch.json``'s ``image_names`` less its
``heldout_image_names`` (those are kept for evaluation), rendered at the resolution the patch was
trained at (``resolution_factor`` in the metrics.json beside its splats) unless
``mesh.resolution_factor`` says otherwise. Depth is the rasterizer's expected depth ("RGB+ED"); a
pixel is fused only where its accumulated opacity reaches ``min_alpha`` (elsewhere the expected depth
is an average of a few faint splats) and its depth is within its view's ``depth_trunc``. Unset voxel
size and depth truncation come from the depths of the points the views observe (:mod:`.defaults`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import MeshConfig
from patchsplat.errors import InputError
from patchsplat.mesh import defaults
from patchsplat.mesh.grid import VoxelGrid, describe_grid, mesh_bytes, patch_grid
from patchsplat.mesh.ops import crop_to_cell, drop_unreferenced
from patchsplat.mesh.surface import extract_surface
from patchsplat.mesh.tsdf import TsdfVolume
from patchsplat.prepare import CanonicalFrame
from patchsplat.scene_views import Camera, SceneCameras, describe_resolution, render_world
from patchsplat.splat_io import read_splats_ply
from patchsplat.split import GroundFrame, PatchDescription
from patchsplat.split.partition import Cell
from patchsplat.train.records import METRICS_FILE, TrainedMetrics

# The grid reaches this many voxels (plus the truncation band) past the core cell, so the surface
# just inside the cell's border is complete before it is cropped.
BORDER_VOXELS = 2


@dataclass(frozen=True)
class PatchInputs:
    patch_id: str
    patch_dir: Path
    cell: Cell                      # core cell, aligned ground frame
    ground: GroundFrame             # the split's gravity-aligned frame the cell is drawn in
    cameras: list[Camera]           # the views to fuse (training views only)
    held_out: int                   # views of the patch left out because they are held out
    frame: CanonicalFrame           # the patch's canonical frame: scene scale = 1 / frame.scale
    points_world: np.ndarray        # (N, 3) the patch's sparse points
    splats: dict[str, torch.Tensor]
    observed: list[np.ndarray] = field(default_factory=list)  # per camera: indices of the points it observes
    trained_factor: int | None = None   # the resolution factor the patch was trained at (None: unknown)
    metrics_path: Path | None = None    # where trained_factor was read

    @property
    def scene_scale(self) -> float:
        return 1.0 / self.frame.scale


@dataclass(frozen=True)
class PatchSettings:
    """Everything decided before fusing a patch, and why (``record``, copied into mesh.json)."""

    voxel_size: float
    sdf_trunc: float
    depth_trunc: float                  # the largest view's: how far from the cameras the grid reaches
    view_depth_trunc: np.ndarray        # (views,) per training view, in the order of PatchInputs.cameras
    resolution_factor: int
    grid: VoxelGrid | None              # None: nothing to mesh (no observed point in the core cell)
    record: dict = field(default_factory=dict)


@dataclass
class PatchPiece:
    """A patch's cropped mesh in the world frame and what happened on the way (the mesh.json record)."""

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray
    ground: GroundFrame             # the frame of the lattice it was fused on (voxel size: record)
    record: dict = field(default_factory=dict)


def load_patch(patch_dir: Path, patch: PatchDescription, splats_path: Path) -> PatchInputs:
    """Read what meshing the patch ``patch`` (described in ``patch_dir``) needs; InputError naming the file
    when something is missing."""
    if not splats_path.exists():
        raise InputError(splats_path, "trained splats not found: train this patch first", kind="missing_file")
    model_dir = patch_dir / "sparse" / "0"
    arrays = read_model_arrays(model_dir)
    scene_cameras = SceneCameras(model_dir, patch.images_folder(patch_dir), arrays)
    held_out = set(patch.heldout_image_names)
    wanted = patch.training_image_names()
    cameras = [camera for camera in scene_cameras.cameras if camera.name in wanted]
    index_of = {name: index for index, name in enumerate(arrays.image_names)}
    observed = [arrays.obs_point[arrays.observations_of(np.array([index_of[camera.name]]))] for camera in cameras]
    metrics_path = splats_path.parent / METRICS_FILE
    return PatchInputs(
        patch_id=patch.id,
        patch_dir=patch_dir,
        cell=patch.core_cell,
        ground=patch.ground,
        cameras=cameras,
        held_out=sum(1 for camera in scene_cameras.cameras if camera.name in held_out),
        frame=scene_cameras.frame,
        points_world=arrays.xyz,
        splats=read_splats_ply(splats_path),
        observed=observed,
        trained_factor=TrainedMetrics.load(metrics_path).resolution_factor if metrics_path.is_file() else None,
        metrics_path=metrics_path,
    )


def fusion_factor(inputs: PatchInputs, config: MeshConfig) -> tuple[int, str]:
    """(resolution factor, why): mesh.resolution_factor, else the patch's training factor, else 1."""
    if config.resolution_factor is not None:
        return config.resolution_factor, "mesh.resolution_factor"
    if inputs.trained_factor is not None:
        return inputs.trained_factor, f"the resolution the patch was trained at ({inputs.metrics_path})"
    return 1, f"full resolution: no training metrics at {inputs.metrics_path}"


def _depth_truncs(inputs: PatchInputs, config: MeshConfig, depths: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """(per view depth truncation, record with the rule) from mesh.depth_trunc, the observed depths, or,
    for a patch whose training views observe no point, 2 x its scene scale (the camera-spread rule)."""
    views = len(inputs.cameras)
    if config.depth_trunc is not None:
        return np.full(views, float(config.depth_trunc)), {"rule": "mesh.depth_trunc"}
    chosen = defaults.depth_truncations(depths)
    if chosen is None:
        value = 2.0 * inputs.scene_scale
        return np.full(views, value), {"rule": "2 x the patch's scene scale (its training views observe no point)"}
    return chosen


def _voxel(inputs: PatchInputs, config: MeshConfig, depths: list[np.ndarray], factor: int) -> tuple[float, str]:
    """(voxel size, why) before the memory budget."""
    if config.voxel_size is not None:
        return float(config.voxel_size), "mesh.voxel_size"
    if config.voxels_per_scene is not None:
        return inputs.scene_scale / config.voxels_per_scene, \
            f"mesh.voxels_per_scene: the patch's scene scale {inputs.scene_scale:.4g} / {config.voxels_per_scene}"
    focal = np.array([float(np.mean(np.diag(camera.scaled(factor)[0])[:2])) for camera in inputs.cameras])
    chosen = defaults.surface_voxel(depths, focal, config.voxel_pixels)
    if chosen is None:
        return inputs.scene_scale / 256, f"the patch's scene scale {inputs.scene_scale:.4g} / 256 (its training views observe no point)"
    return chosen


def _grid_points(inputs: PatchInputs, depths: list[np.ndarray], seen: list[np.ndarray],
                 truncs: np.ndarray) -> tuple[np.ndarray, str]:
    """(world positions, what they are) of the points the grid is fitted to: those some training view
    observes within its depth truncation, or all the patch's points when the views observe none."""
    if not any(len(index) for index in seen):
        return np.asarray(inputs.points_world, np.float64), "robust box of all the patch's points (its training views observe none)"
    chosen = np.unique(np.concatenate([index[depth <= trunc] for depth, index, trunc in zip(depths, seen, truncs)]))
    return (np.asarray(inputs.points_world, np.float64)[chosen],
            f"robust box of the {len(chosen):,} points the training views observe within their depth_trunc, "
            "cut to the core cell and to the cameras' reach")


def _fit_grid(inputs: PatchInputs, config: MeshConfig, voxel: float, points_world: np.ndarray,
              reach: float) -> defaults.Fitted:
    """The patch's grid at ``voxel``, coarsened to fit mesh.memory_budget_gb unless the voxel was given."""
    points_aligned = inputs.ground.to_aligned(points_world)
    cameras_aligned = inputs.ground.to_aligned(np.array([camera.centre for camera in inputs.cameras], np.float64))

    def make_grid(size: float) -> VoxelGrid | None:
        margin = config.sdf_trunc_voxels * size + BORDER_VOXELS * size
        return patch_grid(points_aligned, inputs.cell, size, margin, inputs.ground.world_to_aligned, cameras_aligned, reach)

    budget = config.memory_budget_gb * 2**30
    fitted = defaults.fit_to_budget(make_grid, voxel, budget, coarsen=config.voxel_size is None)
    if fitted.grid is not None and mesh_bytes(fitted.grid) > budget:
        what = "mesh.voxel_size" if config.voxel_size is not None else "mesh.sdf_trunc_voxels"
        raise InputError(what, f"patch {inputs.patch_id}: a TSDF grid of {describe_grid(fitted.grid)} is over "
                         f"mesh.memory_budget_gb ({config.memory_budget_gb:g}): raise mesh.memory_budget_gb, or {what}"
                         + (" (or unset it: an automatic voxel is coarsened to fit)" if config.voxel_size is not None else ""),
                         kind="bad_params")
    return fitted


def patch_settings(inputs: PatchInputs, config: MeshConfig) -> PatchSettings:
    """The fusion resolution, voxel size, truncations and grid of a patch: the configured ones, or chosen
    from the depths of the points its training views observe (module :mod:`.defaults`)."""
    factor, resolution_why = fusion_factor(inputs, config)
    observed = inputs.observed or [np.zeros(0, np.int64)] * len(inputs.cameras)
    measured = [defaults.observed_depths(inputs.points_world, camera.rotation, camera.translation, seen)
                for camera, seen in zip(inputs.cameras, observed)]
    depths, seen = [depth for depth, _ in measured], [index for _, index in measured]
    truncs, trunc_record = _depth_truncs(inputs, config, depths)
    voxel, voxel_why = _voxel(inputs, config, depths, factor)
    points, grid_why = _grid_points(inputs, depths, seen, truncs)
    reach = float(truncs.max()) if len(truncs) else 2.0 * inputs.scene_scale
    fitted = _fit_grid(inputs, config, voxel, points, reach)
    record = {
        "resolution_factor": factor,
        "fusion_resolution": describe_resolution(inputs.cameras, factor) if inputs.cameras else None,
        "depth_trunc_views": {key: value for key, value in trunc_record.items() if key != "rule"} or None,
        "coarsened": None,
        "why": {"resolution": resolution_why, "depth_trunc": trunc_record["rule"], "voxel_size": voxel_why,
                "grid": grid_why, "memory": _memory_note(fitted, config)},
    }
    if fitted.coarsened_from is not None:
        record["coarsened"] = {"voxel_asked": fitted.coarsened_from, "grid_gb_asked": fitted.bytes_asked / 2**30,
                               "budget_gb": config.memory_budget_gb}
        record["why"]["voxel_size"] += (f"; coarsened from {fitted.coarsened_from:.4g} to {fitted.voxel_size:.4g}: its grid "
                                        f"needed {fitted.bytes_asked / 2**30:.2f} GB to mesh, over mesh.memory_budget_gb "
                                        f"{config.memory_budget_gb:g}")
    return PatchSettings(float(fitted.voxel_size), float(config.sdf_trunc_voxels * fitted.voxel_size), reach,
                         truncs, factor, fitted.grid, record)


def _memory_note(fitted: defaults.Fitted, config: MeshConfig) -> str:
    if fitted.grid is None:
        return "no grid: no observed point in the core cell"
    return f"{describe_grid(fitted.grid)}, within mesh.memory_budget_gb {config.memory_budget_gb:g}"


def render_for_fusion(splats: dict[str, torch.Tensor], camera: Camera, frame: CanonicalFrame, config: MeshConfig,
                      depth_trunc: float, resolution_factor: int,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth HxW with 0 = not fused, colour HxWx3, K of the rendered size) of one view."""
    colour, depth, alpha = render_world(splats, camera, frame, resolution_factor=resolution_factor,
                                        render_mode="RGB+ED", device=device)
    fused = (alpha >= config.min_alpha) & np.isfinite(depth) & (depth > 0) & (depth <= depth_trunc)
    K, _, _ = camera.scaled(resolution_factor)  # as render_world scales it
    return np.where(fused, depth, 0.0).astype(np.float32), colour, K


def fuse_views(inputs: PatchInputs, grid: VoxelGrid, settings: PatchSettings, config: MeshConfig,
               device: torch.device, on_view: Callable[[], None] | None = None) -> tuple[TsdfVolume, dict]:
    """Render and integrate every training view; returns the volume and timings/counts."""
    volume = TsdfVolume(grid, settings.sdf_trunc, device)
    render_seconds = fuse_seconds = 0.0
    pixels_fused = 0
    for camera, depth_trunc in zip(inputs.cameras, settings.view_depth_trunc):
        started = time.perf_counter()
        depth, colour, K = render_for_fusion(inputs.splats, camera, inputs.frame, config, float(depth_trunc),
                                             settings.resolution_factor, device)
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
        **settings.record,
    }
    empty = PatchPiece(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32),
                       inputs.ground, record)
    points_aligned = inputs.ground.to_aligned(inputs.points_world)
    cameras_aligned = inputs.ground.to_aligned(np.array([camera.centre for camera in inputs.cameras], np.float64))
    grid = settings.grid
    if grid is None:
        record.update(skipped="no sparse point observed within depth_trunc in the core cell",
                      vertices_before_crop=0, faces_before_crop=0, vertices=0, faces=0, seconds={},
                      **_point_distance(points_aligned, cameras_aligned))
        return empty
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
    return PatchPiece(grid.aligned_to_world(kept_vertices), kept_faces, kept_colours, inputs.ground, record)
