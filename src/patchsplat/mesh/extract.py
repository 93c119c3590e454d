"""The scene mesh: every patch's cropped TSDF surface, joined into one mesh without small floating pieces.

Contract: :func:`extract_scene_mesh` reads ``patches_dir/pN/{patch.json, sparse/0}`` and
``trained_dir/pN/splats.ply`` for every patch and writes ``out_dir`` atomically (complete or absent;
an earlier ``out_dir`` survives a failure):

    out_dir/mesh.ply    binary PLY, world frame, per-vertex RGBA colours (uint8)
    out_dir/mesh.glb    the same mesh as glTF binary (vertex colours in COLOR_0)
    out_dir/mesh.json   per patch: views fused, fusion resolution, voxel size, truncations, grid, what
                        was chosen and why (``why``; ``coarsened`` when the memory budget made the voxel
                        coarser), vertices/faces before and after the crop, timings; totals; seams
                        welded; components removed; the TSDF implementation and device

Steps: per patch (:mod:`.fuse`) render the training views, fuse, marching cubes, crop to the core
cell; then concatenate, weld the near-duplicate vertices the pieces share along cell borders, and
remove the connected components with fewer than ``min_component_fraction`` of the largest one's faces.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.config import MeshConfig
from patchsplat.errors import InputError
from patchsplat.mesh.fuse import PatchPiece, load_patch, mesh_patch, patch_settings
from patchsplat.mesh.ops import remove_small_components, weld_seams
from patchsplat.mesh.tsdf import TsdfVolume
from patchsplat.output_folder import MESH, check_replaceable
from patchsplat.split import SplitLayout

# Border vertices of different pieces not on a shared lattice edge are welded when mutual nearest
# neighbours closer than this many (smaller) voxels: 0.5, 1 and 1.5 closed 37%, 44% and 47% of a
# test seam; beyond a voxel the pieces disagree about the surface and welding would fold it.
WELD_TOLERANCE_VOXELS = 1.0


def fusion_device() -> torch.device:
    """The GPU when there is one (rendering and fusion both run there), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def join_pieces(pieces: list[PatchPiece], config: MeshConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Concatenate the pieces, weld their seams and drop small components; returns the mesh and totals."""
    pieces = [piece for piece in pieces if len(piece.faces)]
    sizes = [len(piece.vertices) for piece in pieces]
    offsets = np.cumsum([0] + sizes)[:-1]
    vertices = np.concatenate([piece.vertices for piece in pieces])
    faces = np.concatenate([piece.faces + offset for piece, offset in zip(pieces, offsets)])
    colours = np.concatenate([piece.colours for piece in pieces])
    owner = np.repeat(np.arange(len(pieces)), sizes)
    # Pieces fused with the same voxel size in the same frame share a lattice (see grid.lattice_box).
    lattices = [(piece.record["voxel_size"], piece.ground.world_to_aligned.tobytes()) for piece in pieces]
    lattice_of_piece = np.array([lattices.index(lattice) for lattice in lattices])
    lattice = np.concatenate([piece.ground.to_aligned(piece.vertices) / piece.record["voxel_size"] for piece in pieces])
    totals = {"vertices_concatenated": int(len(vertices)), "faces_concatenated": int(len(faces))}
    tolerance = WELD_TOLERANCE_VOXELS * min(piece.record["voxel_size"] for piece in pieces)
    vertices, faces, colours, welded = weld_seams(vertices, faces, colours, owner, lattice, lattice_of_piece[owner], tolerance)
    vertices, faces, colours, components = remove_small_components(vertices, faces, colours, config.min_component_fraction)
    totals.update(seam_vertices_welded=welded, components=components["components"],
                  components_removed=components["components_removed"],
                  faces_removed_in_small_components=components["faces_removed"],
                  vertices=int(len(vertices)), faces=int(len(faces)))
    return vertices, faces, colours, totals


def _depth_hint(pieces: list[PatchPiece]) -> str:
    """When the sparse points lie beyond depth_trunc (the camera spread is small next to the scene's
    depth, as in a forward-facing capture), say by how much and what to set."""
    far = [piece.record for piece in pieces
           if piece.record.get("points_median_distance", 0.0) > piece.record["depth_trunc"]]
    if not far:
        return ""
    far = [record for record in far if not record.get("skipped")] or far
    record = max(far, key=lambda r: r["points_median_distance"] / r["depth_trunc"])
    return (f"; patch {record['id']}'s sparse points lie a median {record['points_median_distance']:.3g} from its "
            f"cameras, beyond its depth_trunc of {record['depth_trunc']:.3g} ({record['why']['depth_trunc']}): "
            "set mesh.depth_trunc above that distance, or unset it to have it chosen from the observed point depths")


def to_trimesh(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray) -> trimesh.Trimesh:
    rgba = np.concatenate([np.round(np.clip(colours, 0, 1) * 255), np.full((len(colours), 1), 255)], axis=1)
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=rgba.astype(np.uint8), process=False)


def write_mesh_files(folder: Path, mesh: trimesh.Trimesh) -> None:
    (folder / "mesh.ply").write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary"))
    (folder / "mesh.glb").write_bytes(trimesh.exchange.gltf.export_glb(mesh))


def extract_scene_mesh(patches_dir: Path, trained_dir: Path, out_dir: Path, config: MeshConfig,
                       progress: bool = True, device: torch.device | None = None) -> dict:
    """Mesh the whole scene from its trained patches; returns the summary written to mesh.json."""
    from rich.progress import Progress

    from patchsplat.console import console

    patches_dir, trained_dir, out_dir = Path(patches_dir), Path(trained_dir), Path(out_dir)
    check_replaceable(out_dir, MESH, (patches_dir, trained_dir))
    device = device or fusion_device()
    started = time.perf_counter()
    pieces: list[PatchPiece] = []
    layout = SplitLayout.load(patches_dir)
    with Progress(console=console, disable=not progress, transient=True) as bar:
        for patch in layout.patches:
            inputs = load_patch(patches_dir / patch.id, patch, trained_dir / patch.id / "splats.ply")
            task = bar.add_task(f"meshing {inputs.patch_id}", total=len(inputs.cameras))
            chosen = time.perf_counter()
            settings = patch_settings(inputs, config)
            chosen = time.perf_counter() - chosen
            piece = mesh_patch(inputs, settings, config, device, on_view=lambda task=task: bar.advance(task))
            piece.record["seconds"]["settings"] = chosen
            pieces.append(piece)
            bar.remove_task(task)
    if not any(len(piece.faces) for piece in pieces):
        raise InputError(trained_dir, "no surface was extracted from any patch (no fused depth crosses a surface: "
                         f"check mesh.min_alpha and mesh.depth_trunc){_depth_hint(pieces)}", kind="empty_mesh")

    joined = time.perf_counter()
    vertices, faces, colours, totals = join_pieces(pieces, config)
    mesh = to_trimesh(vertices, faces, colours)
    assembled = time.perf_counter()
    totals["views_fused"] = sum(piece.record["views_fused"] for piece in pieces)
    summary = {
        "tsdf_implementation": TsdfVolume.implementation,
        "device": str(device),
        "settings": config.model_dump(),
        "patches": [piece.record for piece in pieces],
        "totals": totals,
        "bounds": mesh.bounds.tolist(),
        "seconds": {},
    }
    with atomic_dir(out_dir, MESH, (patches_dir, trained_dir)) as tmp:
        write_mesh_files(tmp, mesh)
        finished = time.perf_counter()
        summary["seconds"] = {"patches": joined - started, "join": assembled - joined, "write": finished - assembled,
                              "total": finished - started}
        write_json(tmp / "mesh.json", summary)
    return summary
