"""Benchmark of mesh extraction (patchsplat.mesh): TSDF throughput against Open3D, and whole-scene extraction.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/mesh.py [--open3d-path DIR[:DIR]] [--demo DIR]
                                                           [--large-images 400] [--large-points 120000]

Prints three tables:

1. TSDF integration on synthetic depth maps (a sphere on a plane, ray-cast exactly; 640x480, 24 views),
   the same views, voxel size and truncation for every implementation: patchsplat's ``TsdfVolume``
   (torch, on the CPU and on the GPU when there is one) and, when ``open3d`` imports (``--open3d-path``
   adds a scratch install, e.g. ``pip install --target DIR open3d-cpu==0.19.0``), Open3D's legacy
   ``ScalableTSDFVolume`` (what 2DGS/PGSR use) and ``UniformTSDFVolume`` and its tensor ``VoxelBlockGrid``.
   Views/s over the integration alone, the grid's voxel count, and the Chamfer distance of each one's
   marching-cubes mesh to the analytic surface (accuracy: exact distance of mesh samples; completeness:
   visible analytic samples to mesh samples). Open3D 0.20.0's ScalableTSDFVolume returned empty meshes
   here (open3d-cpu and open3d wheels alike; 0.19.0's works): its row then shows 0 faces.
2. Mesh extraction of the demo from its trained patches (``--demo DIR``: a pipeline workspace holding
   scene/, patches/ and trained/; default data/ of this checkout, else the demo is generated, split
   2x2 and trained into bench/.work/mesh-demo first, ~10 min on 2 cores): time, peak memory, faces,
   and the issue's requirement: Chamfer distance to the ground truth at most 1% of the scene extent.
3. Mesh extraction of a larger generated scene (model-only, split 3x3, splats placed on its sparse
   points instead of trained ones, so no training is needed): time and peak memory.

The Chamfer distance (table 2) is the mean of the two mean nearest-neighbour distances between
200k points sampled on the mesh and 600k on the ground-truth mesh, the latter kept where a training
view sees them (depth within 1% + 5 cm of the nearest sample in the same pixel, within depth_trunc)
inside the area that holds the scene's points (the ground square reaches 1.5x further, but nothing
was sampled or trained there); extent = the area's side (24 m; the diagonal of its box is also given).
Each extraction runs in a fresh process (bench/_common.measure): peak RSS is its own.
Set OMP_WAIT_POLICY=PASSIVE: with GNU OpenMP's default active waiting, torch's threads spin against
any other busy process, which made rendering and fusion 20-60x slower on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import WORK, large_model, measure

REPO = Path(__file__).resolve().parents[1]

# --- 1. TSDF throughput on an analytic scene -----------------------------------------------------

# The plane is kept off the lattice planes (voxel centres at multiples of 1 or 2 cm): a plane through
# voxel centres is a degenerate case for marching cubes that doubles the face count.
PLANE_Z, SPHERE_RADIUS, PLANE_HALF = 0.007, 0.5, 1.5
SPHERE_CENTRE = np.array([0.0, 0.0, PLANE_Z + SPHERE_RADIUS])


def analytic_views(width: int, height: int, count: int) -> tuple[np.ndarray, list[tuple]]:
    """K and (rotation, translation, z-depth, colour) of ``count`` cameras on two rings around a sphere on a plane."""
    K = np.array([[0.875 * width, 0.0, width / 2], [0.0, 0.875 * width, height / 2], [0.0, 0.0, 1.0]])
    views = []
    for ring, elevation in enumerate((1.4, 2.6)):
        for azimuth in np.linspace(0, 2 * np.pi, count // 2, endpoint=False) + ring:
            centre = np.array([2.6 * np.cos(azimuth), 2.6 * np.sin(azimuth), elevation])
            forward = (np.array([0.0, 0.0, 0.3]) - centre) / np.linalg.norm(np.array([0.0, 0.0, 0.3]) - centre)
            right = np.cross(forward, [0.0, 0.0, 1.0])
            right /= np.linalg.norm(right)
            rotation = np.stack([right, np.cross(forward, right), forward])
            translation = -rotation @ centre
            u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
            dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3) @ rotation
            with np.errstate(divide="ignore", invalid="ignore"):
                t_plane = (PLANE_Z - centre[2]) / dirs[:, 2]
            on_plane = (t_plane > 0) & np.all(np.abs(centre[:2] + t_plane[:, None] * dirs[:, :2]) <= PLANE_HALF, axis=1)
            offset = centre - SPHERE_CENTRE
            a, b, c = np.sum(dirs**2, axis=1), 2 * dirs @ offset, offset @ offset - SPHERE_RADIUS**2
            disc = b * b - 4 * a * c
            t_sphere = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
            t_sphere = np.where(t_sphere > 0, t_sphere, np.inf)
            depth = np.minimum(np.where(on_plane, t_plane, np.inf), t_sphere)
            colour = np.where((t_sphere <= depth)[:, None], [0.9, 0.2, 0.2], [0.2, 0.3, 0.9])
            depth = np.where(np.isfinite(depth), depth, 0.0)
            views.append((rotation, translation, depth.reshape(height, width).astype(np.float32),
                          colour.reshape(height, width, 3).astype(np.float32)))
    return K, views


def analytic_chamfer(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, views: list[tuple]) -> dict:
    """Accuracy (exact distance of mesh samples to the analytic surface), completeness (visible analytic
    samples to mesh samples) and their mean, in metres."""
    import trimesh
    from scipy.spatial import cKDTree

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    samples, _ = trimesh.sample.sample_surface(mesh, 200_000, seed=1)
    to_sphere = np.abs(np.linalg.norm(samples - SPHERE_CENTRE, axis=1) - SPHERE_RADIUS)
    outside = np.maximum(np.abs(samples[:, :2]) - PLANE_HALF, 0.0)
    accuracy = np.minimum(to_sphere, np.sqrt((samples[:, 2] - PLANE_Z) ** 2 + np.sum(outside**2, axis=1)))
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(40_000, 3))
    sphere = SPHERE_CENTRE + SPHERE_RADIUS * sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    plane = np.column_stack([rng.uniform(-PLANE_HALF, PLANE_HALF, (160_000, 2)), np.full(160_000, PLANE_Z)])
    truth = np.concatenate([sphere, plane])
    seen = np.zeros(len(truth), dtype=bool)
    for rotation, translation, depth, _ in views:
        cam = truth @ rotation.T + translation
        z = np.where(cam[:, 2] > 1e-6, cam[:, 2], np.nan)
        col, row = np.floor(K[0, 0] * cam[:, 0] / z + K[0, 2]), np.floor(K[1, 1] * cam[:, 1] / z + K[1, 2])
        inside = np.flatnonzero((col >= 0) & (col < depth.shape[1]) & (row >= 0) & (row < depth.shape[0]))
        measured = depth[row[inside].astype(int), col[inside].astype(int)]
        seen[inside[np.abs(measured - z[inside]) < 0.02 * z[inside] + 0.01]] = True
    completeness = cKDTree(samples).query(truth[seen])[0]
    return {"accuracy": float(accuracy.mean()), "completeness": float(completeness.mean()),
            "chamfer": 0.5 * float(accuracy.mean() + completeness.mean())}


def bench_patchsplat_tsdf(K, views, voxel: float, trunc: float, device: str) -> dict:
    import torch

    from patchsplat.mesh import TsdfVolume, extract_surface, lattice_box

    grid = lattice_box(np.array([-1.7, -1.7, -0.2]), np.array([1.7, 1.7, 1.2]), voxel, np.eye(3))
    rotation, translation, depth, colour = views[0]
    TsdfVolume(grid, trunc, device).integrate(depth, colour, K, rotation, translation)  # first-call costs untimed
    volume = TsdfVolume(grid, trunc, device)
    started = time.perf_counter()
    for rotation, translation, depth, colour in views:
        volume.integrate(depth, colour, K, rotation, translation)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    vertices, faces = extract_surface(volume.tsdf_grid(), volume.observed_grid())
    return {"name": f"patchsplat TsdfVolume ({device})", "seconds": seconds, "views_per_second": len(views) / seconds,
            "voxels": grid.num_voxels, "allocated": volume.num_allocated_voxels, "faces": int(len(faces)),
            **analytic_chamfer(grid.index_to_aligned(vertices), faces, K, views)}


def bench_open3d_tsdf(o3d, K, views, voxel: float, trunc: float, kind: str) -> dict:
    """Open3D's legacy ScalableTSDFVolume (2DGS/PGSR's choice) or UniformTSDFVolume, or its tensor
    VoxelBlockGrid (the legacy classes' successor; blocks of 8^3 like patchsplat's), on the CPU."""
    integration = o3d.pipelines.integration
    height, width = views[0][2].shape
    # Open3D puts pixel centres at integer coordinates, COLMAP (and patchsplat) at +0.5.
    intrinsic = o3d.camera.PinholeCameraIntrinsic(width, height, K[0, 0], K[1, 1], K[0, 2] - 0.5, K[1, 2] - 0.5)
    extrinsics = []
    for rotation, translation, _, _ in views:
        extrinsic = np.eye(4)
        extrinsic[:3, :3], extrinsic[:3, 3] = rotation, translation
        extrinsics.append(extrinsic)
    voxels = None
    if kind == "voxel_block_grid":
        core = o3d.core
        volume = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"), attr_dtypes=(core.float32, core.float32, core.float32),
            attr_channels=((1), (1), (3)), voxel_size=voxel, block_resolution=8, block_count=100_000)
        intrinsic_t = core.Tensor(np.asarray(intrinsic.intrinsic_matrix), core.float64)
        frames = [(o3d.t.geometry.Image(core.Tensor(depth)), o3d.t.geometry.Image(core.Tensor(np.ascontiguousarray(colour))),
                   core.Tensor(extrinsic, core.float64)) for (_, _, depth, colour), extrinsic in zip(views, extrinsics)]
        multiplier = trunc / voxel
        started = time.perf_counter()
        for depth, colour, extrinsic in frames:
            blocks = volume.compute_unique_block_coordinates(depth, intrinsic_t, extrinsic, 1.0, 100.0,
                                                             trunc_voxel_multiplier=multiplier)
            volume.integrate(blocks, depth, colour, intrinsic_t, intrinsic_t, extrinsic, 1.0, 100.0,
                             trunc_voxel_multiplier=multiplier)
        seconds = time.perf_counter() - started
        mesh = volume.extract_triangle_mesh(weight_threshold=0.0).to_legacy()
    else:
        if kind == "scalable":
            volume = integration.ScalableTSDFVolume(voxel_length=voxel, sdf_trunc=trunc,
                                                    color_type=integration.TSDFVolumeColorType.RGB8)
        else:
            resolution = int(round(3.4 / voxel))  # a cube: 3.4 m on a side, from z = -0.2
            volume = integration.UniformTSDFVolume(length=resolution * voxel, resolution=resolution, sdf_trunc=trunc,
                                                   color_type=integration.TSDFVolumeColorType.RGB8,
                                                   origin=np.array([-1.7, -1.7, -0.2]))
            voxels = resolution**3
        images = [o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray((colour * 255).astype(np.uint8))), o3d.geometry.Image(depth),
            depth_scale=1.0, depth_trunc=100.0, convert_rgb_to_intensity=False) for _, _, depth, colour in views]
        started = time.perf_counter()
        for image, extrinsic in zip(images, extrinsics):
            volume.integrate(image, intrinsic, extrinsic)
        seconds = time.perf_counter() - started
        mesh = volume.extract_triangle_mesh()
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    names = {"scalable": "ScalableTSDFVolume", "uniform": "UniformTSDFVolume", "voxel_block_grid": "t VoxelBlockGrid"}
    quality = analytic_chamfer(vertices, faces, K, views) if len(faces) else \
        {"chamfer": float("nan"), "accuracy": float("nan"), "completeness": float("nan")}
    return {"name": f"Open3D {o3d.__version__} {names[kind]} (cpu)", "seconds": seconds,
            "views_per_second": len(views) / seconds, "voxels": voxels, "allocated": None, "faces": int(len(faces)),
            **quality}


def import_open3d(extra_paths: str | None):
    for path in (extra_paths or "").split(os.pathsep):
        if path:
            sys.path.append(path)  # appended: the project's own numpy and torch stay first
    try:
        import open3d
    except ImportError as error:
        return None, f"not available ({error})"
    return open3d, open3d.__version__


# --- 2/3. whole-scene extraction ----------------------------------------------------------------

def extract(patches_dir: str, trained_dir: str, out_dir: str, config: dict) -> dict:
    from patchsplat.config import MeshConfig
    from patchsplat.mesh import extract_scene_mesh

    summary = extract_scene_mesh(Path(patches_dir), Path(trained_dir), Path(out_dir), MeshConfig(**config), progress=False)
    seconds = {key: 0.0 for key in ("render", "fuse", "marching_cubes", "crop_and_colour")}
    for record in summary["patches"]:
        for key in seconds:
            seconds[key] += record.get("seconds", {}).get(key, 0.0)
    return {"patches": len(summary["patches"]), "views": summary["totals"]["views_fused"],
            "voxels": sum(record.get("voxels", 0) for record in summary["patches"]),
            "allocated": sum(record.get("allocated_voxels", 0) for record in summary["patches"]),
            "faces": summary["totals"]["faces"], "components_removed": summary["totals"]["components_removed"],
            "welded": summary["totals"]["seam_vertices_welded"], "stage_seconds": seconds, "device": summary["device"]}


EXTRACT_IMPORTS = ("torch", "trimesh", "skimage.measure", "scipy.spatial", "patchsplat.mesh", "patchsplat.render",
                   "rich.progress")


def ground_truth_chamfer(scene: Path, patches_dir: Path, mesh_path: Path, depth_trunc: float) -> dict:
    """Chamfer distance of the mesh to the visible ground truth (see the module docstring)."""
    import trimesh
    from scipy.spatial import cKDTree

    from patchsplat.mesh.reference import visible_ground_truth_samples
    from patchsplat.scene_views import SceneCameras

    manifest = json.loads((scene / "manifest.json").read_text())
    training = set()
    for patch_file in patches_dir.glob("p*/patch.json"):
        patch = json.loads(patch_file.read_text())
        training |= set(patch["image_names"]) - set(patch["heldout_image_names"])
    cameras = [camera for camera in SceneCameras(scene / "sparse" / "0", scene / "images").cameras if camera.name in training]
    reference = visible_ground_truth_samples(scene, cameras, depth_trunc, 600_000)
    mesh = trimesh.load(mesh_path, force="mesh", process=False)
    samples, _ = trimesh.sample.sample_surface(mesh, 200_000, seed=1)
    accuracy = cKDTree(reference).query(samples)[0]
    completeness = cKDTree(samples).query(reference)[0]
    side = float(manifest["scene_extent"]["area_side"])
    area = manifest["scene_extent"]["area_bounds"]
    diagonal = float(np.linalg.norm(np.subtract(area["max"], area["min"])))
    chamfer = 0.5 * float(accuracy.mean() + completeness.mean())
    return {"chamfer": chamfer, "accuracy": float(accuracy.mean()), "completeness": float(completeness.mean()),
            "accuracy_median": float(np.median(accuracy)), "completeness_median": float(np.median(completeness)),
            "side": side, "diagonal": diagonal, "reference_points": int(len(reference))}


def train_demo(root: Path) -> None:
    """The demo pipeline up to trained patches, with this checkout's params.yaml (split 2x2, 1000 steps)."""
    from patchsplat.config import load_params
    from patchsplat.demo import generate_demo_scene
    from patchsplat.prepare import prepare_patch
    from patchsplat.split import split_scene
    from patchsplat.train.loop import train_patch

    params = load_params(REPO / "params.yaml")
    if not (root / "scene" / "manifest.json").exists():
        generate_demo_scene(params.scene.demo, root / "scene", progress=False)
    if not (root / "patches" / "split.json").exists():
        split_scene(root / "scene", root / "patches", params.split, params.validate_, progress=False)
    for patch in sorted(path for path in (root / "patches").glob("p*") if path.is_dir()):
        if (root / "trained" / patch.name / "splats.ply").exists():
            continue
        print(f"training {patch.name} of the demo (once; cached under {root}) ...", flush=True)
        config = params.train_settings(patch.name)
        prepare_patch(patch, root / "prepared" / patch.name, config)
        train_patch(patch, root / "prepared" / patch.name, root / "trained" / patch.name, config, progress=False,
                    log=lambda message: None)


def place_splats(patches_dir: Path, trained_dir: Path) -> None:
    """Stand-in for training on a model-only scene: opaque isotropic Gaussians on each patch's sparse
    points, sized by their spacing and coloured by the points' colours."""
    import torch

    from patchsplat.colmap_io.arrays import read_model_arrays
    from patchsplat.prepare import knn_spacing
    from patchsplat.splat_io import write_splats_ply

    for patch in sorted(path for path in patches_dir.glob("p*") if path.is_dir()):
        target = trained_dir / patch.name / "splats.ply"
        if target.exists():
            continue
        arrays = read_model_arrays(patch / "sparse" / "0")
        spacing = knn_spacing(arrays.xyz, 3)
        count = len(arrays.xyz)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_splats_ply(
            target, means=torch.as_tensor(arrays.xyz, dtype=torch.float32),
            scales=torch.as_tensor(np.log(np.repeat(spacing[:, None], 3, axis=1)), dtype=torch.float32),
            quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(count, 1), opacities=torch.full((count,), 3.0),
            sh0=torch.as_tensor((arrays.rgb / 255.0 - 0.5) / 0.28209479177387814, dtype=torch.float32)[:, None, :],
            shN=torch.zeros(count, 0, 3),
        )


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(text.ljust(width) for text, width in zip(header, widths)))
    for row in rows:
        print("  ".join(text.ljust(width) for text, width in zip(row, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--open3d-path", default=None,
                        help="extra sys.path entries (os.pathsep-separated, appended) holding open3d and its imports")
    parser.add_argument("--demo", type=Path, default=REPO / "data", help="pipeline workspace with scene/, patches/, trained/")
    parser.add_argument("--large-images", type=int, default=400)
    parser.add_argument("--large-points", type=int, default=120_000)
    parser.add_argument("--tsdf-size", default="640x480", help="WIDTHxHEIGHT of the synthetic depth maps")
    parser.add_argument("--tsdf-voxel", type=float, default=0.01, help="voxel size (m) of the throughput test")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tsdf", "demo", "large"])
    args = parser.parse_args()

    import torch

    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {load[0]:.2f}")

    if "tsdf" not in args.skip:
        width, height = (int(value) for value in args.tsdf_size.split("x"))
        K, views = analytic_views(width, height, 24)
        voxel, trunc = args.tsdf_voxel, 5 * args.tsdf_voxel
        results = [bench_patchsplat_tsdf(K, views, voxel, trunc, "cpu")]
        if torch.cuda.is_available():
            results.append(bench_patchsplat_tsdf(K, views, voxel, trunc, "cuda"))
        o3d, version = import_open3d(args.open3d_path)
        if o3d is not None:
            for kind in ("scalable", "voxel_block_grid", "uniform"):
                results.append(bench_open3d_tsdf(o3d, K, views, voxel, trunc, kind))
        print_table(
            f"1. TSDF integration: {len(views)} views of {width}x{height}, voxel {voxel * 100:g} cm, sdf_trunc "
            f"{trunc * 100:g} cm, sphere (r 0.5 m) on a 3 m plane; Open3D: {version}",
            ["implementation", "views/s", "s", "grid voxels", "allocated", "faces", "Chamfer mm", "accuracy mm",
             "completeness mm"],
            [[r["name"], f"{r['views_per_second']:.2f}", f"{r['seconds']:.2f}",
              f"{r['voxels'] / 1e6:.1f} M" if r["voxels"] else "(sparse)",
              f"{r['allocated'] / 1e6:.1f} M" if r["allocated"] else "-", str(r["faces"]),
              f"{1e3 * r['chamfer']:.2f}", f"{1e3 * r['accuracy']:.2f}", f"{1e3 * r['completeness']:.2f}"] for r in results],
        )

    rows = []
    if "demo" not in args.skip:
        demo = args.demo
        if not all((demo / "trained" / patch.name / "splats.ply").exists()
                   for patch in (demo / "patches").glob("p*") if patch.is_dir()) or not (demo / "patches").is_dir():
            print(f"{demo} has no trained demo; using bench/.work/mesh-demo")
            demo = WORK / "mesh-demo"
            train_demo(demo)
        out = WORK / "mesh-demo-out"
        config = {}
        outcome = measure(extract, str(demo / "patches"), str(demo / "trained"), str(out), config, imports=EXTRACT_IMPORTS)
        summary = json.loads((out / "mesh.json").read_text())
        quality = ground_truth_chamfer(demo / "scene", demo / "patches", out / "mesh.ply",
                                       max(record["depth_trunc"] for record in summary["patches"]))
        rows.append(("demo (trained, 2x2)", outcome, quality))
        print(f"\ndemo mesh: Chamfer {quality['chamfer']:.3f} m = {100 * quality['chamfer'] / quality['side']:.2f}% of the "
              f"area's side ({quality['side']:g} m), {100 * quality['chamfer'] / quality['diagonal']:.2f}% of its box "
              f"diagonal; accuracy {quality['accuracy']:.3f} (median {quality['accuracy_median']:.3f}), completeness "
              f"{quality['completeness']:.3f} (median {quality['completeness_median']:.3f}); "
              f"{quality['reference_points']} visible ground-truth samples. Requirement: <= 1% of the extent.")
    if "large" not in args.skip:
        from patchsplat.config import SplitConfig, ValidateConfig
        from patchsplat.split import split_scene

        scene = large_model(args.large_images, args.large_points)
        root = WORK / f"mesh-large-{args.large_images}img-{args.large_points}pts"
        if not (root / "patches" / "split.json").exists():
            split_scene(scene, root / "patches", SplitConfig(rows=3, cols=3, min_cameras=1), ValidateConfig(), progress=False)
        place_splats(root / "patches", root / "trained")
        out = root / "mesh"
        outcome = measure(extract, str(root / "patches"), str(root / "trained"), str(out), {}, imports=EXTRACT_IMPORTS)
        rows.append((f"large ({args.large_images} images, {args.large_points // 1000}k points, placed splats, 3x3)", outcome, None))
        shutil.rmtree(out, ignore_errors=True)
    if rows:
        table = []
        for name, outcome, quality in rows:
            result, stages = outcome["result"], outcome["result"]["stage_seconds"]
            table.append([
                name, str(result["patches"]), str(result["views"]), f"{result['voxels'] / 1e6:.1f} M",
                f"{result['allocated'] / 1e6:.1f} M", f"{outcome['seconds']:.1f}",
                f"{stages['render']:.1f} / {stages['fuse']:.1f} / {stages['marching_cubes']:.1f}",
                f"{outcome['peak_mb']:.0f} ({outcome['peak_above_baseline_mb']:.0f})", f"{result['faces'] / 1e6:.2f} M",
                f"{100 * quality['chamfer'] / quality['side']:.2f}%" if quality else "-",
            ])
        print_table(
            f"2-3. Mesh extraction (default mesh settings: {rows[0][1]['result']['device']}, voxel and depth_trunc "
            "from the observed point depths, views at each patch's training resolution)",
            ["scene", "patches", "views", "grid voxels", "allocated", "total s", "render / fuse / MC s",
             "peak MB (above imports)", "faces", "Chamfer / side"], table,
        )


if __name__ == "__main__":
    main()
