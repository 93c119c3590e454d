"""The Prefect flow ``reconstruct``: validate -> split -> train (one task per patch) -> merge -> mesh -> evaluate.

Call contract: ``reconstruct(workspace)`` brings a patchsplat workspace (``params.yaml`` +
``dvc.yaml``) up to date and returns a summary (a :class:`FlowSummary` as a dict). When a stage or
a patch failed (after the other patches finished) the flow run ends Failed with a one-line message;
:func:`run_pipeline` turns that into :class:`PipelineFailed`.

How it stays one pipeline with ``dvc repro``: every stage runs as ``dvc repro --single-item``
(:mod:`patchsplat.orchestrate.stage_runner`), so DVC decides what is out of date and records what ran
in ``dvc.lock``; after a flow run ``dvc status`` is clean, and a second run with nothing changed
sees that from one ``dvc status`` and does nothing else.

Patches are independent: each is a Prefect task (``prepare@pN`` then ``train@pN``), submitted to
a task runner chosen by params.yaml's ``orchestration`` section at run time — a thread pool on
this machine (each patch's training a process of its own, ``max_concurrent_patches`` at once) or
a Dask cluster (prefect-dask). A patch that fails after its own recovery ladder is retried by
Prefect (``patch_retries``; a retry resumes from the patch's checkpoint); if it still fails, the
other patches complete, the failure is reported with its reason, and merge/mesh/evaluate (which
need every patch) are not run. Whether a failure is worth a retry is decided by its kind, from the
stage's own record (bad input never is).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Failed

from patchsplat.config import OrchestrationConfig, load_params
from patchsplat.console import Interrupted
from patchsplat.errors import CRASHED, InputError, PatchsplatError, PipelineFailed, TrainingFailed
from patchsplat.orchestrate import interrupts
from patchsplat.orchestrate.pipeline_run import PipelineRun
from patchsplat.orchestrate.stage_runner import (
    StageOutcome, group_failures, pipeline_up_to_date, run_stage, stage_environment, threads_per_patch,
)
from patchsplat.workspace import Workspace

HEAD_STAGES = ("scene", "validate")
TAIL_STAGES = ("merge", "mesh", "evaluate")


class StageFailed(RuntimeError):
    """A stage (or a patch's training) failed; the message is its one-line reason.

    ``retryable``: whether running it again could end differently (a crash, a lost worker, a recovery
    ladder that ran out) or would only repeat the stage's report of bad input (the failure's kind says:
    :attr:`StageOutcome.worth_a_retry`).
    """

    def __init__(self, message: str, retryable: bool = True, outcomes: list[dict] | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.outcomes = outcomes or []  # what the task's stages did before it failed (StageOutcome dicts)

    def __reduce__(self):  # keep ``retryable`` and the outcomes when a Dask worker sends the state back
        return (type(self), (str(self), self.retryable, self.outcomes))


class FlowInterrupted(StageFailed):
    """Ctrl-C or SIGTERM stopped the run (see :mod:`patchsplat.orchestrate.interrupts`)."""

    def __init__(self, message: str = "interrupted", retryable: bool = False, outcomes: list[dict] | None = None) -> None:
        super().__init__(message, False, outcomes)


def _interrupted(stage: str, outcomes: list[StageOutcome]) -> State:
    """A task stopped by an interrupt ends Cancelled: a final state Prefect never retries (a retry would
    restart the very work the user just stopped; the next run resumes it from its checkpoint)."""
    message = f"{stage}: interrupted"
    return Cancelled(message=message, data=FlowInterrupted(message, outcomes=[asdict(outcome) for outcome in outcomes]))


def _outcomes_of(state: State) -> list[dict]:
    """The StageOutcome dicts a failed or interrupted task carried back."""
    data = state.data
    if not isinstance(data, StageFailed):  # by now Prefect keeps it wrapped in a result record
        try:
            data = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - a crashed task carried nothing back
            return []
    return list(data.outcomes) if isinstance(data, StageFailed) else []


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a task's final failure with ``exc_info=True`` even when the task returned a Failed
    state instead of raising: the log then shows a bare "NoneType: None" line. Drop that empty traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_NoEmptyTraceback())


def _failed(message: str, retryable: bool, outcomes: list[StageOutcome] | None = None) -> State:
    """A task's Failed state (see :class:`StageFailed` for ``retryable``)."""
    return Failed(message=message, data=StageFailed(message, retryable, [asdict(outcome) for outcome in outcomes or []]))


def worth_retrying(task, task_run, state: State) -> bool:
    """Prefect's retry condition: retry a crash, a lost worker or a recovery ladder that ran out (a retry
    resumes from the checkpoint, maybe with more memory free), never a stage's report of bad input,
    which a retry would only repeat: what the failed task's outcome said (a task that crashed says nothing)."""
    return not isinstance(state.data, StageFailed) or state.data.retryable


def run_pipeline(**arguments) -> dict:
    """Run the flow; its summary, or :class:`PipelineFailed` carrying the failed run's one-line message."""
    state = reconstruct(**arguments, return_state=True)
    if state.is_completed():
        return state.result()
    summary = None
    try:
        summary = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a crashed run has no result to show
        pass
    if state.is_cancelled() or interrupts.interrupted.is_set():
        # Not a failure to report (a sweep would go on to its next value): the user stopped it.
        stopped = interrupts.stopped_stages() or [f"train@{patch_id}" for patch_id in
                                                  (summary or {}).get("interrupted_patches", [])]
        raise Interrupted(interrupts.describe(stopped, "patchsplat run"), 128 + (interrupts.signal_number() or 2))
    where, _, problem = (state.message or f"reconstruct: flow run ended {state.name}").partition(": ")
    raise PipelineFailed(where, problem, summary=summary if isinstance(summary, dict) else None)


@dataclass
class FlowSummary:
    """What a flow run did, stage by stage (``outcome``: succeeded | failed | interrupted | up_to_date)."""

    outcome: str
    workspace: str
    stages: list[dict] = field(default_factory=list)      # StageOutcome as dicts, in run order
    failed_patches: dict[str, str] = field(default_factory=dict)   # patch id -> reason
    patch_ids: list[str] = field(default_factory=list)
    interrupted_patches: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    flow_run_id: str | None = None
    seconds: float = 0.0

    @property
    def stages_run(self) -> list[str]:
        return [stage["stage"] for stage in self.stages if stage["ran"]]


# Task caching is off: Prefect's cache keys never look at file contents; DVC decides what is up to date.
@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def stage_task(stage: str, workspace: str, environment: dict[str, str]) -> StageOutcome | State:
    """``dvc repro --single-item <stage>``, its output in the Prefect log."""
    logger = get_run_logger()
    outcome = run_stage(stage, Workspace(Path(workspace)), environment, logger.info)
    if outcome.interrupted:
        return _interrupted(stage, [outcome])
    if outcome.failed:
        # A Failed state, not an exception: Prefect retries it all the same (unless it is the stage's
        # report of bad input), without logging a traceback for what is the stage's own one-line report.
        return _failed(f"{stage}: {outcome.reason}", retryable=outcome.worth_a_retry, outcomes=[outcome])
    logger.info("%s: %s in %.1f s", stage, "ran" if outcome.ran else "up to date", outcome.seconds)
    return outcome


@task(name="patch", task_run_name="train-{patch_id}", cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def patch_task(patch_id: str, workspace: str, environment: dict[str, str]) -> list[StageOutcome] | State:
    """One patch: ``prepare@<id>`` then ``train@<id>``; every training attempt in the Prefect log."""
    import socket

    if interrupts.interrupted.is_set():  # its turn came after Ctrl-C
        return _interrupted(f"prepare@{patch_id}", [StageOutcome.not_started(f"prepare@{patch_id}")])
    logger = get_run_logger()
    # Where it ran: with a Dask cluster, a worker process on some machine.
    logger.info("patch %s on %s, process %d", patch_id, socket.gethostname(), os.getpid())
    layout = Workspace(Path(workspace))
    outcomes = []
    for stage in (f"prepare@{patch_id}", f"train@{patch_id}"):
        outcome = run_stage(stage, layout, environment, logger.info)
        outcomes.append(outcome)
        if outcome.interrupted:
            return _interrupted(stage, outcomes)
        if outcome.ran and stage.startswith("train@"):
            _log_attempts(layout, outcome, logger)
        if outcome.failed:
            return _failed(f"{stage}: {outcome.reason}", retryable=outcome.worth_a_retry, outcomes=outcomes)
    return outcomes


def _log_attempts(workspace: Workspace, outcome: StageOutcome, logger) -> None:
    """The training's attempts, one line each: from its attempts record (the failed-training record
    when its recovery ladder ran out; none when it failed otherwise)."""
    from patchsplat.train.records import ATTEMPTS_FILE, AttemptsRecord
    from patchsplat.train.stage import attempt_lines

    paths = workspace.patch(outcome.patch)
    if outcome.failed and outcome.kind != TrainingFailed.default_kind:
        return
    record = paths.failed_record if outcome.failed else paths.trained_dir / ATTEMPTS_FILE
    if record.exists():
        for line in attempt_lines(AttemptsRecord.load(record).attempts):
            (logger.warning if "failed" in line else logger.info)("[%s] %s", outcome.patch, line)


def default_concurrency(patch_count: int) -> int:
    """One patch per GPU on a CUDA machine, else one per CPU core; never more than there are patches."""
    try:
        import torch

        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable torch/CUDA: count cores
        devices = 0
    return max(1, min(patch_count, devices or os.cpu_count() or 1))


def trains_on_this_machine(config: OrchestrationConfig) -> bool:
    """Whether patches train here: the local runner, or the local Dask cluster patchsplat starts (no address)."""
    return config.task_runner == "local" or not config.dask_address


def patch_threads(config: OrchestrationConfig, concurrency: int) -> int | None:
    """The CPU threads of each patch's training: the machine's cores shared among the patches trained at once on it;
    None (torch's default) on a Dask cluster's machines, whose cores this process cannot see. Without the share, two
    trainings with all the cores each would oversubscribe them, and their OpenMP threads would wait on each other's
    (see patchsplat/__init__.py)."""
    return threads_per_patch(concurrency) if trains_on_this_machine(config) else None


def patch_task_runner(config: OrchestrationConfig, concurrency: int, params_file: Path):
    """The task runner patch tasks are submitted to (a context manager); ``params_file`` holds ``config``."""
    if config.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as error:
            raise InputError(params_file, f"orchestration.task_runner: dask needs prefect-dask ({error})") from None
        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": concurrency, "threads_per_worker": 1, "processes": True})
    from prefect.task_runners import ThreadPoolTaskRunner

    # Threads only wait on each patch's own training process, so one thread per concurrent patch.
    return ThreadPoolTaskRunner(max_workers=concurrency)


def _run_stage(stage: str, workspace: Workspace, environment: dict, pipeline: PipelineRun, retries: int, delay: float,
               summary: FlowSummary) -> None:
    if interrupts.interrupted.is_set():
        raise FlowInterrupted()
    state = stage_task.with_options(retries=retries, retry_delay_seconds=delay)(stage, str(workspace.root),
                                                                               environment, return_state=True)
    if not state.is_completed():
        summary.stages.extend(_outcomes_of(state))
        if state.is_cancelled():
            raise FlowInterrupted()
        raise StageFailed(state.message or f"{stage}: {state.name}")
    summary.stages.append(asdict(state.result()))
    pipeline.tag_stage(stage)


def _sync_patch_ids(workspace: Workspace) -> list[str]:
    """Patch ids follow the split (params.yaml's patch_overrides keys; see patchsplat.patch_ids)."""
    from patchsplat.patch_ids import planned_patch_ids, sync_patch_ids

    logger = get_run_logger()
    result = sync_patch_ids(planned_patch_ids(workspace), workspace)
    if result.changed:
        logger.info("patch ids re-synced with the split: %s -> %s (removed: %s)", result.old_ids, result.new_ids,
                    ", ".join(result.removed_outputs + result.removed_lock_entries) or "nothing")
    return result.new_ids


@flow(name="reconstruct", log_prints=True)
def reconstruct(workspace: str = ".", max_concurrent_patches: int | None = None, task_runner: str | None = None,
                dask_address: str | None = None, run_tags: dict[str, str] | None = None,
                always_record: bool = False) -> dict:
    """Bring the patchsplat workspace up to date: validate -> split -> train per patch -> merge -> mesh -> evaluate.

    The optional arguments override params.yaml's ``orchestration`` section for this run;
    ``run_tags`` are added to the MLflow pipeline run (e.g. a sweep's id and value). With nothing
    to do the flow returns after one ``dvc status`` and records no MLflow run, unless
    ``always_record`` (a sweep needs a run for every value, even one that changes nothing).
    """
    from prefect.runtime import flow_run

    from patchsplat.orchestrate.report import flow_rows, print_flow_summary
    from patchsplat.run_report import write_run_report_or_say_why

    started = time.perf_counter()
    root = Workspace(Path(workspace).resolve())
    logger = get_run_logger()
    try:
        params = load_params(root.params_file)
    except InputError as error:
        return Failed(message=error.one_line())
    overrides = {key: value for key, value in {"max_concurrent_patches": max_concurrent_patches, "task_runner": task_runner,
                                               "dask_address": dask_address}.items() if value is not None}
    orchestration = params.orchestration.model_copy(update=overrides)
    flow_run_id = str(flow_run.id) if flow_run.id else None
    summary = FlowSummary("succeeded", str(root.root), flow_run_id=flow_run_id)

    if not always_record and pipeline_up_to_date(root, stage_environment()) and not interrupts.interrupted.is_set():
        logger.info("nothing to do: every stage is up to date (dvc status is clean)")
        summary.outcome, summary.seconds = "up_to_date", time.perf_counter() - started
        print_flow_summary(summary)
        return asdict(summary)

    pipeline = PipelineRun.start(root, params, flow_run_id, run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                 tags=run_tags)
    summary.mlflow_run_id = pipeline.run_id
    environment = stage_environment(pipeline.child_environment())
    retries, delay = orchestration.stage_retries, orchestration.retry_delay_seconds
    patch_ids: list[str] = list(params.patch_overrides)
    summary.patch_ids = patch_ids
    failure: str | None = None
    finished = False  # False in `finally` means an unexpected error is on its way out
    try:
        for stage in HEAD_STAGES:
            _run_stage(stage, root, environment, pipeline, retries, delay, summary)
        patch_ids = summary.patch_ids = _sync_patch_ids(root)
        _run_stage("split", root, environment, pipeline, retries, delay, summary)
        summary.failed_patches = _train_patches(root, patch_ids, orchestration, pipeline, summary)
        if interrupts.interrupted.is_set() or summary.interrupted_patches:
            raise FlowInterrupted()
        if summary.failed_patches:
            failure = (f"{len(summary.failed_patches)} of {len(patch_ids)} patches failed ("
                       + group_failures(summary.failed_patches) + "); merge, mesh and evaluate were not run")
        else:
            for stage in TAIL_STAGES:
                _run_stage(stage, root, environment, pipeline, retries, delay, summary)
        finished = True
    except FlowInterrupted:
        # Ctrl-C/SIGTERM: the stages that ran were stopped (checkpoints kept); `patchsplat run` (the
        # caller, patchsplat.orchestrate.interrupts) ends with the line saying so.
        failure, finished = "interrupted", True
    except StageFailed as error:
        failure, finished = str(error), True
    except PatchsplatError as error:
        failure, finished = error.one_line(), True
    finally:
        if not finished:
            failure = "interrupted by an unexpected error (see the traceback)"
        summary.outcome = "interrupted" if failure == "interrupted" else "failed" if failure else "succeeded"
        if summary.failed_patches:
            pipeline.tag({f"failed.{pid}": reason for pid, reason in summary.failed_patches.items()})
        if failure:
            pipeline.tag({"patchsplat.failure": failure})
        # The run's record, also of a failed or interrupted run; written before finish() logs it to MLflow.
        write_run_report_or_say_why(root, lambda: flow_rows(summary), f"failed: {failure}" if summary.outcome == "failed"
                                    else summary.outcome, time.perf_counter() - started, say=logger.warning)
        pipeline.finish(summary.outcome, patch_ids)
        summary.seconds = time.perf_counter() - started
        print_flow_summary(summary)
    if summary.outcome == "interrupted":
        # Cancelled, like its interrupted tasks: stopped by the user, not failed.
        return Cancelled(message=f"{root.dvc_yaml}: interrupted", data=asdict(summary))
    if failure:
        # A Failed state rather than an exception: the run ends Failed with this one line as its
        # message, without Prefect logging a traceback for what is a reported outcome, not a bug.
        return Failed(message=f"{root.dvc_yaml}: {failure}", data=asdict(summary))
    return asdict(summary)


def _train_patches(workspace: Workspace, patch_ids: list[str], config: OrchestrationConfig, pipeline: PipelineRun,
                   summary: FlowSummary) -> dict[str, str]:
    """Submit every patch at once (the runner bounds concurrency); wait for all; the failed ones with reasons."""
    logger = get_run_logger()
    concurrency = config.max_concurrent_patches or default_concurrency(len(patch_ids))
    environment = stage_environment(pipeline.child_environment(), threads=patch_threads(config, concurrency))
    logger.info("training %d patches, %s at a time (%s runner)", len(patch_ids),
                concurrency if trains_on_this_machine(config) else "as many as the cluster's workers", config.task_runner)
    one_patch = patch_task.with_options(retries=config.patch_retries, retry_delay_seconds=config.retry_delay_seconds)
    failed: dict[str, str] = {}
    runner = patch_task_runner(config, concurrency, workspace.params_file)
    try:
        # A Dask cluster is reached (or a local one started) here or at the first submit.
        runner.__enter__()
        futures = {pid: runner.submit(one_patch, parameters={"patch_id": pid, "workspace": str(workspace.root),
                                                               "environment": environment}) for pid in patch_ids}
    except Exception as error:  # noqa: BLE001 - a cluster that cannot be reached or started is a setting's problem
        runner.__exit__(None, None, None)
        where = f"orchestration.dask_address {config.dask_address}" if config.dask_address else "orchestration.task_runner"
        detail = str(error).splitlines()[0] if str(error) else ""
        raise StageFailed(f"{where}: the {config.task_runner} task runner did not start ({type(error).__name__}: {detail})") from None
    try:
        for patch_id, future in futures.items():
            future.wait()
            state = future.state
            if state.is_completed():
                for outcome in future.result():
                    summary.stages.append(asdict(outcome))
                continue
            outcomes = _outcomes_of(state)
            summary.stages.extend(outcomes)
            if state.is_cancelled():  # stopped by Ctrl-C/SIGTERM, or not started because of it
                summary.interrupted_patches.append(patch_id)
                continue
            # The task's own one-line reason (or Prefect's, for a crashed worker)
            failed[patch_id] = (state.message or state.name).removeprefix(f"train@{patch_id}: ")
            if outcomes:  # the last is the stage that failed
                outcomes[-1]["reason"] = failed[patch_id]
            else:  # a crashed worker: nothing came back
                summary.stages.append(asdict(StageOutcome(f"train@{patch_id}", True, 0.0, 1, failed[patch_id], CRASHED,
                                                          patch_id)))
            logger.error("patch %s failed: %s", patch_id, failed[patch_id])
    finally:
        runner.__exit__(None, None, None)
    # Only now, with no patch's DVC left running: DVC rewrites dvc.lock in place when a stage ends,
    # so reading it while other patches finish could catch it half-written.
    for patch_id in patch_ids:
        for stage in (f"prepare@{patch_id}", f"train@{patch_id}"):
            pipeline.tag_stage(stage)
    return failed
