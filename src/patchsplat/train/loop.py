"""Train one patch: the optimisation loop, the health checks, and recovery along the ladders.

Contract: :func:`train_patch` reads a patch folder (``sparse/0``, ``patch.json``) and its
prepared folder (a :class:`~patchsplat.prepare.PreparedPatch`), and writes ``out_dir`` (complete or absent):

    splats.ply       the trained Gaussians, standard 3DGS (INRIA) layout, world frame
    metrics.json     train loss, held-out PSNR/SSIM, steps/s, Gaussians, peak memory vs estimate, attempts,
                     what the appearance correction learnt (a TrainedMetrics, see patchsplat.train.records)
    curve.csv        step, loss, held-out PSNR (for ``dvc plots``)
    heldout.png      a held-out view: ground truth | render | error
    settings.json    the effective settings (params.yaml's train + this patch's override)
    attempts.json    every attempt: why it ended and what the next one changed (an AttemptsRecord)

Checkpoints go to ``checkpoint_dir`` (atomically, every ``checkpoint_every`` steps, at the
milestones and at the end) and carry a fingerprint of the settings, the inputs and the training code, so
``resume=True`` continues only a run that is the same run.

With ``train.appearance`` on, each training image's render is mapped by that image's learnt colour
transform before the loss (:mod:`patchsplat.train.appearance`); everything written uses the render as it is.

A failure the monitor detects (see :mod:`patchsplat.train.health`), an out-of-memory or a
rasterizer error rolls back — to the initial points when the next rung changes the initial
scale, else to the last state that passed a health check — and retries with that rung's
settings. Every attempt is recorded. If the ladder runs out, :class:`PatchTrainingFailed`
says why, and the attempts record is still written (beside ``out_dir``: workspace.failed_record_of).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from patchsplat.atomic import atomic_dir, atomic_file, write_json
from patchsplat.config import RecoveryStep, TrainConfig
from patchsplat.errors import TrainingFailed
from patchsplat.gaussians import GAUSSIAN_FIELDS
from patchsplat.output_folder import TRAIN, check_replaceable
from patchsplat.prepare import INIT_FILE, PreparedPatch
from patchsplat.profiles import PatchFacts, is_resolved, resolve_train
from patchsplat.progress import ProgressLine, on_terminal
from patchsplat.train import health
from patchsplat.train.appearance import AppearanceCorrection
from patchsplat.train.data import PatchViews, View
from patchsplat.train.health import HealthMonitor, TrainingFailure
from patchsplat.train.memory import PeakMemory, plan_memory
from patchsplat.train.records import ATTEMPTS_FILE, METRICS_FILE, Attempt, AttemptsRecord, TrainedMetrics
from patchsplat.train.model import (
    TrainingState,
    initial_splats,
    learning_rates,
    make_optimisers,
    means_lr_at,
)
from patchsplat.workspace import failed_record_of

CHECKPOINT_SUFFIX = ".pt"
LAST_CHECKPOINT = "last.pt"


class PatchTrainingFailed(TrainingFailed):
    """Training failed on every rung of the recovery ladder; the attempts say what was tried."""


class RasterizerError(RuntimeError):
    """The rasterizer raised (e.g. gsplat's CUDA 'invalid configuration argument')."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a step, whose state was checkpointed first.

    A KeyboardInterrupt, so whatever runs the stage stops as for Ctrl-C; its message is the one line
    to show, and ``exit_status`` is the shell's for that signal (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signal_number


class StopRequest:
    """While active (main thread only), SIGINT and SIGTERM ask training to stop at the end of the current
    step rather than in the middle of it: the step's state is then consistent and can be checkpointed,
    so the resumed run continues exactly where this one stopped. A second signal stops at once."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signal_number: int, frame) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = signal_number

    def __enter__(self) -> StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class Fault:
    """A failure injected on purpose (tests, demonstrations): ``kind`` at ``step`` of attempt ``attempt``."""

    kind: str      # "nan_grad" | "oom" | "raster_error"
    step: int
    attempt: int = 1

    @staticmethod
    def parse_many(text: str, patch_id: str | None = None) -> list[Fault]:
        """``"nan_grad@10,oom@20:2,p1/raster_error@5"``: [patch/]kind@step[:attempt].

        An entry with a patch prefix applies to that patch only (so one patch of a pipeline run can
        be made to fail while the others train); without one, to every patch.
        """
        faults = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            target, slash, item = item.rpartition("/")
            if slash and target != patch_id:
                continue
            kind, _, rest = item.partition("@")
            step, _, attempt = rest.partition(":")
            faults.append(Fault(kind, int(step), int(attempt or 1)))
        return faults


@dataclass
class AttemptSettings:
    """What may differ between attempts (the recovery ladders change these)."""

    init_scale_ratio: float = 1.0
    lr_factor: float = 1.0
    resolution_factor: int = 1
    cap_max: int = 0

    def after(self, rung: RecoveryStep) -> AttemptSettings:
        return AttemptSettings(
            init_scale_ratio=self.init_scale_ratio * rung.init_scale_factor,
            lr_factor=self.lr_factor * rung.lr_factor,
            resolution_factor=self.resolution_factor * rung.resolution_factor,
            cap_max=max(100, int(self.cap_max * rung.cap_factor)),
        )


def select_device(backend: str) -> tuple[torch.device, str]:
    from patchsplat.render import select_backend

    chosen = select_backend(backend)
    device = torch.device("cuda") if chosen == "gsplat" or (torch.cuda.is_available() and backend == "torch") else torch.device("cpu")
    return device, chosen


def _training_code_digest() -> bytes:
    """The source of every patchsplat module this loop imports, transitively (the train stage's code deps).

    In the fingerprint so that a checkpoint written by other training code (an upgrade, an edit) is not resumed:
    DVC reruns the stage for the changed code, and resuming that run's final checkpoint would hand back the old
    model as the new one."""
    import patchsplat
    from patchsplat.import_closure import module_closure

    package = Path(patchsplat.__file__).parent
    digest = hashlib.sha256()
    for relative in sorted(module_closure(Path(__file__), package) | {Path(__file__).relative_to(package).as_posix()}):
        digest.update(relative.encode() + (package / relative).read_bytes())
    return digest.digest()


def _fingerprint(config: TrainConfig, patch_dir: Path, prepared_dir: Path) -> str:
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(_training_code_digest())
    for path in (patch_dir / "sparse" / "0" / "images.bin", patch_dir / "sparse" / "0" / "points3D.bin", prepared_dir / INIT_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error).lower()


# Above this fraction of near-transparent Gaussians at the end, training says so: most of the budget is wasted (with
# gsplat's opacity_reg at the preview's 4x opacity rate, 36-68% ended so; bench/RESULTS.md).
WASTED_FRACTION = 0.3

# What save_checkpoint writes: a payload without them is not one of ours.
CHECKPOINT_KEYS = {"fingerprint", "state", "settings", "attempts", "curve"}


class BackgroundWrite:
    """One write at a time on a thread of its own. ``wait`` joins it and raises what it raised (a full disk names its
    file), so an error surfaces at the next checkpoint or at the end of training, never lost. The thread is not a
    daemon: an ending process lets the write finish, and the file is complete or absent (atomic_file) either way."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, write: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as error:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = error

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def wait(self, raise_error: bool = True) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error


class _Run:
    """One patch's training, across attempts."""

    def __init__(self, patch_dir: Path, prepared_dir: Path, checkpoint_dir: Path | None, config: TrainConfig,
                 faults: list[Fault], progress: bool, log: Callable[[str], None], on_metrics: Callable[[dict, int], None] | None) -> None:
        self.patch_dir, self.prepared_dir, self.checkpoint_dir = patch_dir, prepared_dir, checkpoint_dir
        self.config = config
        self.faults = faults
        self.progress = progress
        self.log = log
        self.on_metrics = on_metrics
        self.device, self.backend = select_device(config.backend)
        self.prepared = PreparedPatch.load(prepared_dir)
        self.frame = self.prepared.frame
        # The prepared scales used the init_scale in force at preparation; this run's may differ (an override).
        self.spacing = float(np.median(np.exp(self.prepared.gaussians["scales"][:, 0]))) / self.prepared.init_scale
        self.fingerprint = _fingerprint(config, patch_dir, prepared_dir)
        self.curve: list[dict] = []
        self.attempts: list[Attempt] = []
        self.views: PatchViews | None = None
        self.latest_psnr: float | None = None
        self.stop = StopRequest()
        self.checkpoint_writer = BackgroundWrite()

    # ------------------------------------------------------------------ set-up
    def load_views(self, resolution_factor: int) -> PatchViews:
        if self.views is None or self.views.resolution_factor != resolution_factor:
            self.views = PatchViews(self.patch_dir, self.frame, resolution_factor, self.config.image_cache)
        return self.views

    def make_strategy(self, cap_max: int):
        from patchsplat.train.strategies import CpuSafeMCMCStrategy, FixedDefaultStrategy

        settings = self.config.strategy
        if settings.kind == "mcmc":
            strategy = CpuSafeMCMCStrategy(
                cap_max=cap_max, noise_lr=settings.noise_lr, refine_start_iter=settings.refine_start_iter,
                refine_stop_iter=settings.refine_stop_iter, refine_every=settings.refine_every,
                min_opacity=settings.min_opacity, growth_rate=settings.growth_rate,
            )
        else:
            strategy = FixedDefaultStrategy(
                prune_opa=settings.prune_opa, grow_grad2d=settings.grow_grad2d, refine_start_iter=settings.refine_start_iter,
                refine_stop_iter=settings.refine_stop_iter, refine_every=settings.refine_every, reset_every=settings.reset_every,
                absgrad=False, verbose=False,
            )
        return strategy

    def fresh_state(self, settings: AttemptSettings, strategy, training_images: int) -> TrainingState:
        params = initial_splats(self.prepared.gaussians, self.config,
                                settings.init_scale_ratio * self.config.init_scale / self.prepared.init_scale, settings.cap_max, self.device)
        rates = learning_rates(self.config, settings.lr_factor)
        optimisers = make_optimisers(params, rates)
        strategy_state = strategy.initialize_state(**({"scene_scale": 1.0} if self.config.strategy.kind == "default" else {}))
        appearance = None
        if self.config.appearance.enabled:
            appearance = AppearanceCorrection.identity(training_images, rates["appearance"], self.config.appearance.reg, self.device)
        torch.manual_seed(self.config.seed)
        return TrainingState(0, params, optimisers, strategy_state, torch.get_rng_state(), appearance)

    # ------------------------------------------------------------------ one step
    def render(self, params, view: View, sh_degree: int, render_mode: str = "RGB"):
        from patchsplat.render import rasterize

        viewmat = view.viewmat[None].to(self.device)
        camera_centre = -viewmat[0, :3, :3].T @ viewmat[0, :3, 3]
        if self.config.bf16:
            # Mixed precision outside the rasterizer: the view-dependent colours are evaluated from the
            # SH coefficients under bf16 autocast, then handed to the rasterizer in fp32.
            from patchsplat.render.sh import spherical_harmonics

            coefficients = torch.cat([params["sh0"], params["shN"]], dim=1)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                colours = spherical_harmonics(sh_degree, params["means"] - camera_centre, coefficients)
            colours, sh_degree_arg = torch.clamp_min(colours.float() + 0.5, 0.0), None
        elif self.backend == "torch":
            # The same colours the rasterizer would evaluate, from sh0 and shN in place: a concatenated copy of
            # the coefficients, and the split of its gradient, cost a pass over them each step (issue 15).
            from patchsplat.render.sh import view_colours

            colours = view_colours(sh_degree, params["means"], params["sh0"], params["shN"], camera_centre[None])[0]
            sh_degree_arg = None
        else:
            colours, sh_degree_arg = torch.cat([params["sh0"], params["shN"]], dim=1), sh_degree
        try:
            return rasterize(
                params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]), colours,
                viewmat, view.K[None].to(self.device), view.width, view.height,
                sh_degree=sh_degree_arg, backend=self.backend, render_mode=render_mode,
            )
        except RuntimeError as error:
            if _is_out_of_memory(error):
                raise
            raise RasterizerError(str(error)) from error

    def loss(self, rendered: torch.Tensor, target: torch.Tensor, params, appearance: AppearanceCorrection | None = None,
             image_index: int = 0) -> torch.Tensor:
        """The training loss of ``rendered`` against training image ``image_index``'s photo ``target``; with an
        appearance correction, the render is first mapped by that image's colour transform (and the transform's
        pull towards identity is added)."""
        from patchsplat import metrics

        # fp32 whatever autocast did upstream: prediction and target are both cast.
        prediction = rendered[..., :3].float()
        if appearance is not None:
            prediction = appearance.corrected(prediction, image_index)
        prediction = prediction.permute(0, 3, 1, 2)
        target = target.permute(2, 0, 1)[None].float()
        l1, ssim = (term.mean() for term in metrics.l1_and_ssim(prediction, target, check_prediction_range=False))
        loss = (1.0 - self.config.ssim_lambda) * l1 + self.config.ssim_lambda * (1.0 - ssim)
        if self.config.strategy.kind == "mcmc":
            loss = loss + self.config.strategy.opacity_reg * torch.sigmoid(params["opacities"]).mean()
            loss = loss + self.config.strategy.scale_reg * torch.exp(params["scales"]).mean()
        if appearance is not None:
            loss = loss + appearance.penalty(image_index)
        return loss

    def view_for_step(self, step: int, train_views: list[View], core_fractions: dict[str, float] | None = None) -> View:
        return train_views[self.view_index_for_step(step, train_views, core_fractions)]

    def view_index_for_step(self, step: int, train_views: list[View], core_fractions: dict[str, float] | None = None) -> int:
        """The position in the training views of the view trained on at ``step`` (also its appearance transform's)."""
        # The order depends only on (seed, step): a resumed run sees the same views as an uninterrupted one.
        epoch, position = divmod(step, len(train_views))
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        weights = self._view_weights(train_views, core_fractions or {})
        if weights is None:
            order = torch.randperm(len(train_views), generator=generator)
        else:  # an epoch of as many draws as views, each view as often as its weight says
            order = torch.multinomial(weights, len(train_views), replacement=True, generator=generator)
        return int(order[position])

    def _view_weights(self, train_views: list[View], core_fractions: dict[str, float]) -> torch.Tensor | None:
        """Sampling weights of the views (train.overlap_view_weight), None when they are all equal."""
        overlap = self.config.overlap_view_weight
        if overlap == 1.0:  # the default: no per-step work
            return None
        fractions = torch.tensor([core_fractions.get(view.name, 1.0) for view in train_views], dtype=torch.float64)
        weights = fractions + (1.0 - fractions) * overlap
        if bool((weights == weights[0]).all()) or float(weights.sum()) == 0.0:
            return None
        return weights

    def inject(self, kind: str, step: int, attempt: int) -> bool:
        return any(f.kind == kind and f.step == step and f.attempt == attempt for f in self.faults)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, params, sh_degree: int) -> dict:
        from patchsplat import metrics

        views = self.views
        evaluation_views = views.test_views or views.train_views[:1]
        psnrs, ssims = [], []
        for view in evaluation_views:
            rendered, _, _ = self.render(params, view, sh_degree)
            prediction = rendered[..., :3].clamp(0, 1).permute(0, 3, 1, 2).float()
            target = views.image(view).to(self.device).permute(2, 0, 1)[None]
            psnrs.append(float(metrics.psnr(prediction, target)[0]))
            ssims.append(float(metrics.ssim(prediction, target)[0]))
        return {"heldout_psnr": float(np.mean(psnrs)), "heldout_ssim": float(np.mean(ssims)),
                "heldout_views": len(evaluation_views), "heldout_is_train": not views.test_views}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: TrainingState, settings: AttemptSettings, keep: bool, wait: bool = False) -> None:
        """Checkpoint ``state``: copied now, written by a thread of its own while training goes on (``wait``: before
        returning). Serialising, renaming and syncing the folder took ~0.13 s of a core a checkpoint, ten per run;
        written in the background they overlap the next steps (issue 15). One write at a time, in order."""
        if self.checkpoint_dir is None:
            return
        payload = {
            "fingerprint": self.fingerprint,
            "state": state.snapshot(),
            "settings": asdict(settings),
            "attempts": AttemptsRecord(self.attempts).to_json(),
            "curve": list(self.curve),
        }
        paths = [self.checkpoint_dir / name
                 for name in [LAST_CHECKPOINT] + ([f"step_{state.step:07d}{CHECKPOINT_SUFFIX}"] if keep else [])]

        def write() -> None:
            for path in paths:
                with atomic_file(path, suffix=CHECKPOINT_SUFFIX) as tmp:
                    torch.save(payload, tmp)

        self.checkpoint_writer.start(write)
        if wait:
            self.checkpoint_writer.wait()

    def load_checkpoint(self) -> dict | None:
        path = None if self.checkpoint_dir is None else self.checkpoint_dir / LAST_CHECKPOINT
        if path is None or not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise  # unreadable (permissions, I/O): the guard names the file; the checkpoint may be fine
        except Exception as error:  # truncated or damaged: torch raises RuntimeError, EOFError, UnpicklingError...
            self.set_aside(path, f"{type(error).__name__}: {' '.join(str(error).split())[:120]}")
            return None
        if not isinstance(payload, dict) or not CHECKPOINT_KEYS <= payload.keys():
            self.set_aside(path, "not a patchsplat checkpoint")
            return None
        if payload.get("fingerprint") != self.fingerprint:
            self.log(f"checkpoint {path} is from other settings, inputs or training code: starting afresh")
            return None
        return payload

    def set_aside(self, path: Path, problem: str) -> None:
        """A checkpoint that cannot be loaded is renamed (kept for a post-mortem, never loaded again) and
        training starts afresh: one damaged file must not block the patch."""
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        self.log(f"{path}: damaged checkpoint ({problem}); set aside as {aside.name}, starting afresh")

    # ------------------------------------------------------------------ an attempt
    def run_attempt(self, attempt: Attempt, settings: AttemptSettings, start: dict | None, strategy) -> TrainingState:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        config = self.config
        views = self.load_views(settings.resolution_factor)
        rates = learning_rates(config, settings.lr_factor)
        if start is not None:
            state = TrainingState.restore(start, self.device, rates, config.appearance.reg)
        else:
            state = self.fresh_state(settings, strategy, len(views.train_views))
        torch.set_rng_state(state.rng_state)
        if state.params["means"].shape[0] > settings.cap_max:
            self._enforce_cap(state, settings.cap_max, strategy)
        monitor = HealthMonitor(config.health, self.spacing, peak_count=state.params["means"].shape[0])
        memory = PeakMemory(self.device)
        last_good = state.snapshot()
        self.last_good = last_good
        line = ProgressLine("step", config.steps, self.log, start=state.step, enabled=self.progress and not on_terminal())
        self.state = state  # what an interrupt checkpoints
        # Set-up above may be interrupted at once (the last checkpoint still holds); from here on a signal
        # stops after the current step, whose state is then checkpointed.
        with self.stop, Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                 disable=not (self.progress and on_terminal()), transient=True) as bar:
            task = bar.add_task(f"training (attempt {attempt.number})", total=config.steps, completed=state.step, status="")
            while state.step < config.steps:
                step = state.step
                sh_degree = min(step // config.sh_degree_interval, config.sh_degree)
                image_index = self.view_index_for_step(step, views.train_views, views.core_fractions)
                view = views.train_views[image_index]
                target = views.image(view).to(self.device)
                if self.inject("oom", step, attempt.number):
                    raise torch.OutOfMemoryError("injected out of memory (test)")
                if self.inject("raster_error", step, attempt.number):
                    raise RasterizerError("CUDA error: invalid configuration argument (injected)")
                rendered, _, info = self.render(state.params, view, sh_degree)
                strategy.step_pre_backward(state.params, state.optimisers, state.strategy_state, step, info)
                # The transforms join once the render resembles the photos (see AppearanceConfig.start_fraction).
                appearance = state.appearance if step >= config.appearance.start_fraction * config.steps else None
                loss = self.loss(rendered, target, state.params, appearance, image_index)
                loss.backward()
                if self.inject("nan_grad", step, attempt.number):
                    state.params["means"].grad[0, 0] = float("nan")
                health.check_step(loss, {**state.params, **(state.appearance.named_parameters() if state.appearance else {})}, step)
                periodic = step % config.health.check_every == 0 or step == config.steps - 1
                metrics = monitor.periodic(dict(state.params), step, memory.peak_bytes()) if periodic else None

                means_lr = means_lr_at(step, config, settings.lr_factor)
                for group in state.optimisers["means"].param_groups:
                    group["lr"] = means_lr
                for optimiser in state.optimisers.values():
                    optimiser.step()
                    optimiser.zero_grad(set_to_none=True)
                if state.appearance is not None:
                    state.appearance.step()
                if config.strategy.kind == "mcmc":
                    strategy.step_post_backward(state.params, state.optimisers, state.strategy_state, step, info, lr=means_lr)
                else:
                    strategy.step_post_backward(state.params, state.optimisers, state.strategy_state, step, info, packed=False)
                state.step = step + 1
                state.rng_state = torch.get_rng_state()

                record = {"step": state.step, "loss": float(loss.detach()), "attempt": attempt.number}
                if metrics is not None:
                    record.update(metrics)
                    last_good = state.snapshot()
                    self.last_good = last_good
                if state.step % config.eval_every == 0 or state.step == config.steps:
                    record.update(self.evaluate(state.params, sh_degree))
                self.curve.append(record)
                if self.on_metrics is not None and (metrics is not None or "heldout_psnr" in record):
                    self.on_metrics(record, state.step)
                if state.step % config.checkpoint_every == 0 or state.step in config.milestones or state.step == config.steps:
                    self.save_checkpoint(state, settings, keep=state.step in config.milestones)
                bar.update(task, completed=state.step, status=f"loss {record['loss']:.4f}" +
                           (f"  PSNR {record['heldout_psnr']:.2f}" if "heldout_psnr" in record else ""))
                line.update(state.step, force="heldout_psnr" in record, **self.progress_fields(record, state))
                if self.stop.signal_number is not None:
                    self.save_checkpoint(state, settings, keep=False, wait=True)
                    where = f" ({self.checkpoint_dir})" if self.checkpoint_dir is not None else " (no checkpoint folder: not saved)"
                    raise TrainingInterrupted(f"training interrupted at step {state.step} of {config.steps}: checkpoint "
                                              f"saved{where}", self.stop.signal_number)
        self.checkpoint_writer.wait()  # the last checkpoint is complete before the outputs are written
        self.final_sh_degree = min((config.steps - 1) // config.sh_degree_interval, config.sh_degree)
        self.peak_memory = memory.peak_bytes()
        return state

    def progress_fields(self, record: dict, state: TrainingState) -> dict[str, str]:
        """The progress line's fields: loss, Gaussians and the latest held-out PSNR."""
        if "heldout_psnr" in record:
            self.latest_psnr = record["heldout_psnr"]
        fields = {"loss": f"loss {record['loss']:.4f}", "gaussians": f"{state.params['means'].shape[0]:,} Gaussians"}
        if self.latest_psnr is not None:
            fields["psnr"] = f"held-out PSNR {self.latest_psnr:.2f} dB"
        return fields

    def _enforce_cap(self, state: TrainingState, cap_max: int, strategy) -> None:
        from gsplat.strategy.ops import remove

        from patchsplat.train.strategies import enforce_cap

        keep = enforce_cap(state.params["means"].shape[0], cap_max, torch.Generator().manual_seed(self.config.seed))
        drop = torch.ones(state.params["means"].shape[0], dtype=torch.bool)
        drop[keep] = False
        remove(params=state.params, optimizers=state.optimisers, state=state.strategy_state, mask=drop.to(self.device))


def _apply_rung(settings: AttemptSettings, rung: RecoveryStep) -> tuple[AttemptSettings, dict]:
    changed = {name: value for name, value in rung.model_dump().items() if value != RecoveryStep.model_fields[name].default}
    return settings.after(rung), changed


def train_patch(
    patch_dir: Path,
    prepared_dir: Path,
    out_dir: Path,
    config: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    faults: list[Fault] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_metrics: Callable[[dict, int], None] | None = None,
    profile: str | None = None,
    origins: dict[str, str] | None = None,
) -> TrainedMetrics:
    """Train one patch; returns the metrics written to ``out_dir/metrics.json``. See the module docstring.

    Settings left None are resolved by the profile (patchsplat.profiles) for this patch;
    ``profile`` and ``origins`` (where each setting came from, see resolve_train) are recorded in settings.json."""
    patch_dir, prepared_dir, out_dir = Path(patch_dir), Path(prepared_dir), Path(out_dir)
    check_replaceable(out_dir, TRAIN, training_inputs(patch_dir, prepared_dir))  # before training, not after it
    if faults is None:
        # A "p1/" prefix in PATCHSPLAT_FAULTS targets the patch whose folder is named p1.
        faults = Fault.parse_many(os.environ.get("PATCHSPLAT_FAULTS", ""), patch_dir.name)
    if not is_resolved(config):  # a library call with settings left to the profile
        resolved = resolve_train(config, PatchFacts.of_patch(patch_dir))
        config, profile, origins = resolved.config, resolved.profile, resolved.origins
    run = _Run(patch_dir, prepared_dir, checkpoint_dir, config, faults, progress, log, on_metrics)
    with deterministic_algorithms(config.deterministic and run.device.type == "cpu"):
        try:
            metrics = _train_run(run, out_dir, resume, log, profile, origins)
        except BaseException:  # a checkpoint being written when training stops (a failure, Ctrl-C) completes first
            run.checkpoint_writer.wait(raise_error=False)
            raise
        run.checkpoint_writer.wait()
        return metrics


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic algorithms while training on the CPU: with two or more threads, the backward
    pass of an indexed gather (``index_put_`` with accumulate) otherwise adds into the same gradient from
    several threads in whatever order they run, so two runs of the same settings and seed differ from the
    first steps on (measured: 60 steps, 2 threads, different splats every run; identical with this on).

    Not the NaN fill of every new uninitialised tensor that deterministic mode also turns on: a debugging aid
    that changes no result of correct code, and it cost a pass over memory per ``torch.empty``, one core
    only, 7% of a CPU training step (issue 15)."""
    import torch.utils.deterministic

    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(enabled or previous)
    torch.utils.deterministic.fill_uninitialized_memory = previous_fill and previous
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill


def _train_run(run: _Run, out_dir: Path, resume: bool, log: Callable[[str], None], profile: str | None,
               origins: dict[str, str] | None) -> TrainedMetrics:
    config = run.config
    first_view = run.load_views(config.resolution_factor).all_views[0]
    plan = plan_memory(config.memory_budget_gb, config.strategy.cap_max, first_view.width * config.resolution_factor,
                       first_view.height * config.resolution_factor, config.sh_degree, run.backend, config.resolution_factor)
    log(plan.describe())
    settings = AttemptSettings(1.0, 1.0, plan.resolution_factor, plan.cap_max)

    start: dict | None = None
    if resume and (payload := run.load_checkpoint()) is not None:
        start = payload["state"]
        settings = AttemptSettings(**payload["settings"])
        run.attempts = _resumed_attempts(payload["attempts"], start["step"], run.checkpoint_dir / LAST_CHECKPOINT)
        run.curve = list(payload["curve"])
        log(f"resuming from step {start['step']} ({run.checkpoint_dir / LAST_CHECKPOINT})")

    ladder_position = {"scale": 0, "nonfinite": 0, "collapse": 0, "out_of_memory": 0}
    for attempt in run.attempts:  # a resumed run continues its ladders where they were
        if attempt.failure_kind in ladder_position:
            ladder_position[attempt.failure_kind] += 1

    started = time.perf_counter()
    first_step = start["step"] if start else 0
    while True:
        if run.attempts and run.attempts[-1].outcome == "running":
            attempt = run.attempts[-1]  # resuming an interrupted attempt: the same attempt goes on
        else:
            attempt = Attempt(number=len(run.attempts) + 1, settings=asdict(settings), start_step=start["step"] if start else 0)
            run.attempts.append(attempt)
        strategy = run.make_strategy(settings.cap_max)
        try:
            state = run.run_attempt(attempt, settings, start, strategy)
            attempt.outcome = "succeeded"
            break
        except (TrainingFailure, RasterizerError, torch.OutOfMemoryError, MemoryError) as error:
            if isinstance(error, TrainingFailure):
                kind, reason, step = error.kind, error.reason, error.step
            elif _is_out_of_memory(error):
                kind, reason, step = health.OUT_OF_MEMORY, f"out of memory: {str(error).splitlines()[0]}", None
            else:  # a rasterizer/CUDA error such as the motivating 'invalid configuration argument'
                kind, reason, step = health.SCALE, f"rasterizer error: {str(error).splitlines()[0]}", None
            attempt.outcome, attempt.failure_kind, attempt.reason = "failed", kind, reason
            attempt.failed_at_step = step
            log(f"attempt {attempt.number} failed ({kind}): {reason}")
            ladder = getattr(config.recovery, kind)
            if len(run.attempts) >= config.recovery.max_attempts or ladder_position[kind] >= len(ladder):
                AttemptsRecord(run.attempts).save(failed_record_of(out_dir))
                raise PatchTrainingFailed(
                    run.patch_dir, f"training failed after {len(run.attempts)} attempts; last: {reason} "
                    f"(attempts record: {failed_record_of(out_dir)})", kind="training_failed",
                ) from None
            rung = ladder[ladder_position[kind]]
            ladder_position[kind] += 1
            settings, changed = _apply_rung(settings, rung)
            attempt.next_change = changed
            if rung.init_scale_factor != 1.0:
                start = None  # a new initial scale means new initial Gaussians
            else:
                start = run.last_good
            log(f"attempt {attempt.number + 1}: {changed}, from step {start['step'] if start else 0}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    seconds = time.perf_counter() - started
    metrics = _write_outputs(run, state, settings, plan, out_dir, seconds, config.steps - first_step,
                             {"profile": profile, "origins": origins or {}})
    if (metrics.transparent_fraction or 0.0) > WASTED_FRACTION:
        log(f"{metrics.transparent_fraction:.0%} of the {metrics.gaussians:,} Gaussians ended near-transparent (opacity "
            f"< {config.health.transparent_opacity:g}): they cost time and memory and draw nothing; a strong "
            f"train.strategy.opacity_reg or a high opacities_lr fades them faster than the strategy reuses them")
    return metrics


def _resumed_attempts(saved: list[dict], step: int, checkpoint: Path) -> list[Attempt]:
    """The attempts of a checkpoint, its last (the one it was saved in) marked as resumed at ``step``.

    A checkpoint is saved while its attempt runs, so that attempt goes on: resuming is never counted
    as another attempt or as a recovery.
    """
    attempts = AttemptsRecord.from_json(saved, checkpoint).attempts
    if attempts:
        attempts[-1].outcome = "running"
        attempts[-1].resumed_at_steps.append(step)
    return attempts


def training_inputs(patch_dir: Path, prepared_dir: Path) -> tuple[Path, ...]:
    """What training reads: the patch's model and patch.json, not the whole patch folder, so the
    command line's default output PATCH_DIR/trained may sit inside it."""
    return (patch_dir / "sparse", patch_dir / "patch.json", prepared_dir)


def _appearance_record(state: TrainingState) -> dict[str, float]:
    """metrics.json's summary of the colour transforms (nothing when appearance correction is off)."""
    if state.appearance is None:
        return {}
    gain, offset = state.appearance.largest_changes()
    return {"appearance_max_gain_change": gain, "appearance_max_offset": offset}


def _write_outputs(run: _Run, state: TrainingState, settings: AttemptSettings, plan, out_dir: Path,
                   seconds: float, steps_run: int, provenance: dict) -> TrainedMetrics:
    from patchsplat.splat_io import transform_splats, write_splats_ply
    from patchsplat.train.report import heldout_figure, write_curve

    config = run.config
    evaluation = next((r for r in reversed(run.curve) if "heldout_psnr" in r), None) or run.evaluate(state.params, run.final_sh_degree)
    canonical = {name: state.params[name].detach().cpu() for name in GAUSSIAN_FIELDS}
    world = transform_splats(canonical, run.frame.scale, run.frame.centre.tolist())
    losses = [r["loss"] for r in run.curve if r["attempt"] == run.attempts[-1].number]
    with atomic_dir(out_dir, TRAIN, training_inputs(run.patch_dir, run.prepared_dir)) as tmp:
        written = write_splats_ply(tmp / "splats.ply", **world)
        metrics = TrainedMetrics(
            train_loss=float(np.mean(losses[-50:])) if losses else None,
            heldout_psnr=evaluation["heldout_psnr"],
            heldout_ssim=evaluation["heldout_ssim"],
            heldout_views=evaluation["heldout_views"],
            steps=config.steps,
            steps_per_second=steps_run / seconds if seconds > 0 else None,
            gaussians=int(state.params["means"].shape[0]),
            gaussians_dropped_non_finite=written["n_dropped"],
            peak_memory_mb=run.peak_memory / 2**20,
            memory_estimate_mb=plan.estimate_bytes / 2**20,
            memory_plan=plan.describe(),
            resolution_factor=settings.resolution_factor,
            backend=run.backend,
            device=str(run.device),
            attempts=len(run.attempts),
            recovered=any(attempt.outcome == "failed" for attempt in run.attempts),
            resumed=any(attempt.resumed_at_steps for attempt in run.attempts),
            **_appearance_record(state),
            transparent_fraction=health.transparent_fraction(state.params["opacities"], config.health.transparent_opacity),
        )
        metrics.save(tmp / METRICS_FILE)
        write_json(tmp / "settings.json", {"train": config.model_dump(mode="json"), "final_attempt": asdict(settings),
                                           **provenance,
                                           "canonical_frame": run.frame.to_dict()})
        AttemptsRecord(run.attempts).save(tmp / ATTEMPTS_FILE)
        write_curve(tmp / "curve.csv", run.curve)
        view = (run.views.test_views or run.views.train_views)[0]
        with torch.no_grad():
            rendered, _, _ = run.render(state.params, view, run.final_sh_degree)
        heldout_figure(tmp / "heldout.png", run.views.image(view).numpy(), rendered[0, ..., :3].clamp(0, 1).cpu().numpy(),
                       f"{view.name}: PSNR {evaluation['heldout_psnr']:.2f} dB (mean over {evaluation['heldout_views']} held-out views)")
    failed_record_of(out_dir).unlink(missing_ok=True)
    return metrics
