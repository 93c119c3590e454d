"""Typed configuration: one model per ``params.yaml`` section, validated once at load.

``params.yaml`` is the single source of truth for every setting. Each stage reads
its own section through :func:`load_params`; an unknown key, a wrong type or an
out-of-range value stops the run with one line naming the key.
"""

from __future__ import annotations

from pathlib import Path
import typing
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from patchsplat.errors import InputError
from patchsplat.workspace import is_patch_id

DEFAULT_PARAMS = Path("params.yaml")


# A value echoed in an error line is cut to this many characters (the line must stay one readable line).
MAX_ECHOED_CHARS = 80
# A params file whose aliases (*name) would expand to more nodes than this is refused: a few lines of
# nested aliases ("billion laughs") otherwise expand into gigabytes.
MAX_EXPANDED_NODES = 100_000


def _takes_number(annotation: Any) -> bool:
    """Whether a field's type is (or holds) an int or a float: Optional[int], list[int], ..."""
    if annotation in (int, float):
        return True
    return any(_takes_number(arg) for arg in typing.get_args(annotation))


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, list) and any(isinstance(item, bool) for item in value))


class _Section(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must not be silently ignored. No setting means
    # anything at .inf or .nan (budgets, sizes, rates, thresholds), so non-finite floats are refused.
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `steps: true` as 1: a boolean where a number belongs is a mistake.
        if _holds_bool(value) and _takes_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean")
        return value


class DemoDefects(_Section):
    """Deliberate defects the demo generator can add, for tests and demonstrations. All off by default."""

    large_scale_region: float = Field(
        1.0, ge=1.0, le=4.0,
        description="Objects in the +x/+y quadrant are scaled by this factor and sampled more sparsely "
        "(the motivating 'patch with a larger extent'); 1.0 = off.",
    )
    outlier_points: int = Field(0, ge=0, description="Points placed 10-50x the scene extent away, each seen by 2 cameras.")
    missing_images: int = Field(0, ge=0, description="Registered images whose PNG is not written.")


class DemoSceneConfig(_Section):
    """The procedural demo scene: a textured ground plane with boxes and spheres, seen by cameras on paths and orbits."""

    seed: int = Field(0, ge=0, description="Everything generated is a deterministic function of this seed and the knobs below.")
    width: int = Field(160, ge=16, le=8192, description="Image width in pixels.")
    height: int = Field(120, ge=16, le=8192, description="Image height in pixels.")
    fov_deg: float = Field(60.0, gt=10.0, lt=150.0, description="Horizontal field of view of the (PINHOLE) camera.")
    num_cameras: int = Field(96, ge=4, le=100_000, description="Registered images.")
    extent: float = Field(24.0, gt=0.0, description="Side of the square ground area in metres; objects and cameras spread over it.")
    num_boxes: int = Field(10, ge=0, le=10_000)
    num_spheres: int = Field(6, ge=0, le=10_000)
    num_points: int = Field(30_000, ge=100, le=50_000_000, description="3D points in the sparse model (surface samples seen by >= 2 cameras).")
    max_track_length: int = Field(12, ge=2, le=1000, description="Cap on observations per point, as a real SfM track is limited.")
    noise_px: float = Field(0.5, ge=0.0, le=10.0, description="Std of the Gaussian noise added to 2D observations, in pixels.")
    point_noise: float = Field(0.0, ge=0.0, description="Std of the noise added to 3D point positions, in metres.")
    render_images: bool = Field(True, description="Write the PNG images. Off for model-only scenes (benchmarks).")
    defects: DemoDefects = DemoDefects()


class SceneConfig(_Section):
    """Where the scene comes from: the built-in demo (default) or a user's COLMAP folder."""

    source: Literal["demo", "colmap"] = "demo"
    colmap_path: Path | None = Field(
        None, description="A folder holding images/ and sparse/0 (or sparse/) when source is 'colmap'."
    )
    undistort: Literal["auto", "never"] = Field(
        "auto", description="With source 'colmap', cameras with lens distortion (COLMAP's default SIMPLE_RADIAL, "
        "OPENCV, fisheye models...): 'auto' writes an undistorted copy (PINHOLE cameras, resampled images) into "
        "data/scene, which the pipeline then reads; 'never' reads the folder as it is (training refuses such cameras).")
    demo: DemoSceneConfig = DemoSceneConfig()

    @model_validator(mode="after")
    def _path_matches_source(self) -> SceneConfig:
        if self.source == "colmap" and self.colmap_path is None:
            raise ValueError("source is 'colmap' but colmap_path is not set")
        return self


class ValidateConfig(_Section):
    """Thresholds of the validation stage."""

    check_images: bool = Field(True, description="Open and decode every registered image (the slow part on large scenes).")
    robust_percentile: float = Field(
        1.0, ge=0.0, lt=50.0,
        description="The robust extent spans the [p, 100-p] percentiles of the point coordinates.",
    )
    outlier_factor: float = Field(
        2.0, gt=0.0,
        description="A point is a far outlier if it lies beyond the robust box grown by this factor of its size on each side.",
    )
    min_points_per_image: int = Field(20, ge=0, description="Images observing fewer 3D points than this are flagged.")
    max_bogus_focal_ratio: float = Field(10.0, gt=1.0, description="Focal length / image size above this (or below its inverse) is bogus.")
    max_extra_param: float = Field(1.0, gt=0.0, description="Distortion parameters above this magnitude are bogus.")
    nn_sample: int = Field(100_000, ge=100, description="Points whose nearest-neighbour spacing is measured (all if fewer).")
    init_scale_factor: float = Field(1.0, gt=0.0, description="Recommended initial Gaussian scale = this x mean NN spacing (gsplat's init_scale).")
    max_listed_ids: int = Field(10, ge=1, description="How many ids a finding lists before saying 'and N more'.")


class SplitConfig(_Section):
    """How the scene is cut into overlapping patches (each trained on its own)."""

    mode: Literal["auto", "grid", "max_cameras"] = Field(
        "auto",
        description="auto: one patch for a compact capture (an object orbit, a forward-facing scene), else as many "
        "cells as the training images' megapixels need, balancing cameras and points (patchsplat.split.auto); "
        "grid: rows x cols cells with equal camera counts per column and per cell (quantile splits); "
        "max_cameras: split the most crowded cell in two until every cell holds at most max_cameras cameras.",
    )
    megapixels_per_patch: Optional[float] = Field(
        None, gt=0.0, description="auto mode: training megapixels (images x pixels at the training resolution) one patch "
        "holds. None: the training profile's (preview 3, full 400).")
    auto_min_patch_cameras: int = Field(24, ge=1, description="auto mode: at most one cell per this many cameras.")
    rows: int = Field(2, ge=1, le=64, description="grid mode: cells per column.")
    cols: int = Field(2, ge=1, le=64, description="grid mode: columns.")
    max_cameras: int = Field(40, ge=2, description="max_cameras mode: most camera centres a core cell may hold.")
    overlap: float = Field(
        0.0, ge=0.0, le=2.0,
        description="Expanded cell = core cell grown by this fraction of its size on each side; its cameras join the patch "
        "whatever they look at. 0: a patch has its core cell's cameras and those that see it (visibility_fraction), which "
        "measured better than 0.2 on every split scene (bench/RESULTS.md, issue 14).",
    )
    up: Literal["auto", "cameras", "pca", "z"] = Field(
        "auto",
        description="Gravity: cameras' mean up vector (image -y), PCA normal of the points, the model's +z, "
        "or auto (cameras when they agree, else pca).",
    )
    ground_axes: Literal["pca", "model"] = Field(
        "pca", description="Orientation of the grid on the ground: principal axes of the camera positions, or the model's own x axis."
    )
    visibility_fraction: float = Field(
        0.1, gt=0.0, le=1.0,
        description="A camera outside the expanded cell joins the patch if at least this fraction of the SfM points its image "
        "observes lie in the patch's core cell (what it sees, whatever the cell's size).",
    )
    max_cameras_per_patch: int = Field(0, ge=0, description="Cap on cameras per patch (0 = no cap); cameras inside the cell go first.")
    points_seen_by_cameras: bool = Field(
        True,
        description="Also give a patch every point seen by >= 2 of its cameras, wherever it lies (VastGaussian): "
        "its views show more than its cell, and without those points it cannot render them "
        "(measured on the demo: +2.6 dB held-out PSNR for the patch that lacked them).",
    )
    min_cameras: int = Field(8, ge=1, description="A patch with fewer cameras in its core cell is small (see small_patch).")
    min_points: int = Field(200, ge=1, description="A patch with fewer points in its core cell is small (see small_patch).")
    small_patch: Literal["warn", "error", "merge"] = Field("warn", description="What to do with a small patch.")
    extent_ratio: float = Field(
        1.5, gt=1.0,
        description="Flag a patch whose robust XYZ range (largest side) is this many times the median patch's (or less than 1/this).",
    )
    spacing_ratio: float = Field(
        1.3, gt=1.0,
        description="Flag a patch whose mean NN spacing ('mean scale') is this many times the median patch's (or less than 1/this). "
        "The motivating crash had 1.4x.",
    )


class StrategyConfig(_Section):
    """Densification: gsplat's MCMCStrategy (default) or DefaultStrategy, in canonical units.

    Step counts are iterations. Settings documented "None: the profile's" are chosen per patch by the
    training profile (:mod:`patchsplat.profiles`: preview scales them with the patch's steps and
    content; full is gsplat's recipe, refine 500..25k every 100 of 30k steps, cap 1M) unless written.
    """

    kind: Literal["mcmc", "default"] = Field("mcmc", description="mcmc: MCMCStrategy (relocation, a hard cap); default: clone/split/prune.")
    cap_max: Optional[int] = Field(
        None, ge=100, description="Most Gaussians a patch may hold (MCMC's cap; also the memory planner's). "
        "None: the profile's (preview: from the patch's content, full: 1M).")
    refine_start_iter: Optional[int] = Field(None, ge=0, description="None: the profile's.")
    refine_stop_iter: Optional[int] = Field(None, ge=0, description="None: the profile's.")
    refine_every: Optional[int] = Field(None, ge=1, description="None: the profile's.")
    # MCMC
    growth_rate: Optional[float] = Field(
        None, gt=0.0, le=1.0, description="MCMC: each refinement adds this fraction of the current count, up to cap_max "
        "(gsplat: 5 %). None: the profile's (preview: enough to reach the cap by 60 % of the steps).")
    noise_lr: float = Field(5e5, ge=0.0, description="MCMC: scale of the noise injected into low-opacity Gaussians' positions.")
    min_opacity: float = Field(0.005, gt=0.0, lt=1.0, description="MCMC: below this a Gaussian is dead and relocated.")
    opacity_reg: Optional[float] = Field(
        None, ge=0.0, description="MCMC: L1 penalty on opacities. None: the profile's (full: 0.01, gsplat's MCMC preset; "
        "preview: 0, see patchsplat.profiles.PreviewProfile).")
    scale_reg: float = Field(0.01, ge=0.0, description="MCMC: L1 penalty on scales (gsplat's MCMC preset).")
    # Default
    grow_grad2d: float = Field(0.0002, gt=0.0, description="default: image-space gradient above which a Gaussian is cloned or split.")
    prune_opa: float = Field(0.005, gt=0.0, lt=1.0, description="default: opacity below which a Gaussian is pruned.")
    reset_every: Optional[int] = Field(
        None, ge=1, description="default: opacity reset period (the reset 1.5.3 forgets is done). None: the profile's.")


class HealthConfig(_Section):
    """What the training monitor checks and when it calls a run failed.

    Every step: loss and every parameter group's gradients must be finite. Every
    ``check_every`` steps: gradient norms, Gaussian count and its trend, the fraction of
    near-transparent Gaussians, scale statistics and peak memory (all logged as metrics).
    """

    check_every: int = Field(50, ge=1)
    collapse_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Collapse: the Gaussian count falls below this fraction of its peak."
    )
    transparent_opacity: float = Field(0.01, gt=0.0, lt=1.0, description="A Gaussian below this opacity counts as near-transparent.")
    max_transparent_fraction: float = Field(
        0.98, gt=0.0, le=1.0, description="Collapse too: more than this fraction of Gaussians near-transparent."
    )
    min_scale_to_spacing: float = Field(
        0.05, gt=0.0,
        description="Vanishing scales: the median Gaussian scale is below this fraction of the points' median NN spacing "
        "(the motivating crash: an initial scale that did not fit the patch).",
    )
    max_scale: float = Field(1.0, gt=0.0, description="Exploding scales: the median Gaussian scale exceeds this (canonical units; the scene is 1).")
    max_grad_norm: float = Field(1e8, gt=0.0, description="A parameter group's gradient norm above this is a failure.")


class AppearanceConfig(_Section):
    """Per-image appearance correction while training (off by default).

    Real captures change exposure and white balance from photo to photo; trained as they are, a patch bakes
    those changes into its colours (view-dependent blotches, floaters) and neighbouring patches disagree at
    their borders. With this on, every training image of a patch gets an affine colour transform
    (3 x 3 matrix + offset, starting at identity), applied to the render before the loss only: the saved
    splats, held-out PSNR, evaluation and meshing all use the uncorrected render.
    """

    enabled: bool = Field(False, description="Learn one affine colour transform per training image (a capture whose "
                          "exposure or white balance changes between photos); off: the loss compares the render as it is.")
    lr: float = Field(
        1e-2, gt=0.0, le=1.0, description="Adam learning rate of the transforms (each is updated only on the steps "
        "that train on its image, 8 to 30 times per image in a preview run: a smaller rate learns too little, a larger one "
        "is noisy; measured in bench/RESULTS.md, 'Appearance correction').")
    reg: float = Field(
        1e-2, ge=0.0, description="Weight of the L2 penalty pulling each transform towards identity (squared distance of "
        "matrix and offset from identity/zero), so the scene's own colours do not drift into the transforms.")
    start_fraction: float = Field(
        0.25, ge=0.0, lt=1.0, description="The transforms are learnt from this fraction of the steps on (identity before): "
        "early renders (few, faint Gaussians) are far from every photo, and transforms learnt then make up for that "
        "instead of for the photo's exposure (measured on a demo patch with uneven photos, 300 steps: held-out PSNR "
        "20.33 dB from step 0, 20.59 dB from a quarter, 21.04 dB from a third; bench/RESULTS.md).")


class RecoveryStep(_Section):
    """One rung of a recovery ladder: how the next attempt differs from the failed one (factors multiply)."""

    init_scale_factor: float = Field(1.0, gt=0.0, description="Multiply init_scale (restarts from the initial points).")
    lr_factor: float = Field(1.0, gt=0.0, description="Multiply every learning rate (resumes from the last good state).")
    resolution_factor: int = Field(1, ge=1, description="Divide the image resolution by this much more (resumes).")
    cap_factor: float = Field(1.0, gt=0.0, le=1.0, description="Multiply the Gaussian cap (resumes).")


class RecoveryConfig(_Section):
    """On a detected failure, roll back and retry along the ladder of its kind; every attempt is recorded."""

    max_attempts: int = Field(6, ge=1, description="Attempts in all, the first included.")
    scale: list[RecoveryStep] = Field(
        default_factory=lambda: [RecoveryStep(init_scale_factor=2.0)] * 3,
        description="Vanishing scales or a rasterizer error (the motivating crash): initial scale x2, up to 3 times.",
    )
    nonfinite: list[RecoveryStep] = Field(
        default_factory=lambda: [RecoveryStep(lr_factor=0.5), RecoveryStep(lr_factor=0.5)],
        description="NaN/Inf loss or gradients, exploding scales: halve the learning rates.",
    )
    collapse: list[RecoveryStep] = Field(
        default_factory=lambda: [RecoveryStep(lr_factor=0.5), RecoveryStep(lr_factor=0.5)],
        description="The Gaussian count collapses: halve the learning rates.",
    )
    out_of_memory: list[RecoveryStep] = Field(
        default_factory=lambda: [RecoveryStep(resolution_factor=2), RecoveryStep(cap_factor=0.5)],
        description="Out of memory: half resolution, then half the Gaussian cap.",
    )


class TrainConfig(_Section):
    """Per-patch training settings. Any of them can be overridden for one patch under ``patch_overrides``.

    Lengths are in canonical units: each patch is moved and scaled so its cameras' centroid is
    the origin and its scene scale (1.1 x the largest camera distance from the centroid) is 1,
    so these defaults do not depend on the capture's units or extent. Settings documented "None: the
    profile's" are chosen per patch by ``profile`` (:mod:`patchsplat.profiles`) unless written here or
    in the patch's override; the others' defaults are gsplat's simple_trainer recipe in these units.
    """

    init_scale: float = Field(
        1.0, gt=0.0, le=100.0,
        description="Initial Gaussian scale = this x each point's NN spacing (sqrt of the mean squared distance "
        "to its knn_neighbours nearest points), gsplat's init_scale convention.",
    )
    knn_neighbours: int = Field(3, ge=1, le=64, description="Neighbours used for the initial scale.")
    init_opacity: float = Field(0.1, gt=0.0, lt=1.0, description="Initial opacity of every Gaussian.")
    max_initial_points: int = Field(0, ge=0, description="Keep at most this many SfM points as initial Gaussians (0 = all; deterministic subsample).")

    profile: Literal["auto", "preview", "full"] = Field(
        "auto", description="Where the settings left None come from (patchsplat.profiles): preview (sized for a CPU), "
        "full (gsplat's recipe, for a GPU), auto (full on a CUDA machine, else preview).")
    seed: int = Field(0, ge=0, description="Initial rotations, view order and the strategies' randomness follow from it.")
    steps: Optional[int] = Field(
        None, ge=1, description="Optimisation steps (one image each). None: the profile's (preview: 8 per training "
        "image in [500, 1500]; full: 30k x max(1, images / 300)).")
    backend: Literal["auto", "torch", "gsplat"] = Field(
        "auto", description="Rasterizer: gsplat's CUDA kernels on a GPU, patchsplat's pure-torch one otherwise (auto picks)."
    )
    sh_degree: int = Field(3, ge=0, le=4, description="Final spherical-harmonics degree of the colours.")
    sh_degree_interval: Optional[int] = Field(None, ge=1, description="One SH band is added every this many steps. None: the profile's.")
    ssim_lambda: float = Field(0.2, ge=0.0, le=1.0, description="loss = (1 - this) L1 + this (1 - SSIM).")
    overlap_view_weight: float = Field(
        1.0, ge=0.0, le=1.0,
        description="How often a training view is picked, for the part of it that sees outside the patch's core cell: "
        "its weight is c + (1 - c) x this, c the fraction of the SfM points it observes inside the core. 1: every "
        "view as often (a single patch is all core, so this changes nothing there); lower spends a split patch's "
        "steps on what it keeps, since merging drops its Gaussians outside the core.")
    means_lr: float = Field(1.6e-4, gt=0.0, description="Decays exponentially to means_lr_final_factor x this by the last step.")
    means_lr_final_factor: float = Field(0.01, gt=0.0, le=1.0)
    scales_lr: Optional[float] = Field(None, gt=0.0, description="None: the profile's (full: 5e-3; preview: 4x that).")
    opacities_lr: Optional[float] = Field(None, gt=0.0, description="None: the profile's (full: 5e-2; preview: 4x that).")
    quats_lr: float = Field(1e-3, gt=0.0)
    sh0_lr: float = Field(2.5e-3, gt=0.0)
    shN_lr: float = Field(2.5e-3 / 20, gt=0.0)
    lr_scale: Optional[float] = Field(
        None, gt=0.0, description="Multiplies the six learning rates above (not the appearance's). None: the profile's "
        "(full 1, gsplat's recipe; preview sqrt(1000 / steps) in [1, 2]: a shorter run wants larger steps).")
    max_image_size: Optional[int] = Field(
        None, ge=16, description="Longest image side trained on, in pixels: images are downscaled by the smallest integer "
        "factor that fits. None: the profile's (preview 400, full 1600).")
    resolution_factor: Optional[int] = Field(
        None, ge=1, le=64, description="Train on images downscaled by this factor (the memory planner may raise it). "
        "None: from max_image_size.")
    image_cache: int = Field(64, ge=1, description="Decoded images kept in memory (least recently used evicted); on the CPU.")
    memory_budget_gb: float = Field(16.0, gt=0.0, description="Peak memory training may use; the resolution and cap are chosen to fit.")
    bf16: bool = Field(False, description="bf16 autocast outside the rasterizer; the loss is always computed in fp32.")
    deterministic: bool = Field(True, description="On the CPU: the same settings and seed give the same splats bit for bit at any thread count, uninterrupted or killed and resumed (torch's deterministic algorithms). On a GPU gsplat's kernels add gradients atomically: close, not bit-exact.")
    eval_every: Optional[int] = Field(None, ge=1, description="Held-out PSNR/SSIM every this many steps (and at the end). None: the profile's.")
    checkpoint_every: Optional[int] = Field(
        None, ge=1, description="Atomic checkpoint every this many steps (and at milestones and the end). None: the profile's.")
    milestones: list[int] = Field(default_factory=list, description="Extra steps at which a checkpoint is kept for good.")
    strategy: StrategyConfig = StrategyConfig()
    health: HealthConfig = HealthConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    appearance: AppearanceConfig = AppearanceConfig()


# The formats `patchsplat export` writes (patchsplat.export has what each stores): the INRIA PLY, antimatter15's
# .splat, Niantic's SPZ, glTF 2.0 with KHR_gaussian_splatting (.glb).
ExportFormat = Literal["ply", "splat", "spz", "gltf"]


class MergeConfig(_Section):
    """Merging the patches: each patch keeps the Gaussians whose centre lies in its core cell."""

    min_opacity: float = Field(0.0, ge=0.0, lt=1.0, description="Also drop Gaussians below this opacity (0 keeps all).")
    export_formats: list[ExportFormat] = Field(
        default_factory=list, description="Also write the merged scene as data/merged/splats.<ext> in these formats "
        "(splat -> .splat, spz -> .spz, gltf -> .glb; ply is always written). Default: none.")


class MeshConfig(_Section):
    """Mesh extraction: per patch, TSDF fusion of rendered expected depth and colour from the training views,
    marching cubes, crop to the core cell; then one mesh without small floating pieces.

    Left unset, the voxel size, depth truncation and grid come from where the surfaces are: the depths of
    the SfM points each training view observes (src/patchsplat/mesh/defaults.py has the rules and the
    measurements behind them), so an object orbit, a room seen from inside, a forward-facing capture and
    a drone flight all mesh without manual settings. mesh.json says, per patch, what was chosen and why.
    """

    voxel_size: Optional[float] = Field(
        None, gt=0.0, description="TSDF voxel in world units, used as given (a grid over memory_budget_gb is then refused). "
        "None: voxel_pixels pixels' footprint at the patch's median observed point depth, at the fusion resolution, "
        "coarsened if the grid would not fit memory_budget_gb."
    )
    voxel_pixels: float = Field(
        2.0, gt=0.0, le=64.0, description="Automatic voxel = the footprint of this many pixels of the rendered depth at "
        "the median depth of the points the training views observe (smaller: finer mesh, more memory and time). "
        "Default 2 (measured in mesh/defaults.py).")
    voxels_per_scene: Optional[int] = Field(
        None, ge=16, le=4096, description="The rule before surface-based defaults, kept for existing params files: "
        "voxel = the patch's scene scale (its camera spread) / this, coarsened like the automatic voxel if the grid "
        "would not fit. None (default): the automatic voxel. voxel_size wins over it.")
    sdf_trunc_voxels: float = Field(5.0, gt=0.0, description="Truncation distance in voxels (2DGS/PGSR: 5).")
    depth_trunc: Optional[float] = Field(
        None, gt=0.0, description="Ignore rendered depths beyond this (world units), every view. None: per training view, "
        "the 98th percentile of the depths of the SfM points it observes (or of all the patch's views, if larger) x 1.5 "
        "(mesh/defaults.py)."
    )
    memory_budget_gb: float = Field(
        2.0, ge=0.01, description="Most memory one patch's TSDF grid may take while it is fused and marched (GiB, "
        "36 bytes a voxel, measured). An automatic voxel whose grid would exceed it is coarsened until it fits "
        "(mesh.json and the stage's output say so); an explicit voxel_size that does not fit is refused.")
    min_alpha: float = Field(0.5, gt=0.0, le=1.0, description="Pixels with accumulated opacity below this are not fused.")
    min_component_fraction: float = Field(
        0.02, ge=0.0, lt=1.0, description="Connected pieces with fewer faces than this fraction of the largest are removed."
    )
    resolution_factor: Optional[int] = Field(
        None, ge=1, le=64, description="Render the views at this integer downscale for fusion. None: the factor each patch "
        "was trained at (resolution_factor in data/trained/pN/metrics.json; 1 when there is none), so meshing never "
        "renders more pixels than training did.")


class EvaluateConfig(_Section):
    """Evaluation of the merged scene on the held-out views, and of the mesh."""

    fscore_threshold: float = Field(
        0.005, gt=0.0, description="F-score distance threshold as a fraction of the scene extent (diagonal of the reference box)."
    )
    mesh_samples: int = Field(200_000, ge=1000, description="Points sampled on each mesh for Chamfer distance and F-score.")
    grid_views: int = Field(6, ge=1, description="Held-out views shown in the comparison grid PNG.")
    lpips: bool = Field(True, description="Report LPIPS if its network weights are available offline (else: unavailable).")
    resolution_factor: Optional[int] = Field(
        None, ge=1, le=64, description="Render the held-out views and downscale their photos (box filter, as training "
        "does) by this integer factor. None: the largest factor any patch was trained at (data/trained/pN/metrics.json; "
        "1 when there is none): one resolution for every view, never more pixels than training used. The report and "
        "the grid say the resolution.")


class TrackingConfig(_Section):
    """MLflow: where runs go. The default is a SQLite file in the workspace; MLFLOW_TRACKING_URI wins."""

    enabled: bool = True
    tracking_uri: Optional[str] = Field(None, description="None: sqlite:///mlflow.db in the workspace (or MLFLOW_TRACKING_URI).")
    artifact_dir: str = Field("mlartifacts", description="Artifacts of the default store, relative to the workspace.")
    experiment: str = "patchsplat"


class OrchestrationConfig(_Section):
    """The Prefect flow (``patchsplat run``): how patches are trained side by side, retries, where.

    No stage depends on this section, so changing it never makes DVC rerun anything.
    """

    max_concurrent_patches: int = Field(
        0, ge=0, description="Patches trained at once (0: one per CPU core, or one per GPU when training on GPUs). "
        "With a Dask cluster the cluster's workers bound it too.")
    patch_retries: int = Field(
        1, ge=0, le=10, description="Prefect retries of a patch whose training failed after its own recovery ladder "
        "(a retry resumes from the patch's last checkpoint; useful for lost workers and transient out-of-memory).")
    stage_retries: int = Field(0, ge=0, le=10, description="Prefect retries of the other stages.")
    retry_delay_seconds: float = Field(10.0, ge=0.0, description="Wait before a retry.")
    task_runner: Literal["local", "dask"] = Field(
        "local", description="local: patches train in processes on this machine; dask: on a Dask cluster (prefect-dask). "
        "Workers must see this workspace at the same path (shared storage), see the README.")
    dask_address: Optional[str] = Field(
        None, description="task_runner dask: the scheduler's address (tcp://host:8786); None starts a local cluster "
        "of max_concurrent_patches single-threaded worker processes.")


class Params(_Section):
    """The whole ``params.yaml``."""

    scene: SceneConfig = SceneConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    merge: MergeConfig = MergeConfig()
    mesh: MeshConfig = MeshConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    patch_overrides: dict[str, Optional[dict[str, Any]]] = Field(
        default_factory=dict,
        description="One key per patch id (p0, p1, ...; kept in sync with the split by `patchsplat repro`), "
        "each holding train settings that apply to that patch only.",
    )

    def train_settings(self, patch_id: str) -> TrainConfig:
        """``train`` with the patch's override applied; settings left to the profile stay None (see resolved_train)."""
        return TrainConfig.model_validate(deep_merge(self.train.model_dump(), self.patch_overrides.get(patch_id) or {}))

    def resolved_train(self, patch_id: str, patch_dir: Path, profile: str | None = None):
        """The settings one patch trains with: defaults < profile < ``train`` < its override
        (a :class:`patchsplat.profiles.ResolvedTrain`: the config, the profile, where each value came from)."""
        from patchsplat.profiles import PatchFacts, resolve_train

        return resolve_train(self.train, PatchFacts.of_patch(patch_dir), self.patch_overrides.get(patch_id), patch_id, profile)

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, populate_by_name=True, allow_inf_nan=False)


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` applied key by key, recursing into nested sections (so
    ``{strategy: {cap_max: 1000}}`` changes one setting, not the whole strategy)."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _echo(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_ECHOED_CHARS else f"{text[:MAX_ECHOED_CHARS]}... ({len(text)} characters)"


def _format_validation_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    key = key.replace("validate_", "validate")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        message = f"{message} (got {_echo(first['input'])})"
    more = f" (and {len(error.errors()) - 1} more problems)" if len(error.errors()) > 1 else ""
    return f"{key}: {message}{more}"


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raise :class:`InputError` with one line naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(source, "must be a mapping of sections (scene:, validate:, ...)", kind="bad_params")
    try:
        params = Params.model_validate(data)
    except ValidationError as error:
        raise InputError(source, _format_validation_error(source, error), kind="bad_params") from None
    for patch_id, override in params.patch_overrides.items():
        if not is_patch_id(patch_id):
            raise InputError(source, f"patch_overrides.{patch_id}: not a patch id (p0, p1, ...)", kind="bad_params")
        try:
            TrainConfig.model_validate(deep_merge(params.train.model_dump(), override or {}))
        except ValidationError as error:
            message = _format_validation_error(source, error)
            raise InputError(source, f"patch_overrides.{patch_id}.{message}", kind="bad_params") from None
    return params


class ParamsLoader(yaml.SafeLoader):
    """Safe YAML that also refuses a key written twice in one mapping (plain YAML keeps the last, so a second
    ``train:`` section silently drops the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` keys may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the constructor itself refuses it
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_echo(key)} (first at line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_nodes(node: yaml.Node, limit: int) -> int:
    """How many nodes ``node`` stands for once every alias is expanded, counting up to just past ``limit``.
    Each node's size is computed once (aliases share node objects), so this is quick even for a bomb."""
    sizes: dict[int, int] = {}

    def size(current: yaml.Node) -> int:
        if id(current) in sizes:
            return sizes[id(current)]
        sizes[id(current)] = limit + 1  # a recursive alias counts as too large
        total = 1
        if isinstance(current, yaml.SequenceNode):
            total += sum(size(child) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in current.value)
        sizes[id(current)] = total = min(total, limit + 1)
        return total

    return size(node)


def _parse_yaml(text: str, path: Path) -> Any:
    loader = ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise InputError(path, f"its aliases (*name) expand to more than {MAX_EXPANDED_NODES} values: refused",
                             kind="bad_params")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_yaml_text(path: Path, what: str) -> str:
    if not path.exists():
        raise InputError(path, f"{what} not found", kind="missing_file")
    if path.is_dir():
        raise InputError(path, f"is a folder, not a {what}", kind="bad_params")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(path, f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start})",
                         kind="bad_params") from None
    except OSError as error:
        raise InputError(path, error.strerror or str(error), kind="bad_params") from None


def read_yaml(path: str | Path, what: str = "params file") -> Any:
    """The data of a YAML file patchsplat reads (params.yaml, dvc.lock): safe YAML only, no duplicate keys,
    aliases within reason; anything else is a one-line InputError naming the file (and the line)."""
    path = Path(path)
    text = _read_yaml_text(path, what)
    try:
        return _parse_yaml(text, path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or ""
        detail = f": {problem}" if problem.startswith("duplicate key") else ""
        raise InputError(path, f"not valid YAML{where}{detail}", kind="bad_params") from None
    except RecursionError:
        raise InputError(path, "nested too deeply", kind="bad_params") from None


def parse_yaml_value(text: str, where: str) -> Any:
    """One value written on the command line as YAML (``0.3``, ``true``, ``[1, 2]``), read like params.yaml."""
    try:
        return _parse_yaml(text, Path(where))
    except yaml.YAMLError:
        raise InputError(where, f"{_echo(text)} is not a valid YAML value", kind="bad_params") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml`` (see :func:`read_yaml`)."""
    return parse_params(read_yaml(path), str(path))


def parse_section_overrides(section: str, base: BaseModel | None, **overrides: Any) -> Any:
    """Section ``section`` of the params (``base``, or its defaults) with the non-None ``overrides``
    applied and re-validated; a bad value is a one-line InputError naming ``section.key``."""
    model = Params.model_fields[section].annotation if section in Params.model_fields else None
    if model is None:
        raise KeyError(section)
    values = (base.model_dump() if base is not None else {}) | {k: v for k, v in overrides.items() if v is not None}
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise InputError(f"{section}.{_format_validation_error(section, error)}", "", kind="bad_params") from None

