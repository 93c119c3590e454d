"""Evaluate a merged scene: held-out image metrics, per patch and overall, and mesh metrics; write the report.

Contract of :func:`evaluate_scene`: every number is computed before anything is written; then the grid
PNG and the JSON report are each written atomically (PNG first, JSON last, and the JSON's text is
built and checked for NaN/Inf before the PNG is written). A failure therefore leaves the earlier
report and grid as they were and no partial file.

``evaluation.json`` keeps DVC-friendly numbers at the top level (``psnr``, ``psnr_colour_corrected``,
``ssim``, ``lpips``, ``chamfer``, ``fscore``, ``resolution_factor``, ...; always the same keys, None where
a metric does not apply), ``resolution`` (the size the images were scored at, in words) and the tables
below them (``images.per_view``, ``images.per_patch``, ``mesh``). The colour-corrected PSNR is in this
report (and so in MLflow), not in the headline metrics/evaluate.json (see :mod:`patchsplat.headline`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from patchsplat.atomic import atomic_file, write_json
from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import EvaluateConfig
from patchsplat.console import console
from patchsplat.errors import InputError
from patchsplat.evaluate.grid import GridRow, choose_grid_views, comparison_grid_png
from patchsplat.evaluate.images import ViewResult, evaluate_views, mean_of
from patchsplat.evaluate.mesh import GROUND_TRUTH_KEYS, PROXY_KEYS, evaluate_mesh
from patchsplat.evaluate.perceptual import LPIPS_NET, lpips_metric
from patchsplat.evaluate.resolution import evaluation_resolution
from patchsplat.render import select_backend
from patchsplat.scene_layout import locate_scene
from patchsplat.scene_views import SceneCameras, describe_resolution
from patchsplat.splat_io import read_splats_ply
from patchsplat.split import SplitLayout
from patchsplat.workspace import patch_ids_in

METRIC_NAMES = ("psnr", "psnr_colour_corrected", "ssim", "lpips", "l1")


def _patch_assignment(patches_dir: Path | None, cameras) -> tuple[dict[str, str | None], list[str], str]:
    """(view name -> patch id, patch ids, status) for the held-out cameras: each view belongs to the patch
    whose core cell holds its camera centre (the core cells of a split tile the ground, so there is one)."""
    if patches_dir is None:
        return {}, [], "not assigned: no patches folder was given"
    if not patch_ids_in(Path(patches_dir)):
        return {}, [], f"not assigned: no patches (pN/patch.json) in {patches_dir}"
    layout = SplitLayout.load(Path(patches_dir))
    owners = layout.core_owners(np.stack([camera.centre for camera in cameras]))
    status = "each held-out view belongs to the patch whose core cell holds its camera centre (aligned ground frame)"
    return {camera.name: owner for camera, owner in zip(cameras, owners)}, layout.ids, status


def _summaries(views: list[ViewResult]) -> tuple[dict, list[str]]:
    """Mean of each metric over ``views`` and the notes of those that have no finite mean."""
    summary, notes = {}, []
    for name in METRIC_NAMES:
        mean, note = mean_of((view.metrics[name] for view in views), name)
        summary[name] = mean
        if note and name != "lpips":  # LPIPS has its own status line
            notes.append(note)
    return summary, notes


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no Infinity: an infinite per-view PSNR is written as None (with ``exact_match`` true)."""
    return None if value is None or not np.isfinite(value) else float(value)


def _per_view_table(views: list[ViewResult]) -> list[dict]:
    rows = []
    for view in views:
        row = {"view": view.name, "patch": view.patch}
        row.update({name: _finite_or_none(view.metrics[name]) for name in METRIC_NAMES})
        row["exact_match"] = bool(np.isinf(view.metrics["psnr"]))
        row["exact_match_colour_corrected"] = bool(np.isinf(view.metrics["psnr_colour_corrected"]))
        row.update({"coverage": view.coverage, "width": view.width, "height": view.height, "seconds": round(view.seconds, 3)})
        rows.append(row)
    return rows


def _per_patch_table(views: list[ViewResult], patch_ids: list[str]) -> dict:
    table = {}
    for patch_id in patch_ids + ([None] if any(view.patch is None for view in views) and patch_ids else []):
        members = [view for view in views if view.patch == patch_id]
        summary, notes = _summaries(members) if members else ({name: None for name in METRIC_NAMES}, ["no held-out view"])
        table["unassigned" if patch_id is None else patch_id] = {
            "num_views": len(members), **summary, "views": [view.name for view in members], "notes": notes,
        }
    return table


def _grid_row(view: ViewResult) -> GridRow:
    psnr = view.metrics["psnr"]
    shown = "inf" if np.isinf(psnr) else f"{psnr:.2f}"
    patch = f" ({view.patch})" if view.patch else ""
    return GridRow(f"{view.name}{patch}", f"PSNR {shown} dB, SSIM {view.metrics['ssim']:.3f}", view.truth, view.render)


def load_merged_splats(merged_ply: Path) -> dict[str, torch.Tensor]:
    if not Path(merged_ply).is_file():
        raise InputError(merged_ply, "merged splats not found (run the merge stage first)", kind="missing_file")
    splats = read_splats_ply(merged_ply)
    if len(splats["means"]) == 0:
        raise InputError(merged_ply, "holds no Gaussians: nothing to render", kind="corrupt_file")
    return splats


def evaluate_scene(
    scene_dir: Path,
    merged_ply: Path,
    mesh_ply: Path | None,
    patches_dir: Path | None,
    out_json: Path,
    grid_png: Path,
    config: EvaluateConfig,
    progress: bool = True,
    trained_dir: Path | None = None,
) -> dict:
    """Evaluate the merged splats on the scene's held-out views and the mesh; write ``out_json`` and ``grid_png``.

    ``scene_dir`` is a COLMAP folder (``images/`` and ``sparse/``); ``merged_ply`` the merged splats in
    the world frame (INRIA PLY); ``mesh_ply`` the mesh in the world frame (None or missing: mesh
    metrics None with a status); ``patches_dir`` the split (for the per-patch table; None: skipped);
    ``trained_dir`` the trained patches, whose metrics.json say the resolution they were trained at.
    Held-out views are every 8th image of the scene sorted by name, rendered at the resolution of
    :mod:`.resolution` (``evaluate.resolution_factor``, else the coarsest training resolution, else
    full) and scored against their photos downscaled the same way. Returns the report written to
    ``out_json`` (its ``images.per_view`` is the per-view table). Raises :class:`InputError` for missing or unreadable inputs, leaving earlier outputs intact.
    """
    started = time.perf_counter()
    layout = locate_scene(Path(scene_dir))
    arrays = read_model_arrays(layout.model_dir)
    scene = SceneCameras(layout.model_dir, layout.images_dir, arrays)
    heldout = scene.heldout
    if not heldout:
        raise InputError(layout.model_dir, "no registered images, so no held-out view to evaluate", kind="missing_images")
    splats = load_merged_splats(merged_ply)
    patch_of, patch_ids, assignment_status = _patch_assignment(patches_dir, heldout)
    resolution = evaluation_resolution(config, Path(trained_dir) if trained_dir is not None else None)
    resolution_text = describe_resolution(heldout, resolution.factor)
    lpips_function, lpips_status = lpips_metric(config.lpips)
    grid_names = choose_grid_views([camera.name for camera in heldout], config.grid_views)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    backend = select_backend("auto", device=device)
    splats = {key: value.to(device) for key, value in splats.items()}  # once, not once per view

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    render_start = time.perf_counter()
    with Progress(TextColumn("evaluate: rendering held-out views"), BarColumn(), MofNCompleteColumn(),
                  disable=not progress, transient=True, console=console) as bar:
        task = bar.add_task("views", total=len(heldout))
        views = evaluate_views(splats, heldout, scene.frame, patch_of, lpips_function, set(grid_names),
                               backend=backend, device=device, advance=lambda: bar.advance(task),
                               resolution_factor=resolution.factor)
    render_seconds = time.perf_counter() - render_start

    mesh_start = time.perf_counter()
    mesh = evaluate_mesh(Path(scene_dir), Path(mesh_ply) if mesh_ply is not None else None, arrays.xyz, config)
    mesh_seconds = time.perf_counter() - mesh_start

    overall, notes = _summaries(views)
    report = {
        "psnr": overall["psnr"],
        "psnr_colour_corrected": overall["psnr_colour_corrected"],
        "ssim": overall["ssim"],
        "lpips": overall["lpips"],
        "lpips_status": lpips_status,
        "num_views": len(views),
        "num_gaussians": int(len(splats["means"])),
        "resolution_factor": resolution.factor,
        "resolution": resolution_text,
        **{key: mesh[key] for key in GROUND_TRUTH_KEYS},
        "fscore_threshold": mesh["threshold"],
        **{key: mesh[key] for key in PROXY_KEYS},
        "mesh_reference": mesh["reference"],
        "mesh_status": mesh["status"],
        "images": {
            "render_backend": backend,
            # The prose (what size, why) is a list, like the definitions below: numbers and words stay apart.
            "resolution": {"factor": resolution.factor, "trained_factors": resolution.trained or None,
                           "about": [resolution_text, resolution.source]},
            "l1": overall["l1"],
            "per_patch": _per_patch_table(views, patch_ids) if patch_ids else None,
            "per_view": _per_view_table(views),
            "grid_views": grid_names,
            "notes": notes,
            # Prose lives in lists, apart from the numbers (metrics/evaluate.json takes the headline ones).
            "definitions": [
                "held-out views: every 8th image of the whole scene sorted by name (no patch trained on them), "
                f"rendered at {resolution_text} ({resolution.source}), photos downscaled to that size with a box "
                "filter as training does, renders clamped to [0, 1]",
                "psnr: 10 log10(1 / MSE), MSE over all pixels and RGB channels of images in [0, 1]; overall and "
                "per-patch values are means over views",
                "psnr_colour_corrected: the psnr after an affine colour map fitted per view (least squares of the "
                "photo's pixels on [render pixels, 1], a 4 x 3 matrix: colour matrix and offset) and applied to the "
                "render, clamped to [0, 1]; it forgives a global exposure / white-balance difference between the "
                "photo and the render, so its gap to psnr is the error that is only colour; never below psnr; means "
                "over views like psnr",
                "ssim: Wang et al. 2004, Gaussian window 11 / sigma 1.5, valid region; mean over views",
                f"lpips: {LPIPS_NET} backbone" if lpips_function is not None else "lpips: not computed (see lpips_status)",
                f"per patch: {assignment_status}",
                f"grid: {Path(grid_png).name}, columns ground truth | render | mean absolute error",
            ],
        },
        # status, reference and threshold are at the top level (mesh_status, mesh_reference, fscore_threshold).
        "mesh": {key: mesh[key] for key in ("extent", "details", "definitions")},
        "seconds": {"render": round(render_seconds, 2), "mesh": round(mesh_seconds, 2),
                    "total": round(time.perf_counter() - started, 2)},
    }

    # Build everything before writing anything: a NaN anywhere raises here (allow_nan=False), and the
    # grid is drawn in memory, so a failure up to this point leaves the earlier outputs untouched.
    json.dumps(report, allow_nan=False)
    by_name = {view.name: view for view in views}
    rows = [_grid_row(by_name[name]) for name in grid_names]
    title = f"held-out views at {resolution_text}"
    title += f": mean PSNR {overall['psnr']:.2f} dB" if overall["psnr"] is not None else ""
    png = comparison_grid_png(rows, title)
    with atomic_file(grid_png, suffix=".png") as tmp:
        tmp.write_bytes(png)
    write_json(out_json, report)
    if progress:
        print_summary(report)
    return report


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def print_summary(report: dict) -> None:
    """The per-view and per-patch tables, the overall line and the mesh line, on the shared console."""
    images = report["images"]
    table = Table(title=f"Held-out views ({report['num_views']}, {report['num_gaussians']:,} Gaussians, "
                        f"{images['render_backend']} renderer) at {report['resolution']}")
    for column in ("view", "patch", "PSNR (dB)", "PSNR colour-corrected (dB)", "SSIM", "LPIPS", "coverage"):
        table.add_column(column, justify="left" if column in ("view", "patch") else "right")
    for row in images["per_view"]:
        psnr = "inf" if row["exact_match"] else _number(row["psnr"])
        psnr_cc = "inf" if row["exact_match_colour_corrected"] else _number(row["psnr_colour_corrected"])
        table.add_row(row["view"], row["patch"] or "-", psnr, psnr_cc, _number(row["ssim"]), _number(row["lpips"]),
                      _number(row["coverage"], 3))
    if images["per_patch"]:
        table.add_section()
        for patch_id, row in images["per_patch"].items():
            table.add_row(f"mean of {row['num_views']}", patch_id, _number(row["psnr"]),
                          _number(row["psnr_colour_corrected"]), _number(row["ssim"]), _number(row["lpips"]), "")
    table.add_section()
    table.add_row("overall", "", _number(report["psnr"]), _number(report["psnr_colour_corrected"]),
                  _number(report["ssim"]), _number(report["lpips"]), "", style="bold")
    console.print(table)
    console.print("PSNR colour-corrected: after an affine colour map fitted from each render to its photo "
                  "(forgives exposure / white balance)")
    console.print(f"LPIPS: {report['lpips_status']}")
    for note in images["notes"]:
        console.print(f"note: {note}")
    mesh = report["mesh"] | {"threshold": report["fscore_threshold"]}
    if report["mesh_reference"] == "ground_truth_mesh" and report["chamfer"] is not None:
        console.print(
            f"mesh vs ground truth: accuracy {_number(report['accuracy'])}, completeness {_number(report['completeness'])}, "
            f"Chamfer {_number(report['chamfer'])}, F-score {_number(report['fscore'], 3)} "
            f"(precision {_number(report['precision'], 3)}, recall {_number(report['recall'], 3)}) "
            f"at threshold {_number(mesh['threshold'])} = {mesh['threshold'] / mesh['extent']:g} x extent {_number(mesh['extent'])}"
        )
    elif report["mesh_reference"] == "sfm_points_proxy" and report["sfm_to_mesh_mean"] is not None:
        console.print(
            f"mesh (PROXY, SfM points -> mesh): mean {_number(report['sfm_to_mesh_mean'])}, median "
            f"{_number(report['sfm_to_mesh_median'])}, within threshold {_number(report['sfm_within_threshold'], 3)} "
            f"(threshold {_number(mesh['threshold'])})"
        )
    else:
        console.print(f"mesh: {report['mesh_status']}")
