"""``patchsplat repro``: ``dvc repro`` after re-syncing the patch ids with the split, patches trained side by side.

Every ``dvc`` process goes through :mod:`patchsplat.orchestrate.stage_runner`, as the flow's do: the
same environment, lock waiting, interrupt handling and stage records. The stages' output stays on
this terminal (their progress bars need it); what each stage did comes from its record, and the run
ends (also when a stage fails or an interrupt stops it) with a table of the stages that ran and
their times.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from patchsplat.errors import PatchsplatError, PipelineFailed
from patchsplat.orchestrate import interrupts
from patchsplat.orchestrate.stage_runner import (
    StageOutcome, group_failures, run_repro, run_stage, stage_environment, threads_per_patch,
)
from patchsplat.patch_ids import SyncResult, planned_patch_ids, sync_patch_ids
from patchsplat.stage_record import INTERRUPTED, StageRecord
from patchsplat.workspace import Workspace


class ReproRecords:
    """The closing records of every stage a ``patchsplat repro`` ran, gathered from its ``dvc`` processes
    (several at once while patches train side by side)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[StageRecord] = []

    def add(self, records: list[StageRecord]) -> None:
        with self._lock:
            self._records.extend(records)

    def all(self) -> list[StageRecord]:
        with self._lock:
            return list(self._records)

    def interrupted(self) -> list[str]:
        """The stages an interrupt stopped, as they reported it."""
        return [record.stage for record in self.all() if record.outcome == INTERRUPTED]


def repro(workspace: Workspace, extra_args: tuple[str, ...] = (), jobs: int = 1,
          records: ReproRecords | None = None) -> SyncResult:
    """Bring the scene up to date, re-sync the patch ids with the split, then ``dvc repro`` everything.

    With ``jobs`` > 1 the patches are trained ``jobs`` at a time (after everything they need is
    reproduced), then the rest of the pipeline runs. ``records`` gathers what the stages did (for the
    caller's closing line after an interrupt).
    """
    from patchsplat.orchestrate.report import print_stage_times, repro_rows
    from patchsplat.run_report import write_run_report_or_say_why

    records = records if records is not None else ReproRecords()
    environment = stage_environment()
    started = time.perf_counter()
    outcome = "failed: interrupted by an unexpected error (see the traceback)"  # until one of the lines below says else
    try:
        _repro_step(("validate",), workspace, environment, records)
        result = sync_patch_ids(planned_patch_ids(workspace), workspace)
        if jobs > 1 and len(result.new_ids) > 1:
            from patchsplat.config import load_params
            from patchsplat.tracking import prepare_store

            _repro_step(("prepare", *extra_args), workspace, environment, records)
            prepare_store(load_params(workspace.params_file).tracking, workspace.root)
            _train_in_parallel(result.new_ids, jobs, workspace, records)
        _repro_step(extra_args, workspace, environment, records)
        outcome = "succeeded"
    except interrupts.NotStarted:
        outcome = "interrupted"
        raise
    except PatchsplatError as error:
        outcome = "interrupted" if interrupts.interrupted.is_set() else f"failed: {error.one_line()}"
        raise
    finally:
        seconds = time.perf_counter() - started
        print_stage_times(records.all(), seconds, title="patchsplat repro")
        if records.all() or outcome != "succeeded":  # a run with nothing to do leaves the last run's report
            write_run_report_or_say_why(workspace, lambda: repro_rows(records.all()), outcome, seconds)
    return result


def _repro_step(arguments: tuple[str, ...], workspace: Workspace, environment: dict[str, str],
                records: ReproRecords) -> None:
    """``dvc repro ARGS``; nothing after it runs when it failed or was interrupted."""
    outcome = run_repro(arguments, workspace, environment, on_records=records.add)
    if outcome.interrupted or interrupts.interrupted.is_set():
        raise interrupts.NotStarted("interrupted")
    if outcome.failed:
        raise PipelineFailed(outcome.command, outcome.failure or f"failed with exit status {outcome.returncode}")


def _train_in_parallel(patch_ids: list[str], jobs: int, workspace: Workspace, records: ReproRecords) -> None:
    """``dvc repro --single-item train@<id>`` for ``jobs`` patches at a time, the CPU cores shared among them.

    A stage whose lock entry were lost would only be re-run (and resume from its last checkpoint) by
    the final plain ``dvc repro``.
    """
    environment = stage_environment(threads=threads_per_patch(jobs))

    def train(patch_id: str) -> StageOutcome:
        return run_stage(f"train@{patch_id}", workspace, environment, on_records=records.add)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(train, patch_ids))
    if interrupts.interrupted.is_set() or any(outcome.interrupted for outcome in outcomes):
        raise interrupts.NotStarted("interrupted")
    failed = {outcome.patch: outcome.reason or "failed" for outcome in outcomes if outcome.failed}
    if failed:
        raise PipelineFailed("train", f"{len(failed)} of {len(patch_ids)} patches failed ({group_failures(failed)})",
                             kind="patches_failed")

