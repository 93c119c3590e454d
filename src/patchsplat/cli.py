"""The ``patchsplat`` command line. Commands are thin: the work lives in the library modules."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from patchsplat.config import DEFAULT_PARAMS, load_params
from patchsplat.console import console, guarded
from patchsplat.errors import InputError, PatchsplatError, PipelineFailed
from patchsplat.workspace import Workspace

app = typer.Typer(
    name="patchsplat",
    help="COLMAP reconstruction -> validated patches -> Gaussian splats, mesh and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error (also PATCHSPLAT_DEBUG=1).")] = False,
) -> None:
    """COLMAP reconstruction -> validated patches -> Gaussian splats, mesh and evaluation."""
    if debug:
        import os

        from patchsplat.console import DEBUG_ENV

        # The environment, not a flag in memory: the stage processes run/repro start inherit it.
        os.environ[DEBUG_ENV] = "1"


ParamsOption = Annotated[Path, typer.Option("--params", help="The params.yaml to read settings from.")]


@app.command("demo-scene")
def demo_scene(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the scene into (images/, sparse/0, mesh, manifest).")],
    params: ParamsOption = DEFAULT_PARAMS,
    seed: Annotated[Optional[int], typer.Option(help="Override scene.demo.seed.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Override scene.demo.width.")] = None,
    height: Annotated[Optional[int], typer.Option(help="Override scene.demo.height.")] = None,
    num_cameras: Annotated[Optional[int], typer.Option(help="Override scene.demo.num_cameras.")] = None,
    num_points: Annotated[Optional[int], typer.Option(help="Override scene.demo.num_points.")] = None,
    extent: Annotated[Optional[float], typer.Option(help="Override scene.demo.extent (metres).")] = None,
    images: Annotated[Optional[bool], typer.Option("--images/--no-images", help="Render the PNG images (off: model only).")] = None,
) -> None:
    """Generate the built-in procedural demo scene (deterministic from its seed)."""

    def run() -> None:
        from patchsplat.demo import generate_demo_scene, with_overrides

        base = load_params(params).scene.demo if params.exists() or params != DEFAULT_PARAMS else None
        config = with_overrides(
            base,
            seed=seed, width=width, height=height, num_cameras=num_cameras,
            num_points=num_points, extent=extent, render_images=images,
        )
        manifest = generate_demo_scene(config, out_dir)
        console.print(
            f"demo scene: {manifest['num_images']} images, {manifest['num_points']} points, "
            f"{manifest['num_observations']} observations -> {out_dir}"
        )

    guarded(run)


@app.command("validate")
def validate(
    scene_dir: Annotated[Path, typer.Argument(help="A COLMAP folder: images/ plus sparse/0 (or sparse/).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the JSON report (never inside the scene).")] = Path("validation.json"),
    params: ParamsOption = DEFAULT_PARAMS,
    skip_images: Annotated[bool, typer.Option("--skip-images", help="Do not open the image files (model checks only).")] = False,
    undistort: Annotated[Optional[Path], typer.Option("--undistort", help="Also write an undistorted copy of the scene (PINHOLE cameras) to this folder.")] = None,
) -> None:
    """Check a COLMAP scene and write a validation report with its statistics."""

    def run() -> None:
        from patchsplat.config import ValidateConfig
        from patchsplat.validate import run_validation

        config = load_params(params).validate_ if params.exists() else ValidateConfig()
        run_validation(scene_dir, out, config, skip_images=skip_images, undistort_dir=undistort)

    guarded(run)


@app.command("split")
def split(
    scene_dir: Annotated[Path, typer.Argument(help="A COLMAP folder: images/ plus sparse/0 (or sparse/).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the patches into (replaced atomically).")] = Workspace().patches_dir,
    params: ParamsOption = DEFAULT_PARAMS,
    mode: Annotated[Optional[str], typer.Option(help="Override split.mode (auto | grid | max_cameras).")] = None,
    rows: Annotated[Optional[int], typer.Option(help="Override split.rows.")] = None,
    cols: Annotated[Optional[int], typer.Option(help="Override split.cols.")] = None,
    max_cameras: Annotated[Optional[int], typer.Option(help="Override split.max_cameras.")] = None,
    overlap: Annotated[Optional[float], typer.Option(help="Override split.overlap.")] = None,
) -> None:
    """Split a scene into overlapping patches, each a standalone COLMAP model, and compare them."""

    def run() -> None:
        from patchsplat.config import parse_section_overrides
        from patchsplat.split import split_scene
        from patchsplat.split.report import print_split_table

        settings = load_params(params) if params.exists() or params != DEFAULT_PARAMS else None
        split_config = parse_section_overrides(
            "split", settings.split if settings else None,
            mode=mode, rows=rows, cols=cols, max_cameras=max_cameras, overlap=overlap,
        )
        validate_config = settings.validate_ if settings else None
        from patchsplat.config import ValidateConfig

        from patchsplat.config import TrainConfig
        from patchsplat.profiles import split_budget

        budget = split_budget(settings.train if settings else TrainConfig(), split_config.megapixels_per_patch)
        result = split_scene(scene_dir, out_dir, split_config, validate_config or ValidateConfig(), budget=budget)
        print_split_table(result.summary)
        console.print(f"patches and layout.png written to {out_dir}")

    guarded(run)


@app.command("train")
def train(
    patch_dir: Annotated[Path, typer.Argument(help="A patch folder written by `patchsplat split` (sparse/0 + patch.json).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: PATCH_DIR/trained).")] = None,
    params: ParamsOption = DEFAULT_PARAMS,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of the same run, if any.")] = False,
    steps: Annotated[Optional[int], typer.Option(help="Override train.steps.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Override train.backend (auto | torch | gsplat).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Override train.profile (auto | preview | full).")] = None,
    patch_id: Annotated[Optional[str], typer.Option("--patch-id", help="Apply params.yaml's patch_overrides of this id (default: the folder's name).")] = None,
) -> None:
    """Train one patch: splats (3DGS PLY), metrics, curve, held-out view, checkpoints; recovers from failures."""

    def run() -> None:
        from patchsplat.config import Params, parse_section_overrides
        from patchsplat.prepare import prepare_patch
        from patchsplat.train.stage import train_patch_stage

        settings = load_params(params) if params.exists() or params != DEFAULT_PARAMS else Params()
        identifier = patch_id or patch_dir.name
        base = settings.train_settings(identifier) if identifier in settings.patch_overrides else settings.train
        config = parse_section_overrides("train", base, steps=steps, backend=backend, profile=profile)
        out = out_dir or patch_dir / "trained"
        prepared = out.parent / f"{out.name}.prepared"
        from patchsplat.output_folder import TRAIN, check_replaceable
        from patchsplat.train.loop import training_inputs

        from patchsplat.train.data import check_patch_images

        check_replaceable(out, TRAIN, training_inputs(patch_dir, prepared))  # before anything is written
        check_patch_images(patch_dir)
        prepare_patch(patch_dir, prepared, config, identifier)
        from patchsplat.profiles import PatchFacts, resolve_train
        from patchsplat.train.loop import TrainingInterrupted

        try:
            train_patch_stage(identifier, patch_dir=patch_dir, prepared_dir=prepared, out_dir=out,
                              checkpoint_dir=out.parent / f"{out.name}.checkpoints",
                              settings=resolve_train(config, PatchFacts.of_patch(patch_dir)),
                              tracking=settings.tracking, resume=resume)
        except TrainingInterrupted as interrupted:
            raise TrainingInterrupted(f"{interrupted}; continue with the same command and --resume",
                                      interrupted.exit_status - 128) from None
        console.print(f"outputs in {out}")

    guarded(run)


@app.command("merge")
def merge(
    patches_dir: Annotated[Path, typer.Argument(help="The split's output folder (split.json + one folder per patch).")] = Workspace().patches_dir,
    trained_dir: Annotated[Path, typer.Argument(help="Folder holding <patch id>/splats.ply for every patch.")] = Workspace().trained_dir,
    out_dir: Annotated[Path, typer.Argument(help="Where the merged splats.ply and merge.json go.")] = Workspace().merged_dir,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Merge trained patches into one scene PLY, each patch keeping the Gaussians of its core cell."""

    def run() -> None:
        from patchsplat.config import MergeConfig
        from patchsplat.merge import merge_patches, print_merge_table

        config = load_params(params).merge if params.exists() or params != DEFAULT_PARAMS else MergeConfig()
        print_merge_table(merge_patches(patches_dir, trained_dir, out_dir, config))

    guarded(run)


@app.command("export")
def export_command(
    workspace: Annotated[Path, typer.Argument(help="The workspace (its data/merged/splats.ply, or a patch's with --patch).")],
    out: Annotated[Path, typer.Argument(help="The file to write: .ply, .splat, .spz or .glb.")],
    format: Annotated[Optional[str], typer.Option("--format", help="ply | splat | spz | gltf (default: from OUT's extension).")] = None,
    patch: Annotated[Optional[str], typer.Option("--patch", help="Export this patch's trained splats instead of the merged scene.")] = None,
) -> None:
    """Export the merged scene (or one patch) for viewers: PLY, .splat, SPZ or glTF (.glb, KHR_gaussian_splatting)."""

    def run() -> None:
        from patchsplat.export import export_file, format_of, source_splats

        result = export_file(source_splats(workspace, patch), format_of(out, format), out)
        dropped = f"; {result.n_dropped} with non-finite values left out" if result.n_dropped else ""
        console.print(f"{result.path}: {result.n_written} Gaussians as {result.format}{dropped}", markup=False)

    guarded(run)


@app.command("repro", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def repro_command(
    ctx: typer.Context,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Patches trained at once (sharing the CPU cores); 0 = one per CPU core.")] = 0,
) -> None:
    """Run the pipeline (dvc repro), first re-syncing the patch ids in params.yaml with the split.

    Use this instead of plain `dvc repro` after changing the split settings: it also removes the
    outputs and dvc.lock entries of patches that no longer exist. Extra arguments go to dvc repro.
    """

    def run() -> None:
        import os

        from patchsplat.orchestrate import interrupts
        from patchsplat.orchestrate.repro import ReproRecords, repro

        workspace = Workspace()
        load_params(workspace.params_file)  # bad params: one line before dvc starts (it would run the validate stage first)
        _sync_workspace(workspace)
        records = ReproRecords()
        # Ctrl-C/SIGTERM: the dvc processes stop (training saves a checkpoint), one line naming the
        # stages the interrupt stopped (their records say so), exit 130/143.
        result = interrupts.run(lambda: repro(workspace, tuple(ctx.args), jobs=jobs or os.cpu_count() or 1, records=records),
                                "patchsplat repro", interrupted_stages=records.interrupted)
        if result.changed:
            console.print(f"patch ids re-synced: {len(result.old_ids)} -> {len(result.new_ids)} patches")
        for path in result.removed_outputs:
            console.print(f"removed stale output {path}")
        for entry in result.removed_lock_entries:
            console.print(f"removed stale dvc.lock entry {entry}")

    guarded(run)


def _run_flow(**arguments) -> dict:
    """The ``reconstruct`` flow; a failed run becomes the one-line error it carries."""
    from patchsplat.orchestrate.flow import run_pipeline
    from patchsplat.orchestrate.prefect_api import start_temporary_server

    load_params(Workspace(Path(arguments.get("workspace", "."))).params_file)  # bad params: one line before Prefect starts
    start_temporary_server()  # where a Ctrl-C cannot kill it (see patchsplat.orchestrate.prefect_api)
    return run_pipeline(**arguments)


def _show_comparison(tracking, run_ids: list[str], out: Path) -> Path:
    """Print the comparison of these runs (from the workspace's tracking store) and write its PNG."""
    from patchsplat import compare
    from patchsplat.tracking import tracking_uri

    comparison = compare.load_comparison(tracking_uri(tracking, Path(".")), tracking.experiment, run_ids)
    compare.print_comparison(comparison)
    return compare.write_comparison_png(comparison, out)


@app.command("run")
def run_command(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The patchsplat workspace (params.yaml, dvc.yaml).")] = Path("."),
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Patches trained at once (overrides orchestration.max_concurrent_patches; 0 = one per core/GPU).")] = None,
    dask: Annotated[Optional[str], typer.Option("--dask", help="Train patches on this Dask scheduler (tcp://host:8786), or 'local' for a local cluster.")] = None,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the run's summary (every stage's outcome and seconds) to this JSON file, for scripts.")] = None,
) -> None:
    """Run the pipeline as the Prefect flow `reconstruct` (DVC-consistent: a second run with nothing changed does nothing)."""

    def run() -> None:
        load_params(Workspace(workspace).params_file)  # bad params: one line before anything changes
        _sync_workspace(Workspace(workspace))
        arguments: dict = {"workspace": str(workspace), "max_concurrent_patches": jobs}
        if dask is not None:
            arguments.update(task_runner="dask", dask_address=None if dask == "local" else dask)
        from patchsplat.atomic import write_json
        from patchsplat.orchestrate import interrupts
        from patchsplat.orchestrate.prefect_api import stop_temporary_server

        def work() -> dict:
            summary: dict | None = None
            try:
                summary = _run_flow(**arguments)
                return summary
            except PipelineFailed as failed:
                summary = failed.summary
                raise
            finally:
                stop_temporary_server()
                if summary_json is not None and summary:
                    write_json(summary_json, summary)

        try:
            # Ctrl-C/SIGTERM: running stages stop (training saves a checkpoint), one line, exit 130/143.
            interrupts.run(work, "patchsplat run")
        except interrupts.Interrupted:
            stop_temporary_server(drain=False)  # when the flow did not wind down in time to stop it itself
            raise

    guarded(run)


@app.command("serve")
def serve_command(
    cron: Annotated[str, typer.Option("--cron", help='When to run, as a cron expression, e.g. "0 2 * * *" (02:00 every day).')],
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The patchsplat workspace to keep up to date.")] = Path("."),
    name: Annotated[Optional[str], typer.Option("--name", help="Deployment name (default: patchsplat-<workspace folder>).")] = None,
    timezone: Annotated[Optional[str], typer.Option("--timezone", help="Time zone of the cron expression (default UTC), e.g. Europe/Berlin.")] = None,
) -> None:
    """Serve the flow on a schedule with Prefect (until stopped); see the README for a Prefect server."""

    def run() -> None:
        from patchsplat.orchestrate.schedule import serve

        _sync_workspace(Workspace(workspace))  # the scheduled runs run this patchsplat, as `run` and `repro` do
        serve(workspace, cron, name, timezone)

    guarded(run)


@app.command("compare")
def compare_command(
    run_ids: Annotated[Optional[list[str]], typer.Argument(help="MLflow run ids (default: the latest pipeline runs).")] = None,
    last: Annotated[int, typer.Option("--last", "-n", help="Without run ids: how many of the latest pipeline runs.")] = 2,
    out: Annotated[Path, typer.Option("--out", help="Where to write the comparison PNG.")] = Path("comparisons/compare.png"),
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Compare pipeline runs: the params that differ, metrics per patch and overall, and a PNG."""

    def run() -> None:
        from patchsplat.compare import latest_pipeline_runs
        from patchsplat.config import TrackingConfig
        from patchsplat.tracking import tracking_uri

        from patchsplat.output_folder import COMPARISON_PNG, check_replaceable_file

        check_replaceable_file(out, COMPARISON_PNG)
        tracking = load_params(params).tracking if params.exists() else TrackingConfig()
        ids = list(run_ids or []) or latest_pipeline_runs(tracking_uri(tracking, Path(".")), tracking.experiment, last)
        console.print(f"comparison plot: {_show_comparison(tracking, ids, out)}")

    guarded(run)


@app.command("sweep")
def sweep_command(
    param: Annotated[str, typer.Argument(help="A params.yaml setting, dotted (train.init_scale); with --patch a train setting.")],
    values: Annotated[str, typer.Argument(help="Comma-separated values, e.g. 0.3,0.5,1.0.")],
    patch: Annotated[Optional[str], typer.Option("--patch", help="Sweep this patch's override (patch_overrides.<id>) instead of the global setting.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the comparison PNG (default comparisons/sweep-<id>.png).")] = None,
) -> None:
    """One pipeline run per value (the current value last, so the workspace ends as it was), then the comparison."""

    def run() -> None:
        from patchsplat.orchestrate.sweep import parse_values, run_sweep
        from patchsplat.tracking import tracking_uri

        from patchsplat.output_folder import COMPARISON_PNG, check_replaceable_file

        if out is not None:  # refused now, not after the sweep's runs
            check_replaceable_file(out, COMPARISON_PNG)
        result = run_sweep(Path("."), param, parse_values(values), patch, _run_flow)
        for value, reason in result.failures.items():
            console.print(f"{result.key}={value}: failed: {reason}")
        if len(result.run_ids) == 0:
            raise InputError(result.key, "no run of the sweep was recorded in MLflow (is tracking enabled?)", kind="sweep_failed")
        tracking = load_params(DEFAULT_PARAMS).tracking
        png = _show_comparison(tracking, list(result.run_ids.values()), out or Path("comparisons") / f"sweep-{result.sweep_id}.png")
        baseline = result.run_ids.get(str(result.values[-1]))
        if baseline:  # the plot beside the numbers in MLflow too, on the sweep's baseline run
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri(tracking, Path("."))).log_artifact(baseline, str(png), "sweep")
        console.print(f"sweep {result.sweep_id}: {len(result.run_ids)} runs of {result.key}; comparison plot: {png}")
        if result.failures:
            raise PipelineFailed(result.key, f"{len(result.failures)} of {len(result.values)} values failed", kind="sweep_failed")

    guarded(run)


@app.command("config")
def show_config(
    params: ParamsOption = DEFAULT_PARAMS,
    patch: Annotated[Optional[str], typer.Option("--patch", help="Only this patch's training settings, each with where it came from.")] = None,
) -> None:
    """Validate params.yaml and print the effective settings: every section, then every training setting per
    patch with where its value came from (default, profile, params.yaml, patch override)."""

    def run() -> None:
        from patchsplat.settings_report import print_settings

        print_settings(load_params(params), params.resolve().parent, patch)

    guarded(run)


class PartitionBudget(str, Enum):
    """check-partition --budget (PartitionCheckConfig.budget)."""

    steps = "steps"
    pipeline = "pipeline"


@app.command("check-partition")
def check_partition_command(
    workspace: Annotated[Path, typer.Argument(help="The patchsplat workspace (its scene must exist: run the pipeline first).")] = Path("."),
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps of the single model, shared among the patches (default: the profile's for the scene as one patch).")] = None,
    split_steps_factor: Annotated[float, typer.Option("--split-steps-factor", help="With --budget steps: train the split with this many times the single model's steps (1: equal budgets, the target's; more: how many steps the split needs to match one model).")] = 1.0,
    budget: Annotated[PartitionBudget, typer.Option("--budget", help="steps: the split trained with the single model's steps and Gaussian cap shared among its patches (what splitting itself costs); pipeline: each patch with the profile's steps and cap, as `patchsplat run` trains it (what a user's split costs, in time too).")] = PartitionBudget.steps,
) -> None:
    """Measure what splitting costs: the scene trained as one model and as the split, same budget, same held-out views."""

    def run() -> None:
        from patchsplat.partition_check import PartitionCheckConfig, check_partition, print_partition_table
        from patchsplat.partition_check.tracking import log_partition_check

        place = Workspace(workspace)
        params = load_params(place.params_file)
        say = lambda message: console.print(f"check-partition: {message}", markup=False, highlight=False)  # noqa: E731
        record = check_partition(place, params, PartitionCheckConfig(total_steps=steps, budget=budget.value,
                                                                       split_steps_factor=split_steps_factor), log=say)
        print_partition_table(record)
        log_partition_check(params.tracking, place, record)
        console.print(f"report: {place.partition_report}; worst view: {place.partition_png}; "
                      f"training work kept in {place.partition_check_dir} (a re-run with the same settings only re-scores)",
                      markup=False, highlight=False)

    guarded(run)


@app.command("summary")
def summary(reports_dir: Annotated[Path, typer.Option(help="Folder holding the stages' reports.")] = Workspace().reports_dir) -> None:
    """Print a short table of what the pipeline produced and where to find it."""

    def run() -> None:
        from patchsplat.summary import print_summary

        print_summary(reports_dir)

    guarded(run)


@app.command("view")
def view_command(
    workspace: Annotated[Path, typer.Argument(help="The patchsplat workspace (after merge; the mesh when the mesh stage ran).")] = Path("."),
    patch: Annotated[Optional[str], typer.Option("--patch", help="Show this trained patch's splats and cameras instead of the merged scene.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to serve on: 127.0.0.1 is this machine only; 0.0.0.0 lets other machines connect.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (the next free one if taken; 0: any free port).", min=0, max=65535)] = 8080,
) -> None:
    """Show the splats, cameras (training / held-out), patch cells and mesh in a browser; prints the URL."""

    def run() -> None:
        from patchsplat.view import ViewerOptions, load_view_scene, serve_until_interrupted

        serve_until_interrupted(load_view_scene(Workspace(workspace), patch), ViewerOptions(host, port), say=console.print)

    guarded(run)


@app.command("init")
def init_command(
    directory: Annotated[Path, typer.Argument(help="The new workspace folder (must not exist, or be empty).")],
    colmap: Annotated[Path, typer.Option("--colmap", help="Your COLMAP folder: images/ plus sparse/0 (or sparse/). Not copied.")],
) -> None:
    """Create a pipeline workspace for your own COLMAP scene: params.yaml, dvc.yaml, git and DVC (no code)."""

    def run() -> None:
        import shlex
        import shutil
        import sys

        from patchsplat.workspace_init import init_workspace

        result = init_workspace(directory, colmap)
        ids = result.patch_ids
        console.print(f"workspace {result.workspace} ready for the scene {result.colmap_path}", markup=False, soft_wrap=True)
        console.print(f"  {len(ids)} patches planned ({', '.join(ids)})", markup=False, soft_wrap=True)
        console.print(f"  pipeline (dvc.yaml, params.yaml) from {result.source}", markup=False, soft_wrap=True)
        from patchsplat.scene_source import distorted_camera_models

        distorted = distorted_camera_models(result.colmap_path)
        if distorted:
            models = ", ".join(f"{name} x{count}" for name, count in sorted(distorted.items()))
            console.print(f"  cameras with lens distortion ({models}): the scene stage writes an undistorted copy into "
                          f"{Workspace().scene_dir} (scene.undistort: auto)", markup=False, soft_wrap=True)
        from patchsplat.profiles import machine_profile

        console.print(f"  split: {result.split_decision}", markup=False, soft_wrap=True)
        console.print(f"  training: profile auto ({machine_profile()} on this machine); every training setting left null in "
                      "params.yaml follows it per patch: `patchsplat config` shows each value and why once the split has run",
                      markup=False, soft_wrap=True)
        interpreter = Path(sys.executable)
        on_path = shutil.which("patchsplat")
        if on_path is None or Path(on_path).parent.resolve() != interpreter.parent.resolve():
            console.print(f"  note: dvc.yaml runs `patchsplat stage ...`, which must be this patchsplat: put {interpreter.parent} "
                          f"first on PATH (e.g. source {interpreter.parent}/activate)",
                          markup=False, soft_wrap=True)
        console.print("next:", markup=False, soft_wrap=True)
        console.print(f"  cd {shlex.quote(str(directory))}", markup=False, soft_wrap=True)
        console.print("  patchsplat repro      # the whole pipeline (plain `dvc repro` works too); re-run it after editing params.yaml",
                      markup=False, soft_wrap=True)
        console.print("  patchsplat summary    # what was produced and where", markup=False, soft_wrap=True)

    guarded(run)


@app.command("stage", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def stage_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The stage: scene, validate, split, prepare, train, merge, mesh or evaluate.")],
) -> None:
    """Run one pipeline stage's script, as dvc.yaml does (`patchsplat stage train p0`); arguments after NAME go to it."""
    from patchsplat.console import fail
    from patchsplat.pipeline_definition import run_stage, stage_script

    try:
        stage_script(name)
    except PatchsplatError as error:  # an unknown stage, no pipeline definition: one line (not `guarded`, which
        fail(error)              # would also count this process as the DVC stage that ran)
    run_stage(name, list(ctx.args))  # the script reports its own errors (guarded) and sets the exit status


def _sync_workspace(workspace: Workspace) -> None:
    """An `init` workspace's code links and code dependencies follow the patchsplat that runs (one line per change)."""
    from patchsplat.pipeline_deps import sync_workspace

    for message in sync_workspace(workspace.root):
        console.print(message, markup=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
