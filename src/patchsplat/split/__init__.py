"""Split a scene into overlapping patches, each a standalone COLMAP model.

Contract: :func:`split_scene` reads a COLMAP folder and writes ``out_dir`` atomically:

    out_dir/split.json        the layout (cells, alignment), per-patch counts, statistics and flags
    out_dir/layout.png        top-down picture of cells, cameras and point density
    out_dir/pN/sparse/0/      the patch's COLMAP model (world frame, only its images and points)
    out_dir/pN/patch.json     its cells, the images folder it references (no copies), statistics

Patch ids are p0..pN-1 in a deterministic order (by cell position).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.colmap_io.arrays import ModelArrays, read_model_arrays, write_model_subset
from patchsplat.config import SplitConfig, ValidateConfig
from patchsplat.errors import InputError
from patchsplat.output_folder import SPLIT, check_replaceable
from patchsplat.split.compare import flag_outlier_patches
from patchsplat.split.auto import SplitBudget
from patchsplat.split.layout import PATCH_FILE, GroundFrame, PatchDescription, SplitLayout
from patchsplat.split.plan import PatchPlan, SplitPlan, plan_split

__all__ = ["split_scene", "plan_split", "SplitResult", "GroundFrame", "PatchDescription", "SplitLayout", "PATCH_FILE",
           "SPLIT_FILE"]

SPLIT_FILE = "split.json"
LAYOUT_FILE = "layout.png"


@dataclass(frozen=True)
class SplitResult:
    plan: SplitPlan
    summary: dict          # the content of split.json
    warnings: list[str]


HOLD_OUT_EVERY = 8


def heldout_names(image_names) -> list[str]:
    """Every 8th image of the scene, sorted by name: the views evaluation uses and no patch trains on."""
    return sorted(image_names)[::HOLD_OUT_EVERY]


def patch_statistics(arrays: ModelArrays, patch: PatchPlan, config: ValidateConfig, sample: int, point_xy: np.ndarray) -> dict:
    """The validation statistics of one patch: its cameras, and its points inside its expanded cell.

    Points the patch gets only because its cameras see them far away (``points_seen_by_cameras``)
    are left out: they describe the neighbours, and would hide a patch whose own region differs.
    """
    from patchsplat.validate.stats import scene_statistics

    region = patch.point_indices[patch.expanded.contains(point_xy[patch.point_indices])]
    in_region = np.zeros(len(arrays.point_ids), dtype=bool)
    in_region[region] = True
    observations = int(in_region[arrays.obs_point[arrays.observations_of(patch.image_indices)]].sum())
    num_points = len(region)
    stats = scene_statistics(
        arrays.xyz[region],
        arrays.camera_centres[patch.image_indices],
        num_observations=observations,
        mean_track_length=observations / num_points if num_points else 0.0,
        mean_reprojection_error=float(arrays.error[region].mean()) if num_points else 0.0,
        config=config.model_copy(update={"nn_sample": sample}),
    )
    return stats.to_dict()


def _patch_workers(num_patches: int) -> int:
    """Threads writing patches at once: the usable cores, at most 4 (each holds a patch's buffers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores, num_patches))


def _write_patch(arrays: ModelArrays, patch: PatchPlan, patch_dir: Path, config: ValidateConfig, sample: int,
                 point_xy: np.ndarray) -> dict:
    """Write one patch's COLMAP model; its statistics."""
    written = write_model_subset(arrays, patch.image_indices, patch.point_indices, patch_dir / "sparse" / "0")
    if written != (len(patch.image_indices), len(patch.point_indices)):
        # The plan applies the same two-observation rule as the writer: a mismatch is a bug.
        raise RuntimeError(f"patch {patch.patch_id}: wrote {written}, planned {len(patch.image_indices), len(patch.point_indices)}")
    return patch_statistics(arrays, patch, config, sample, point_xy)


def _result(job: Future, jobs: list[Future]):
    """The job's result; if it failed (or the wait was interrupted), the jobs not started are cancelled
    so the split stops after those running, instead of writing patches that will be thrown away."""
    try:
        return job.result()
    except BaseException:
        for other in jobs:
            other.cancel()
        raise


def _describe(patch: PatchPlan, plan: SplitPlan, arrays: ModelArrays, statistics: dict, images_reference: str,
              heldout: set[str]) -> PatchDescription:
    """The description of a planned patch, with its measured ``statistics``."""
    image_names = tuple(arrays.image_names[i] for i in patch.image_indices)
    return PatchDescription(
        id=patch.patch_id,
        core_cell=patch.core,
        expanded_cell=patch.expanded,
        ground=plan.ground,
        images_dir=images_reference,
        image_names=image_names,
        # Held out for evaluation scene-wide (every 8th image of the whole scene by name), so
        # no patch trains on a view the merged scene is evaluated on.
        heldout_image_names=tuple(sorted(set(image_names) & heldout)),
        num_cameras=len(patch.image_indices),
        num_points=len(patch.point_indices),
        num_core_cameras=patch.num_core_cameras,
        num_core_points=patch.num_core_points,
        cameras_inside_expanded=patch.cameras_inside_expanded,
        cameras_by_visibility=patch.cameras_by_visibility,
        cameras_dropped_by_cap=patch.cameras_dropped_by_cap,
        statistics=statistics,
    )


def _images_reference(images_dir: Path, final_patch_dir: Path) -> str:
    relative = os.path.relpath(images_dir.resolve(), final_patch_dir.resolve())
    # A path that climbs out to the filesystem root is not portable anyway: keep it absolute.
    return relative if relative.count("..") <= 6 else str(images_dir.resolve())


def _small_patch_problems(plan: SplitPlan, config: SplitConfig) -> list[str]:
    problems = []
    for patch in plan.patches:
        if patch.num_core_cameras < config.min_cameras:
            problems.append(f"patch {patch.patch_id} has {patch.num_core_cameras} cameras in its core cell (split.min_cameras is {config.min_cameras})")
        if patch.num_core_points < config.min_points:
            problems.append(f"patch {patch.patch_id} has {patch.num_core_points} core points (split.min_points is {config.min_points})")
    return problems


def split_scene(
    scene_dir: Path,
    out_dir: Path,
    config: SplitConfig,
    stats_config: ValidateConfig,
    progress: bool = True,
    check_ids: Callable[[list[str]], None] | None = None,
    budget: SplitBudget | None = None,
) -> SplitResult:
    """Split the COLMAP scene in ``scene_dir`` into patches written to ``out_dir`` (complete or absent).

    ``check_ids`` sees the planned patch ids before anything is written and may raise to stop;
    ``budget`` is what one patch trains (``mode: auto``; see :func:`patchsplat.profiles.split_budget`).
    """
    from rich.progress import Progress

    from patchsplat.scene_layout import locate_scene
    from patchsplat.split.plot import plot_layout

    scene = locate_scene(scene_dir)
    inputs = (scene_dir, scene.images_dir, scene.model_dir)
    check_replaceable(out_dir, SPLIT, inputs)  # before the work: a refused folder costs nothing
    arrays = read_model_arrays(scene.model_dir)
    plan = plan_split(arrays, config, stats_config.robust_percentile, source=str(scene.model_dir), budget=budget)
    if check_ids is not None:
        check_ids([patch.patch_id for patch in plan.patches])
    warnings = _small_patch_problems(plan, config)
    if warnings and config.small_patch == "error":
        raise InputError("params.yaml", f"split: {warnings[0]}" + (f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""), kind="small_patch")

    heldout = set(heldout_names(arrays.image_names))
    points_xy = plan.point_xy
    # Per-patch NN statistics sample fewer points so the split's cost does not grow with the patch count.
    sample = max(2_000, stats_config.nn_sample // max(len(plan.patches), 1))
    descriptions: list[PatchDescription] = []
    with atomic_dir(out_dir, SPLIT, inputs) as tmp, Progress(disable=not progress, transient=True) as bar, \
            ThreadPoolExecutor(max_workers=_patch_workers(len(plan.patches))) as pool:
        task = bar.add_task("writing patches", total=len(plan.patches))
        # Patches are written and measured in parallel (numpy, file writes and the KD-tree release
        # the GIL); results are taken in patch order, so everything written after is deterministic.
        _ = arrays.obs_words  # computed once here, not by the first threads at the same time
        jobs = [pool.submit(_write_patch, arrays, patch, tmp / patch.patch_id, stats_config, sample, points_xy)
                for patch in plan.patches]
        for patch, job in zip(plan.patches, jobs):
            descriptions.append(_describe(patch, plan, arrays, _result(job, jobs),
                                          _images_reference(scene.images_dir, out_dir / patch.patch_id), heldout))
            bar.advance(task)
        SplitLayout(plan.ground, tuple(descriptions)).save(tmp)

        flags = flag_outlier_patches({d.id: d.statistics for d in descriptions}, config.extent_ratio, config.spacing_ratio)
        patch_rows = [{**description.split_row(), "flags": flags[description.id]} for description in descriptions]
        centres_xy = plan.ground.to_ground(arrays.camera_centres)
        plot_layout(
            tmp / LAYOUT_FILE, centres_xy, points_xy, plan.core_of_camera,
            [p.core for p in plan.patches], [p.expanded for p in plan.patches],
            [p.patch_id for p in plan.patches], plan.bounds, {pid for pid, why in flags.items() if why},
        )
        summary = {
            "scene": str(scene_dir),
            "mode": config.mode,
            "decision": plan.decision or f"{config.mode} mode: {len(plan.patches)} patches",
            "num_patches": len(plan.patches),
            "patch_ids": [p.patch_id for p in plan.patches],
            "up_method": plan.up_method,
            "world_to_aligned": plan.ground.to_list(),
            "bounds": plan.bounds.to_list(),
            "num_cameras": len(arrays.image_ids),
            "num_points": len(arrays.point_ids),
            "patches": patch_rows,
            "flagged": {pid: why for pid, why in flags.items() if why},
            "notes": plan.notes,
            "warnings": warnings,
        }
        write_json(tmp / SPLIT_FILE, summary)
    return SplitResult(plan, summary, warnings)
