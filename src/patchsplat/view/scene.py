"""What the viewer shows, read from a workspace as plain arrays (no viser here: :mod:`.server` draws them).

    ViewerSplats   the Gaussians as viser takes them: centres, 3 x 3 covariances, base colours, opacities
    CameraPoses    the cameras of the model the splats were trained from, and which of them are held out
    CellOutlines   one patch's core and expanded cells, as line segments on the ground plane
    ViewScene      all of it, plus the mesh (when the mesh stage ran) and a starting viewpoint

The splats are the merged scene (``data/merged/splats.ply``) or one trained patch's; the cameras are the
scene model's (merged) or the patch model's, held out as the split decided (``patch.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from patchsplat.colmap_io.arrays import parse_cameras, quaternion_to_matrix, read_model_arrays
from patchsplat.colmap_io.layout import CameraRecord
from patchsplat.errors import InputError
from patchsplat.gaussians import SH_C0
from patchsplat.split.layout import PatchDescription, SplitLayout
from patchsplat.split.partition import Cell
from patchsplat.workspace import Workspace

# The cells are drawn over the scene's ground: splat centres below this percentile of height are
# floaters and outliers, not the ground.
_GROUND_PERCENTILE = 2.0
# Percentiles of the splats' ground positions the first view frames (with every camera).
_SPLATS_FRAMED = (2.0, 98.0)
# Cells with an infinite side (the split's outer cells) are cut at the scene's ground extent grown by this.
_CELL_MARGIN = 0.1


@dataclass(frozen=True)
class ViewerSplats:
    """Gaussians as viser's ``add_gaussian_splats`` takes them (view-independent colour: the SH degree-0 term)."""

    centers: np.ndarray       # (N, 3) float32, world frame
    covariances: np.ndarray   # (N, 3, 3) float32: R diag(s^2) R^T
    rgbs: np.ndarray          # (N, 3) float32 in [0, 1]
    opacities: np.ndarray     # (N, 1) float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.centers)


@dataclass(frozen=True)
class CameraPoses:
    """Registered cameras in the world frame, in OpenCV's axes (x right, y down, z forward), as viser draws them."""

    names: tuple[str, ...]
    positions: np.ndarray        # (M, 3) camera centres
    world_from_camera: np.ndarray  # (M, 3, 3) rotations
    vertical_fov: np.ndarray     # (M,) radians
    aspect: np.ndarray           # (M,) width / height
    heldout: np.ndarray          # (M,) bool: held out for evaluation, never trained on


@dataclass(frozen=True)
class CellOutlines:
    """One patch's cells on the ground plane, each as 4 line segments (4, 2, 3) in the world frame."""

    patch_id: str
    core: np.ndarray
    expanded: np.ndarray


@dataclass(frozen=True)
class ViewScene:
    """Everything the viewer shows, and where it came from."""

    title: str                    # what is shown: "merged splats" or "patch p0"
    splats_path: Path
    gaussians: dict[str, torch.Tensor]  # as read (raw fields of patchsplat.gaussians), for patchsplat's renderer
    splats: ViewerSplats
    cameras: CameraPoses
    cells: tuple[CellOutlines, ...]
    up: np.ndarray                # (3,) the ground frame's up axis in the world frame
    look_at: np.ndarray           # (3,) where the viewer looks first: the middle of the splats
    start_position: np.ndarray    # (3,) where it looks from
    extent: float                 # the scene's size on the ground (sizes frusta and lines)
    mesh_path: Path | None        # the mesh stage's mesh.ply, None when it has not run
    model_dir: Path               # the COLMAP model the cameras come from
    images_dir: Path              # its photos


def viewer_splats(splats: dict[str, torch.Tensor]) -> ViewerSplats:
    """The raw Gaussians of :func:`patchsplat.splat_io.read_splats_ply` as viser's arrays."""
    rotations = quaternion_to_matrix(splats["quats"].double().numpy())
    variances = np.exp(2.0 * splats["scales"].double().numpy())
    covariances = np.einsum("nij,nj,nkj->nik", rotations, variances, rotations)
    rgbs = np.clip(0.5 + SH_C0 * splats["sh0"][:, 0, :].double().numpy(), 0.0, 1.0)
    opacities = torch.sigmoid(splats["opacities"].double()).numpy().reshape(-1, 1)
    return ViewerSplats(splats["means"].numpy().astype(np.float32), covariances.astype(np.float32),
                        rgbs.astype(np.float32), opacities.astype(np.float32))


def camera_poses(model_dir: Path, heldout_names: set[str]) -> CameraPoses:
    """The cameras of the COLMAP model in ``model_dir``; those named in ``heldout_names`` are marked held out."""
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()
    arrays = read_model_arrays(model_dir)
    records = parse_cameras(arrays.cameras_bin)
    camera_from_world = quaternion_to_matrix(arrays.quaternions_wxyz)
    world_from_camera = np.transpose(camera_from_world, (0, 2, 1))
    positions = -np.einsum("nij,nj->ni", world_from_camera, arrays.translations)
    fov_and_aspect = {camera_id: _fov_and_aspect(pycolmap, record) for camera_id, record in records.items()}
    fov, aspect = np.array([fov_and_aspect[int(camera_id)] for camera_id in arrays.camera_ids]).reshape(-1, 2).T
    heldout = np.array([name in heldout_names for name in arrays.image_names], dtype=bool)
    return CameraPoses(arrays.image_names, positions, world_from_camera, fov, aspect, heldout)


def _fov_and_aspect(pycolmap, record: CameraRecord) -> tuple[float, float]:
    """A camera's vertical field of view (radians) and width / height, whatever its model: its last focal
    length is the vertical one (the only one of SIMPLE_* models)."""
    camera = pycolmap.Camera(model=record.model, width=record.width, height=record.height, params=list(record.params))
    focal_y = record.params[camera.focal_length_idxs()[-1]]
    return 2.0 * float(np.arctan2(record.height / 2.0, focal_y)), record.width / record.height


def cell_outline(cell: Cell, world_to_aligned: np.ndarray, ground_height: float) -> np.ndarray:
    """The (4, 2, 3) world-frame segments of ``cell``'s rectangle at ``ground_height`` in the aligned frame."""
    corners = np.array([[cell.x_min, cell.y_min], [cell.x_max, cell.y_min], [cell.x_max, cell.y_max], [cell.x_min, cell.y_max]])
    aligned = np.column_stack([corners, np.full(4, ground_height)])
    world = aligned @ world_to_aligned  # aligned = world_to_aligned @ world, and the inverse of a rotation is its transpose
    return np.stack([world, np.roll(world, -1, axis=0)], axis=1)


def patch_outlines(layout: SplitLayout, ground_bounds: Cell, ground_height: float) -> tuple[CellOutlines, ...]:
    """Every patch's core and expanded cell, cut at ``ground_bounds`` (the outer cells reach to infinity)."""
    rotation = layout.ground.world_to_aligned
    return tuple(
        CellOutlines(patch.id, cell_outline(patch.core_cell.clipped(ground_bounds), rotation, ground_height),
                     cell_outline(patch.expanded_cell.clipped(ground_bounds), rotation, ground_height))
        for patch in layout.patches
    )


def _ground_bounds(splats_ground: np.ndarray, cameras_ground: np.ndarray) -> Cell:
    """The ground the viewer frames: the cameras and the bulk of the splats. A few far splats (a
    forward-facing capture's distant background, floaters at a trained scene's edge) lie thousands of
    units out on a real capture and would otherwise push the first view so far that nothing shows."""
    low, high = np.percentile(splats_ground, _SPLATS_FRAMED, axis=0)
    if len(cameras_ground):
        low, high = np.minimum(low, cameras_ground.min(axis=0)), np.maximum(high, cameras_ground.max(axis=0))
    margin = _CELL_MARGIN * max(float(np.max(high - low)), 1e-6)
    return Cell(low[0] - margin, high[0] + margin, low[1] - margin, high[1] + margin)


def first_view(cameras: CameraPoses, splats_middle: np.ndarray, overview_offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(look_at, start_position) of the viewer's first view.

    A capture whose cameras look at one subject (an object orbit, a forward-facing scene: the split's
    convergence test) is first seen through its most central camera, the view a photo was taken from.
    From outside such a capture, even from twice a camera's distance, the first thing in sight is its
    background, trained as large blurred splats (cup77). Any other capture is seen from above one side
    of the splats' middle (``overview_offset`` from it), as a person at the scene's edge sees it.
    """
    from patchsplat.split.auto import optical_axes_converge

    camera_from_world = np.transpose(cameras.world_from_camera, (0, 2, 1))
    if len(cameras.positions) >= 2 and optical_axes_converge(camera_from_world, cameras.positions)[0]:
        central = int(np.argmin(np.linalg.norm(cameras.positions - np.median(cameras.positions, axis=0), axis=1)))
        position, forward = cameras.positions[central], cameras.world_from_camera[central][:, 2]
        depth = max(float(np.dot(splats_middle - position, forward)), 1e-6)
        look_at = position + depth * forward
        return look_at, position.astype(np.float64)
    return splats_middle, splats_middle + overview_offset


def _splats_file(workspace: Workspace, patch: PatchDescription | None) -> Path:
    if patch is None:
        path = workspace.merged_splats
        hint = "run the pipeline first (patchsplat repro), or show one trained patch with --patch"
    else:
        path = workspace.patch(patch.id).trained_dir / "splats.ply"
        hint = f"train patch {patch.id} first (patchsplat repro)"
    if not path.is_file():
        raise InputError(path, f"not found: {hint}", kind="missing_file")
    return path


def _model_and_images(workspace: Workspace, patch: PatchDescription | None) -> tuple[Path, Path]:
    """The COLMAP model whose cameras the splats were trained from (the scene's, or the patch's) and its photos."""
    from patchsplat.scene_layout import locate_scene
    from patchsplat.scene_source import resolve_scene_dir

    if patch is None:
        scene = locate_scene(resolve_scene_dir(workspace.scene_dir))
        return scene.model_dir, scene.images_dir
    patch_dir = workspace.patch(patch.id).patch_dir
    return patch_dir / "sparse" / "0", patch.images_folder(patch_dir)  # a patch model, as the split writes it


def _chosen_patch(layout: SplitLayout, workspace: Workspace, patch_id: str | None) -> PatchDescription | None:
    if patch_id is None:
        return None
    workspace.patch(patch_id)  # an InputError for what is no patch id at all
    for patch in layout.patches:
        if patch.id == patch_id:
            return patch
    raise InputError(workspace.patches_dir / patch_id, f"no such patch (the split made {', '.join(layout.ids)})", kind="missing_file")


def load_view_scene(workspace: Workspace, patch_id: str | None = None) -> ViewScene:
    """What ``patchsplat view`` shows of ``workspace``: the merged splats, or patch ``patch_id``'s.

    InputError (one line naming the file) for a folder that is no workspace, a missing split, scene model or
    splats file, an unknown patch, or a damaged file.
    """
    from patchsplat.splat_io import read_splats_ply

    if not workspace.root.is_dir():
        raise InputError(workspace.root, "workspace folder not found", kind="missing_folder")
    layout = SplitLayout.load(workspace.patches_dir)
    patch = _chosen_patch(layout, workspace, patch_id)
    splats_path = _splats_file(workspace, patch)
    gaussians = read_splats_ply(splats_path)
    splats = viewer_splats(gaussians)
    if len(splats) == 0:
        raise InputError(splats_path, "holds no Gaussians", kind="corrupt_file")
    heldout = set(patch.heldout_image_names) if patch else {name for each in layout.patches for name in each.heldout_image_names}
    model_dir, images_dir = _model_and_images(workspace, patch)
    cameras = camera_poses(model_dir, heldout)

    ground = layout.ground
    aligned = ground.to_aligned(splats.centers)
    ground_height = float(np.percentile(aligned[:, 2], _GROUND_PERCENTILE))
    bounds = _ground_bounds(aligned[:, :2], ground.to_ground(cameras.positions))
    extent = max(bounds.x_max - bounds.x_min, bounds.y_max - bounds.y_min)
    up = ground.world_to_aligned[2]
    look_at, start_position = first_view(cameras, np.median(splats.centers, axis=0).astype(np.float64),
                                         extent * (0.6 * up - 0.8 * ground.world_to_aligned[1]))
    mesh_path = workspace.mesh_ply if workspace.mesh_ply.is_file() else None
    return ViewScene(
        title=f"patch {patch.id}" if patch else "merged splats", splats_path=splats_path, gaussians=gaussians,
        splats=splats, cameras=cameras, cells=patch_outlines(layout, bounds, ground_height), up=up, look_at=look_at,
        start_position=start_position, extent=float(extent), mesh_path=mesh_path, model_dir=model_dir, images_dir=images_dir,
    )
