"""The one way the pipeline's stages are run: ``dvc repro`` as a registered child, its outcome from the stages' records.

``patchsplat repro`` (its thread pool of patches), ``patchsplat run`` and the Prefect flow all start
their stages here:

* the environment of a stage process (:func:`stage_environment`): this patchsplat first on PATH,
  unbuffered output, CPU threads shared among the patches that train at once, and the file the
  stages write their records to;
* ``dvc --wait-for-lock repro ...``: DVC releases its repository lock while a stage's command runs, so
  concurrent ``dvc repro --single-item train@pN`` processes in one workspace only queue for the short
  lock-file updates (``--wait-for-lock`` makes them wait instead of failing);
* the process is a registered child (:mod:`patchsplat.orchestrate.interrupts`): Ctrl-C reaches it from
  there, the stage stops (training after saving a checkpoint), and once interrupted no stage starts;
* its lines go to a log callback (the Prefect log) or, without one, to this terminal;
* what happened comes from the stage's own record (:mod:`patchsplat.stage_record`: outcome, the
  failure's kind, its one line), never from the prose it printed. Only for failures no record
  explains — DVC itself failed (before the stage's command ran, or recording its outputs after), or
  the command died before it could write a record — is DVC's own report read (:func:`_dvc_report`).

Running each stage through DVC (rather than calling the library and fixing ``dvc.lock`` afterwards)
keeps the three ways of running the pipeline interchangeable: DVC skips a stage whose inputs did not
change, records what a stage produced in ``dvc.lock``, and a later ``dvc status`` is clean.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from patchsplat import errors, stage_record
from patchsplat.orchestrate import interrupts
from patchsplat.stage_record import RECORDS_ENV, StageRecord, patch_of, read_records
from patchsplat.workspace import Workspace

Log = Callable[[str], None]
# Given the closing records of the stages a dvc process ran (patchsplat repro's time table).
RecordSink = Callable[[list[StageRecord]], None]

# DVC's advice after a stage (git add dvc.lock, autostage, dvc push): noise in a flow's log.
_HINTS = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
          "Use `dvc push`")
# DVC's report of a stage command that failed: "failed to run: patchsplat stage train p0, exited with 130".
_EXITED = re.compile(r"exited with (-?\d+)\s*$")
# A stage stopped by SIGINT/SIGTERM: it exited 130/143 (patchsplat.console.guarded) or died of the signal.
_SIGNAL_STATUSES = {130, 143, -2, -15}
# DVC's own report of a SIGINT outside a stage's command.
_DVC_INTERRUPTED = "interrupted by the user"


# ---------------------------------------------------------------- the environment


def threads_per_patch(concurrent_patches: int) -> int:
    """The CPU threads each of ``concurrent_patches`` trainings on this machine gets: the cores, shared."""
    return max(1, (os.cpu_count() or 1) // max(1, concurrent_patches))


def stage_environment(extra: dict[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """The environment of a stage process: this interpreter's bin folder first on PATH (dvc.yaml runs
    ``patchsplat stage ...``: this patchsplat), no DVC analytics, and ``threads`` CPU threads when patches
    share the machine. PYTHONPATH is passed on as it is (a checkout's tests point it at a copy's code)."""
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["DVC_NO_ANALYTICS"] = "1"
    # A stage's output goes to a pipe (DVC passes it on to the flow's log), where Python would buffer
    # it in 8 kB blocks: progress lines would arrive minutes late, all at once.
    environment["PYTHONUNBUFFERED"] = "1"
    if threads is not None:
        environment["OMP_NUM_THREADS"] = environment["MKL_NUM_THREADS"] = str(threads)
    environment.update(extra or {})
    return environment


# ---------------------------------------------------------------- outcomes


@dataclass
class StageOutcome:
    """What ``dvc repro --single-item STAGE`` did (a dict of it crosses Prefect's and Dask's process boundaries)."""

    stage: str
    ran: bool                  # False: DVC found it up to date (or restored it from its run cache)
    seconds: float
    returncode: int
    reason: str | None = None  # the failure's one line (the stage's own, or DVC's), "interrupted", "not started"
    kind: str | None = None    # the failure's kind (patchsplat.errors): from the stage's record when it wrote one
    patch: str | None = None   # the patch of a per-patch stage
    interrupted: bool = False  # stopped by Ctrl-C/SIGTERM (its checkpoints kept): never worth a retry

    @property
    def failed(self) -> bool:
        return self.returncode != 0

    @property
    def worth_a_retry(self) -> bool:
        """Could running it again end differently (a crash, a training resumed from its checkpoint)? Never
        for bad input, which a retry would only repeat, nor for an interrupt the user asked for."""
        return self.failed and not self.interrupted and errors.worth_a_retry(self.kind)

    @classmethod
    def not_started(cls, stage: str) -> "StageOutcome":
        """A stage whose turn came after Ctrl-C."""
        return cls(stage, False, 0.0, 128 + 2, "not started", patch=patch_of(stage), interrupted=True)


@dataclass
class ReproOutcome:
    """What ``dvc repro ARGS`` (targets and what they need) did."""

    command: str
    returncode: int
    seconds: float
    failure: str | None = None  # the one line saying what failed
    interrupted: bool = False

    @property
    def failed(self) -> bool:
        return self.returncode != 0


@dataclass
class _DvcRun:
    """A finished ``dvc`` child: its exit status, the records its stages wrote, DVC's last ERROR line."""

    returncode: int
    seconds: float
    records: list[StageRecord]
    dvc_error: str | None = None
    not_started: bool = False

    def stage_records(self, stage: str) -> list[StageRecord]:
        return [record for record in self.records if record.stage == stage]


def _dvc_report(run: _DvcRun) -> tuple[str, str, bool]:
    """(kind, reason, interrupted) of a failure no stage record explains, from what DVC itself printed:
    its command died before writing a record ("exited with N": crashed, or stopped by a signal while
    starting), or DVC itself failed (before running it: a lock, a bad dvc.yaml, an unknown stage; or
    after: an output the stage did not write)."""
    error = run.dvc_error or f"dvc exited with status {run.returncode}"
    exited = _EXITED.search(error)
    status = int(exited.group(1)) if exited else None
    interrupted = status in _SIGNAL_STATUSES or _DVC_INTERRUPTED in error
    if status is not None:
        return errors.CRASHED, f"the stage's command ended without a record ({error})", interrupted
    return errors.DVC_FAILED, error, interrupted


def _failure_of(records: list[StageRecord], run: _DvcRun) -> tuple[str | None, str, bool]:
    """(kind, reason, interrupted) of a failed run, from the last stage record that failed or was interrupted;
    a stage that started and never ended crashed (killed, out of memory: DVC's line gives the status);
    with no such record, DVC's own report."""
    settled = _settled(records)
    for record in reversed(settled):
        if record.outcome == stage_record.INTERRUPTED:
            return None, "interrupted", True
        if record.outcome == stage_record.FAILED:
            reason = record.reason or f"{record.stage} failed"
            if record.kind == errors.CRASHED and run.dvc_error:
                reason = f"{reason}; dvc: {run.dvc_error}"
            return record.kind, reason, False
    return _dvc_report(run)


def _settled(records: list[StageRecord]) -> list[StageRecord]:
    """Each stage's closing record, in the order they ended; a stage that only started is listed as crashed."""
    open_stages: dict[str, StageRecord] = {}
    closing: list[StageRecord] = []
    for record in records:
        if record.ended:
            open_stages.pop(record.stage, None)
            closing.append(record)
        else:
            open_stages[record.stage] = record
    return closing + [StageRecord(record.stage, stage_record.FAILED, 0.0, errors.CRASHED,
                                  "the stage process ended without a record (killed? out of memory?)")
                      for record in open_stages.values()]


# ---------------------------------------------------------------- running dvc


class _LineFilter:
    """Which of a dvc child's lines to pass on: not DVC's git/push hints, and once interrupted not what an
    interrupt makes DVC and a stage caught mid-import print (DVC's "failed to reproduce", a traceback ending
    in KeyboardInterrupt): noise next to the closing line that says what stopped. Remembers DVC's last
    ERROR line, for the failures no stage record explains."""

    def __init__(self) -> None:
        self.dvc_error: str | None = None
        self.in_traceback = False

    def keep(self, line: str) -> bool:
        if line.startswith("ERROR: "):
            self.dvc_error = line[len("ERROR: "):].strip()
        if line.lstrip().startswith(_HINTS):
            return False
        if not interrupts.interrupted.is_set():
            return True
        if line.startswith("Traceback (most recent call last)"):
            self.in_traceback = True
        if self.in_traceback:
            self.in_traceback = line[:1].isspace() or line.startswith(("Traceback", "During handling",
                                                                      "The above exception"))
            return False
        return not (line.startswith("ERROR: ") or line.strip() == "KeyboardInterrupt")


def _pass_lines(stream, lines: _LineFilter, log: Log | None) -> None:
    """Each kept line to ``log`` (blank lines dropped), or without one to our stderr as it came."""
    for raw in stream:
        if not lines.keep(raw.rstrip("\n")):
            continue
        if log is not None:
            if raw.strip():
                log(raw.rstrip())
        else:
            sys.stderr.write(raw)
            sys.stderr.flush()


def _run_dvc(arguments: Iterable[str], label: str, workspace: Workspace, environment: dict[str, str],
             log: Log | None) -> _DvcRun:
    """``python -m dvc --wait-for-lock ARGS`` in the workspace as a registered child labelled ``label``.

    With ``log`` its whole output goes there line by line; without, its standard output stays on our
    terminal (a stage's progress bars need it) and its errors pass through :class:`_LineFilter`.
    """
    started = time.perf_counter()
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", *arguments]
    handle, records_path = tempfile.mkstemp(prefix="patchsplat-stage-records-", suffix=".jsonl")
    os.close(handle)
    lines = _LineFilter()
    streams = ({"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if log is not None
               else {"stderr": subprocess.PIPE})
    try:
        with interrupts.child(command, label, cwd=workspace.root, env={**environment, RECORDS_ENV: records_path},
                              text=True, errors="replace", bufsize=1, **streams) as process:
            _pass_lines(process.stdout if log is not None else process.stderr, lines, log)
            returncode = process.wait()
        return _DvcRun(returncode, time.perf_counter() - started, read_records(records_path), lines.dvc_error)
    except interrupts.NotStarted:
        return _DvcRun(128 + 2, 0.0, [], not_started=True)
    finally:
        Path(records_path).unlink(missing_ok=True)


def run_stage(stage: str, workspace: Workspace, environment: dict[str, str], log: Log | None = None,
              on_records: RecordSink | None = None) -> StageOutcome:
    """Reproduce one stage (not its upstream): ``dvc repro --single-item STAGE``; its lines to ``log`` (or
    to this terminal), its outcome from its record (also given to ``on_records``)."""
    run = _run_dvc(["repro", "--single-item", stage], stage, workspace, environment, log)
    if run.not_started:
        return StageOutcome.not_started(stage)
    records = run.stage_records(stage)
    if on_records is not None:
        on_records(_settled(records))
    ran = bool(records) or (run.dvc_error is not None and _EXITED.search(run.dvc_error) is not None)
    if run.returncode == 0:
        return StageOutcome(stage, ran, run.seconds, 0, patch=patch_of(stage))
    kind, reason, interrupted = _failure_of(records, run)
    if interrupted or interrupts.interrupted.is_set():
        return StageOutcome(stage, ran, run.seconds, run.returncode, "interrupted", patch=patch_of(stage),
                            interrupted=True)
    return StageOutcome(stage, ran, run.seconds, run.returncode, reason, kind, patch_of(stage))


def run_repro(arguments: Iterable[str], workspace: Workspace, environment: dict[str, str], log: Log | None = None,
              on_records: RecordSink | None = None) -> ReproOutcome:
    """``dvc repro ARGS``: the targets and every stage they need that is out of date, one after the other;
    the closing records of the stages that ran go to ``on_records``."""
    arguments = ["repro", *arguments]
    label = "dvc " + " ".join(arguments)
    run = _run_dvc(arguments, label, workspace, environment, log)
    if run.not_started:
        return ReproOutcome(label, run.returncode, 0.0, interrupted=True)
    settled = _settled(run.records)
    if on_records is not None:
        on_records(settled)
    if run.returncode == 0:
        return ReproOutcome(label, 0, run.seconds)
    kind, reason, interrupted = _failure_of(run.records, run)
    failed = next((record.stage for record in reversed(settled) if record.outcome == stage_record.FAILED), None)
    # The failed stage printed its own one line just before; this line names it and the kind of failure.
    failure = f"stage {failed} failed ({kind})" if failed else reason
    return ReproOutcome(label, run.returncode, run.seconds, failure, interrupted or interrupts.interrupted.is_set())


def pipeline_up_to_date(workspace: Workspace, environment: dict[str, str]) -> bool:
    """``dvc status`` reports nothing: every stage's inputs and outputs match ``dvc.lock``."""
    try:
        completed = interrupts.run_child([sys.executable, "-m", "dvc", "status", "--json"], "dvc status",
                                         cwd=workspace.root, env=environment, capture_output=True, text=True)
    except interrupts.NotStarted:
        return False
    if completed.returncode != 0:
        return False
    try:
        return json.loads(completed.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False


def group_failures(failed_patches: dict[str, str]) -> str:
    """``p0: R0; p1: R1`` with patches failing for the same reason named once together: ``p0, p1: R``
    (a scene problem, e.g. distorted cameras, fails every patch alike; its path is written with ``<patch>``)."""
    groups: dict[str, list[str]] = {}
    for patch_id, reason in failed_patches.items():
        general = re.sub(rf"(?<![\w.-]){re.escape(patch_id)}(?![\w.-])", "<patch>", reason)
        groups.setdefault(general, []).append(patch_id)
    return "; ".join(f"{ids[0]}: {failed_patches[ids[0]]}" if len(ids) == 1 else f"{', '.join(ids)}: {reason}"
                     for reason, ids in groups.items())
