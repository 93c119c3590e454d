"""Train the workspace's scene twice — as one patch and as its split — with one budget, and compare.

Both variants are trained by the pipeline's own functions (split, prepare, train, merge) in
``data/partition-check/{single,split}``, the split's patches with the single model's profile steps and
Gaussian budget shared among them (:mod:`.budget`), or, with ``budget="pipeline"``, each patch with the steps
and cap the profile gives it in a pipeline run (the price of splitting as a user pays it, in time as well as
dB). The user's ``patch_overrides`` do not apply: they are per patch of one split, and the check compares two.
Every step's output is complete or absent and training resumes from its checkpoints, so an interrupted check
continues where it stopped; a change of the settings or the scene starts it afresh (``check.json`` holds their
fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from patchsplat.atomic import atomic_file, write_json
from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import Params, SplitConfig
from patchsplat.errors import InputError
from patchsplat.partition_check.border import cells_seen, is_border
from patchsplat.partition_check.budget import patch_overrides
from patchsplat.partition_check.figure import worst_view_png
from patchsplat.partition_check.record import PartitionCheck, VariantSummary, ViewComparison
from patchsplat.workspace import Workspace

SINGLE, SPLIT = "single", "split"
FINGERPRINT_FILE = "check.json"


@dataclass(frozen=True)
class PartitionCheckConfig:
    """What the check trains and what it calls good enough."""

    # Training steps of the single model (and, shared, of the split's patches). None: the profile's
    # steps for the scene as one patch (preview on a CPU: 8 per training image in [500, 1500]).
    total_steps: int | None = None
    # How the split is trained. "steps": with the single model's budget, its steps shared among the patches in
    # proportion to their training images and its cap per SfM point (equal budgets: what splitting itself
    # costs). "pipeline": each patch with the steps and cap the training profile gives it, as `patchsplat run`
    # trains it (what a user's split costs against one model; the training times show the price in time).
    budget: Literal["steps", "pipeline"] = "steps"
    # With budget "steps": the split's steps are this many times the single model's, still shared in proportion to
    # the patches' training images (its Gaussian cap unchanged). 1 is the equal budget the target is set for; a
    # larger factor measures how many more steps the split needs to match one model (bench/RESULTS.md: 1.7-2.1x
    # on the demo's 2 x 2 split, a little over 2.5x on the 3 x 3 scene).
    split_steps_factor: float = 1.0
    # A held-out view is a border view when a second core cell holds at least this fraction of the SfM
    # points its image observes (split.visibility_fraction's default and measure: the split's notion of "sees").
    border_fraction: float = 0.1
    # The price of splitting allowed, dB of PSNR: merged at most this far below the single model overall...
    overall_target_db: float = 0.3
    # ... and on border views, where the seams are.
    border_target_db: float = 0.5

    def __post_init__(self) -> None:
        if not self.split_steps_factor > 0:
            raise InputError("--split-steps-factor", f"must be above 0, not {self.split_steps_factor:g}", kind="bad_value")
        if self.budget == "pipeline" and self.split_steps_factor != 1:
            raise InputError("--split-steps-factor", "applies to --budget steps only: the pipeline budget gives each "
                             "patch the profile's steps", kind="bad_value")


@dataclass(frozen=True)
class _Variant:
    name: str
    root: Path

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    def prepared(self, patch_id: str) -> Path:
        return self.root / "prepared" / patch_id

    def checkpoints(self, patch_id: str) -> Path:
        return self.root / "checkpoints" / patch_id

    @property
    def trained(self) -> Path:
        return self.root / "trained"

    @property
    def merged(self) -> Path:
        return self.root / "merged"


def _single_split(split: SplitConfig) -> SplitConfig:
    return split.model_copy(update={"mode": "grid", "rows": 1, "cols": 1, "small_patch": "warn"})


def settings_fingerprint(params: Params, model_dir: Path) -> str:
    """What a check's result depends on besides its own options: the split, train and merge settings and the scene."""
    sections = {name: getattr(params, name).model_dump(mode="json") for name in ("split", "train", "merge")}
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True).encode())
    for path in sorted(model_dir.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def current_partition_check(workspace: Workspace, params: Params) -> PartitionCheck | None:
    """The workspace's partition check when it was made with these settings on this scene, else None."""
    from patchsplat.scene_layout import locate_scene
    from patchsplat.scene_source import resolve_scene_dir

    if not workspace.partition_report.is_file() or not workspace.scene_dir.exists():
        return None
    record = PartitionCheck.load(workspace.partition_report)
    current = settings_fingerprint(params, locate_scene(resolve_scene_dir(workspace.scene_dir)).model_dir)
    return record if record.settings_fingerprint == current else None


def _start_or_resume(work_dir: Path, fingerprint: str, log: Callable[[str], None]) -> None:
    marker = work_dir / FINGERPRINT_FILE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fingerprint:
        log(f"resuming the check in {work_dir} (delete it to start afresh)")
        return
    if work_dir.exists():
        if not marker.is_file():
            raise InputError(work_dir, "exists but is not a partition check's work folder; move it away", kind="output_exists")
        log(f"settings or scene changed since the last check: starting afresh in {work_dir}")
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    write_json(marker, {"fingerprint": fingerprint})


def _forget_training_unless(variant: _Variant, overrides: dict[str, dict], log: Callable[[str], None]) -> None:
    """Keep the variant's training only if it was given these budgets (they follow from the single model's)."""
    marker = variant.root / "budgets.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == overrides:
        return
    if (variant.root / "trained").exists():
        log(f"{variant.name}: the budgets changed, training it afresh")
    for name in ("prepared", "checkpoints", "trained", "merged"):
        shutil.rmtree(variant.root / name, ignore_errors=True)
    write_json(marker, overrides)


def _check_splits_in_patches(arrays, params: Params, params_file: Path) -> None:
    from patchsplat.profiles import split_budget
    from patchsplat.split.plan import plan_split

    plan = plan_split(arrays, params.split, params.validate_.robust_percentile, source=str(params_file),
                      budget=split_budget(params.train, params.split.megapixels_per_patch))
    if len(plan.patches) < 2:
        raise InputError(params_file, "split makes one patch of this scene, so there is nothing to compare: set "
                         "split.mode grid with rows and cols, or a smaller split.megapixels_per_patch", kind="bad_value")


def _split(variant: _Variant, scene_dir: Path, split: SplitConfig, params: Params) -> list[str]:
    from patchsplat.profiles import split_budget
    from patchsplat.split import SplitLayout, split_scene

    if not (variant.patches / "split.json").is_file():
        split_scene(scene_dir, variant.patches, split, params.validate_, progress=False,
                    budget=split_budget(params.train, split.megapixels_per_patch))
    return SplitLayout.load(variant.patches).ids


def _train(variant: _Variant, patch_ids: list[str], overrides: dict[str, dict | None], params: Params,
           progress: bool, log: Callable[[str], None]) -> None:
    """Prepare and train every patch not trained yet."""
    from patchsplat.prepare import prepare_patch
    from patchsplat.profiles import PatchFacts, resolve_train
    from patchsplat.train.loop import train_patch

    for patch_id in patch_ids:
        trained = variant.trained / patch_id
        if (trained / "metrics.json").is_file():
            continue
        patch_dir = variant.patches / patch_id
        settings = resolve_train(params.train, PatchFacts.of_patch(patch_dir), overrides[patch_id], patch_id)
        if not (variant.prepared(patch_id) / "prepare.json").is_file():
            prepare_patch(patch_dir, variant.prepared(patch_id), settings.config, patch_id)
        log(f"{variant.name} {patch_id}: {settings.config.steps} steps, at most {settings.config.strategy.cap_max:,} Gaussians")
        train_patch(patch_dir, variant.prepared(patch_id), trained, settings.config, checkpoint_dir=variant.checkpoints(patch_id),
                    resume=True, progress=progress, log=lambda message, name=f"{variant.name} {patch_id}": log(f"{name}: {message}"),
                    profile=settings.profile, origins=settings.origins)


def _merge(variant: _Variant, params: Params) -> int:
    from patchsplat.merge import merge_patches

    report = variant.merged / "merge.json"
    if not report.is_file():
        merge_patches(variant.patches, variant.trained, variant.merged, params.merge)
    return int(json.loads(report.read_text(encoding="utf-8"))["num_gaussians"])


def _budget(variant: _Variant, patch_ids: list[str]) -> tuple[int, int]:
    """(steps, cap) summed over the variant's patches, as trained (settings.json of each)."""
    steps = caps = 0
    for patch_id in patch_ids:
        settings = json.loads((variant.trained / patch_id / "settings.json").read_text(encoding="utf-8"))["train"]
        steps += int(settings["steps"])
        caps += int(settings["strategy"]["cap_max"])
    return steps, caps


def _train_seconds(variant: _Variant, patch_ids: list[str]) -> float | None:
    """Training seconds summed over the variant's patches: each patch's steps at the rate its metrics.json measured
    (a resumed patch's rate is that of its last run). None when a patch has no rate (no step ran)."""
    from patchsplat.train.records import TrainedMetrics

    total = 0.0
    for patch_id in patch_ids:
        metrics = TrainedMetrics.load(variant.trained / patch_id / "metrics.json")
        if not metrics.steps_per_second:
            return None
        total += metrics.steps / metrics.steps_per_second
    return round(total, 1)


def _evaluate(variant: _Variant, scene, factor: int, keep: set[str]) -> dict:
    """The variant's merged splats scored on the scene's held-out views: name -> ViewResult."""
    from patchsplat.evaluate.images import evaluate_views
    from patchsplat.evaluate.report import load_merged_splats
    from patchsplat.render import select_backend

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    splats = {key: value.to(device) for key, value in load_merged_splats(variant.merged / "splats.ply").items()}
    views = evaluate_views(splats, scene.heldout, scene.frame, {}, keep_images=keep,
                           backend=select_backend("auto", device=device), device=device, resolution_factor=factor)
    return {view.name: view for view in views}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _train_both(single: _Variant, split: _Variant, scene_dir: Path, params: Params, config: PartitionCheckConfig,
                progress: bool, log: Callable[[str], None]) -> tuple[dict[str, list[str]], tuple[float | None, float | None]]:
    """Split and train both variants, the split with the single model's budget (or the profile's); their patch ids."""
    from patchsplat.profiles import PatchFacts

    split_ids = _split(split, scene_dir, params.split, params)
    single_ids = _split(single, scene_dir, _single_split(params.split), params)
    single_override = {"steps": config.total_steps} if config.total_steps else None
    _train(single, single_ids, {single_ids[0]: single_override}, params, progress, log)
    total_steps, total_cap = _budget(single, single_ids)
    facts = {patch_id: PatchFacts.of_patch(split.patches / patch_id) for patch_id in split_ids}
    if config.budget == "pipeline":
        overrides: dict[str, dict | None] = {patch_id: None for patch_id in split_ids}
    else:
        overrides = patch_overrides(round(total_steps * config.split_steps_factor), total_cap, {patch_id: fact.train_images for patch_id, fact in facts.items()},
                                    {patch_id: fact.initial_points for patch_id, fact in facts.items()},
                                    PatchFacts.of_patch(single.patches / single_ids[0]).initial_points)
    _forget_training_unless(split, overrides, log)
    _train(split, split_ids, overrides, params, progress, log)
    return {SINGLE: single_ids, SPLIT: split_ids}


def check_partition(workspace: Workspace, params: Params, config: PartitionCheckConfig = PartitionCheckConfig(),
                    progress: bool = True, log: Callable[[str], None] = print) -> PartitionCheck:
    """Train and compare both variants; write ``workspace.partition_report`` and ``partition_png``; return the record.

    Raises :class:`InputError` when the workspace has no scene yet or its split makes a single patch (and
    :class:`PartitionCheckConfig` when its step factor is not positive or comes with the pipeline budget)."""
    from patchsplat.evaluate.resolution import trained_factors
    from patchsplat.scene_layout import locate_scene
    from patchsplat.scene_source import resolve_scene_dir
    from patchsplat.scene_views import SceneCameras
    from patchsplat.split import SplitLayout

    if not workspace.scene_dir.exists():
        raise InputError(workspace.scene_dir, "no scene yet: run `patchsplat run` (or its scene stage) first", kind="missing_file")
    scene_dir = resolve_scene_dir(workspace.scene_dir)
    layout = locate_scene(scene_dir)
    arrays = read_model_arrays(layout.model_dir)
    _check_splits_in_patches(arrays, params, workspace.params_file)  # before anything of an earlier check is replaced
    work_dir = workspace.partition_check_dir
    fingerprint = settings_fingerprint(params, layout.model_dir)
    _start_or_resume(work_dir, hashlib.sha256(f"{fingerprint} {config.total_steps}".encode()).hexdigest(), log)
    single, split = _Variant(SINGLE, work_dir / SINGLE), _Variant(SPLIT, work_dir / SPLIT)

    ids = _train_both(single, split, scene_dir, params, config, progress, log)
    gaussians = {SINGLE: _merge(single, params), SPLIT: _merge(split, params)}

    scene = SceneCameras(layout.model_dir, layout.images_dir, arrays)
    split_layout = SplitLayout.load(split.patches)
    names = [camera.name for camera in scene.heldout]
    seen = cells_seen(arrays, split_layout, names)
    border_names = {name for name in names if is_border(seen[name], config.border_fraction)}
    factor = max([*trained_factors(single.trained).values(), *trained_factors(split.trained).values()])
    log(f"scoring {len(names)} held-out views ({len(border_names)} border views) in both")
    results = {variant.name: _evaluate(variant, scene, factor, border_names or set(names)) for variant in (single, split)}

    owners = dict(zip(names, split_layout.core_owners(np.stack([camera.centre for camera in scene.heldout]))))
    views = [_compare(name, owners[name], name in border_names, seen[name], results[SINGLE][name], results[SPLIT][name])
             for name in names]
    record = _record(params, config, scene_dir, factor, views, single, split, ids[SINGLE], ids[SPLIT], gaussians,
                     fingerprint)
    worst = next(view for view in views if view.name == record.worst_view)
    _write_png(workspace.partition_png, record, worst, results[SINGLE][worst.name], results[SPLIT][worst.name])
    record.save(workspace.partition_report)
    return record


def _compare(name: str, owner: str | None, border: bool, cells: dict[str, float], single, merged) -> ViewComparison:
    return ViewComparison(
        name=name, patch=owner, border=border, cells=cells,
        single_psnr=single.metrics["psnr"], merged_psnr=merged.metrics["psnr"],
        single_ssim=single.metrics["ssim"], merged_ssim=merged.metrics["ssim"],
        psnr_difference=merged.metrics["psnr"] - single.metrics["psnr"],
    )


def _record(params: Params, config: PartitionCheckConfig, scene_dir: Path, factor: int, views: list[ViewComparison],
            single: _Variant, split: _Variant, single_ids: list[str], split_ids: list[str], gaussians: dict[str, int],
            fingerprint: str) -> PartitionCheck:
    def summary(variant: _Variant, ids: list[str], key: str, psnr_of: Callable, ssim_of: Callable) -> VariantSummary:
        steps, cap = _budget(variant, ids)
        return VariantSummary(patches=len(ids), steps=steps, cap_max=cap, gaussians=gaussians[key],
                              train_seconds=_train_seconds(variant, ids),
                              psnr=float(np.mean([psnr_of(view) for view in views])),
                              ssim=float(np.mean([ssim_of(view) for view in views])))

    border = [view.psnr_difference for view in views if view.border]
    interior = [view.psnr_difference for view in views if not view.border]
    single_summary = summary(single, single_ids, SINGLE, lambda view: view.single_psnr, lambda view: view.single_ssim)
    merged_summary = summary(split, split_ids, SPLIT, lambda view: view.merged_psnr, lambda view: view.merged_ssim)
    difference = merged_summary.psnr - single_summary.psnr
    border_difference = _mean(border)
    worst = min((view for view in views if view.border or not border), key=lambda view: view.psnr_difference)
    split_config = params.split
    described = (f"grid {split_config.rows} x {split_config.cols}" if split_config.mode == "grid" else split_config.mode)
    return PartitionCheck(
        scene=str(scene_dir), split=f"{len(split_ids)} patches ({described}, overlap {split_config.overlap:g})",
        budget=config.budget, split_steps_factor=config.split_steps_factor,
        resolution_factor=factor, single=single_summary, merged=merged_summary,
        psnr_difference=difference, ssim_difference=merged_summary.ssim - single_summary.ssim,
        border_psnr_difference=border_difference, interior_psnr_difference=_mean(interior),
        num_views=len(views), num_border_views=len(border), worst_view=worst.name,
        overall_target_db=config.overall_target_db, border_target_db=config.border_target_db,
        within_target=difference >= -config.overall_target_db
        and (border_difference is None or border_difference >= -config.border_target_db),
        views=views, settings_fingerprint=fingerprint,
        definitions=[
            "single: the scene trained as one patch (split grid 1 x 1) with the training profile's steps and Gaussian "
            "cap for it; merged: the workspace's split, " + (
                ("its patches trained with those steps" if config.split_steps_factor == 1 else
                 f"its patches trained with {config.split_steps_factor:g} x those steps") +
                " shared in proportion to their training images and a Gaussian "
                "cap each of the single cap x the patch's SfM points / the scene's (so the merged scene may hold about "
                "as many as the single model: merging drops the overlap's)" if config.budget == "steps" else
                "each patch trained with the steps and Gaussian cap the training profile gives it, as a pipeline run "
                "trains it (budget: pipeline; the steps and training seconds of both are in single and merged)") +
            ", then merged by the merge stage; train.* settings as params.yaml has them, patch_overrides left out",
            "both are scored on the scene's held-out views (every 8th image sorted by name, never trained on), "
            f"rendered at 1/{factor} resolution; psnr and ssim as in reports/evaluation.json; differences are merged "
            "minus single, means over views",
            f"border view: a second core cell holds at least {config.border_fraction:g} of the SfM points its image "
            "observes (the view crosses a core-cell border)",
            f"within target: merged at most {config.overall_target_db:g} dB below single overall and "
            f"{config.border_target_db:g} dB on border views",
        ],
    )


def _write_png(path: Path, record: PartitionCheck, worst: ViewComparison, single, merged) -> None:
    kind = "worst border view" if worst.border else "worst view (no border view)"
    png = worst_view_png(
        f"{kind}: {worst.name}, merged - single {worst.psnr_difference:+.2f} dB "
        f"(overall {record.psnr_difference:+.2f} dB, {record.split})",
        single.truth, single.render, merged.render, f"{worst.single_psnr:.2f} dB", f"{worst.merged_psnr:.2f} dB")
    with atomic_file(path, suffix=".png") as tmp:
        tmp.write_bytes(png)
