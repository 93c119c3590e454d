"""The demo-scene generator: layout -> tracks -> images, COLMAP model, mesh and manifest.

Contract: :func:`generate_demo_scene` is deterministic (same config -> byte-identical files) and
atomic (the folder appears complete or not at all; a previous one is replaced only on success).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.config import DemoSceneConfig
from patchsplat.console import console
from patchsplat.demo.colmap_model import SparseModel, image_name, reprojection_errors, write_model
from patchsplat.demo.defects import choose_missing_images, make_outliers
from patchsplat.demo.layout import SceneLayout, build_layout
from patchsplat.demo.manifest import build_manifest
from patchsplat.demo.mesh import ground_truth_mesh, sphere_chord_error, sphere_subdivisions
from patchsplat.demo.observations import Tracks, build_tracks
from patchsplat.demo.render import render_view
from patchsplat.demo.textures import shaded_colour
from patchsplat.output_folder import DEMO_SCENE, OutputKind, check_replaceable

# numpy releases the GIL in its inner loops, so threads overlap most of the rendering work.
RENDER_THREADS = max(1, min(4, os.cpu_count() or 1))


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    bar = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )
    with bar:
        yield bar


def surface_model(layout: SceneLayout, config: DemoSceneConfig, tracks: Tracks) -> SparseModel:
    """Stored points: true surface positions (plus point_noise), their shaded colours and errors."""
    samples = tracks.samples
    colour = shaded_colour(layout.objects, samples.surface, samples.points, samples.normals)
    xyz = samples.points
    if config.point_noise > 0.0:
        rng = np.random.default_rng([config.seed, 50])
        xyz = xyz + rng.normal(0.0, config.point_noise, xyz.shape)
    error = reprojection_errors(layout.cameras, xyz, tracks.offsets, tracks.camera, tracks.uv)
    return SparseModel(
        xyz=xyz,
        colour=np.round(colour * 255.0).astype(np.uint8),
        error=error,
        offsets=tracks.offsets,
        camera=tracks.camera,
        uv=tracks.uv,
    )


def _write_images(layout: SceneLayout, folder: Path, indices: list[int], bar: Progress) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    task = bar.add_task("rendering images", total=len(indices))

    def render_one(index: int) -> None:
        Image.fromarray(render_view(layout, index)).save(folder / image_name(index), format="PNG")
        bar.advance(task, 1)

    with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
        # list() re-raises the first failure here.
        list(pool.map(render_one, indices))


def generate_demo_scene(config: DemoSceneConfig, out_dir: Path, progress: bool = True,
                        kind: OutputKind = DEMO_SCENE) -> dict[str, Any]:
    """Write the demo scene into ``out_dir`` (atomically) and return its manifest.

    Layout: ``images/00000.png ...`` (unless ``render_images`` is off; minus the missing-images
    defect), ``sparse/0/*.bin`` (pycolmap), ``ground_truth_mesh.ply`` and ``manifest.json``.
    ``kind`` is whose output the folder becomes (the scene stage writes the demo as its own).
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, kind)
    missing = choose_missing_images(config)  # checks the defect against num_cameras before any work
    layout = build_layout(config)
    with _progress(progress) as bar:
        task = bar.add_task("tracking points", total=config.num_points)
        tracks = build_tracks(layout, config, lambda n: bar.advance(task, n))
        surface = surface_model(layout, config, tracks)
        model = SparseModel.concatenate([surface, make_outliers(layout, config)]) if config.defects.outlier_points else surface

        with atomic_dir(out_dir, kind) as tmp:
            written = []
            if config.render_images:
                missing_set = set(int(i) for i in missing)
                written = [i for i in range(len(layout.cameras)) if i not in missing_set]
                _write_images(layout, tmp / "images", written, bar)

            task = bar.add_task("writing COLMAP model", total=len(model))
            write_model(layout.cameras, model, tmp / "sparse" / "0", lambda n: bar.advance(task, n))

            mesh = ground_truth_mesh(layout)
            mesh.export(tmp / "ground_truth_mesh.ply", file_type="ply")
            subdivisions = sphere_subdivisions(config.num_spheres)
            mesh_info = {
                "file": "ground_truth_mesh.ply",
                "num_vertices": int(len(mesh.vertices)),
                "num_faces": int(len(mesh.faces)),
                "sphere_subdivisions": subdivisions,
                "sphere_max_chord_error_relative": sphere_chord_error(subdivisions),
            }
            manifest = build_manifest(config, layout, model, len(surface), missing, len(written), mesh_info)
            write_json(tmp / "manifest.json", manifest)
    return manifest
