"""DVC as the flow's bookkeeper: every stage the flow runs goes through ``dvc repro --single-item``.

Running each stage through DVC (rather than calling the library directly and fixing ``dvc.lock``
afterwards) is what keeps a flow run and ``dvc repro`` interchangeable: DVC skips a stage whose
inputs did not change, records what a stage produced in ``dvc.lock``, and a later ``dvc status`` is
clean. DVC releases its repository lock while a stage's command runs, so patches trained by
concurrent ``dvc repro -s train@pN`` processes in one workspace only queue for the short lock-file
updates (``--wait-for-lock`` makes them wait instead of failing).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# What DVC prints (3.x) when it runs a stage / finds it up to date.
_RAN = re.compile(r"^Running stage '([^']+)'")
_SKIPPED = re.compile(r"^Stage '([^']+)' (didn't change|is cached)")
# DVC's advice after a stage (git add dvc.lock, autostage, dvc push): noise in a flow's log.
_HINTS = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
          "Use `dvc push`")
# DVC's report of a stage command that failed: "failed to run: patchsplat stage train p0, exited with 130".
_EXITED = re.compile(r"exited with (-?\d+)\s*$")
# A stage stopped by SIGINT/SIGTERM: it exited 130/143 (patchsplat.console.guarded) or died of the signal.
_SIGNAL_STATUSES = {130, 143, -2, -15}
# DVC's own report of a SIGINT outside a stage's command.
_DVC_INTERRUPTED = "ERROR: interrupted by the user"
# MLflow tag keys allow letters, digits, '_', '-', '.', ' ' and '/'.
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass
class StageOutcome:
    """What ``dvc repro --single-item STAGE`` did."""

    stage: str
    ran: bool                 # False: DVC found it up to date (or restored it from its run cache)
    seconds: float
    returncode: int
    error: str | None = None  # the stage's own one-line error (or DVC's) when it failed
    reported: bool = False    # the failure is the stage's own one-line report (bad input, a ladder run out),
                              # not a crash, a lost worker or a DVC error
    interrupted: bool = False # stopped by Ctrl-C/SIGTERM (its checkpoints kept): never worth a retry

    @property
    def failed(self) -> bool:
        return self.returncode != 0


def stage_environment(extra: dict[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """The environment of a stage process: this interpreter's bin folder first on PATH (dvc.yaml runs
    ``patchsplat stage ...``: this patchsplat), no DVC analytics, and ``threads`` CPU threads when patches share the machine."""
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["DVC_NO_ANALYTICS"] = "1"
    # A stage's output goes to a pipe (DVC passes it on to the flow's log), where Python would buffer
    # it in 8 kB blocks: progress lines would arrive minutes late, all at once.
    environment["PYTHONUNBUFFERED"] = "1"
    environment.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        environment["OMP_NUM_THREADS"] = environment["MKL_NUM_THREADS"] = str(threads)
    environment.update(extra or {})
    return environment


def run_dvc_stage(stage: str, workspace: Path, environment: dict[str, str], log: Callable[[str], None]) -> StageOutcome:
    """Reproduce one stage (not its upstream) and pass every line it prints to ``log``.

    The ``dvc`` process is a registered child (:mod:`patchsplat.orchestrate.interrupts`): on Ctrl-C it
    gets SIGINT from there, the stage stops (training after saving a checkpoint) and the outcome says
    ``interrupted``; once interrupted, no stage starts.
    """
    from patchsplat.orchestrate import interrupts

    started = time.perf_counter()
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
    ran = False
    stage_error = dvc_error = None
    stage_status: int | None = None
    in_traceback = False
    try:
        with interrupts.child(command, stage, cwd=workspace, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1) as process:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip()
                if not line or line.lstrip().startswith(_HINTS):
                    continue
                if _RAN.match(line):
                    ran = True
                elif line.startswith("error: "):  # a stage's one-line InputError (patchsplat.console.fail)
                    stage_error = line[len("error: "):]
                elif line.startswith("ERROR: "):
                    dvc_error = line[len("ERROR: "):]
                    if (exited := _EXITED.search(line)) is not None:
                        stage_status = int(exited.group(1))
                if interrupts.interrupted.is_set():
                    # What an interrupt makes DVC and a stage caught mid-import print is noise next to the
                    # closing line that says what stopped: DVC's "failed to reproduce", a traceback ending
                    # in KeyboardInterrupt.
                    if line.startswith("Traceback (most recent call last)"):
                        in_traceback = True
                    if in_traceback:
                        in_traceback = line[:1].isspace() or line.startswith(("Traceback", "During handling",
                                                                              "The above exception"))
                        continue
                    if line.startswith("ERROR: ") or line == "KeyboardInterrupt":
                        continue
                log(line)
            returncode = process.wait()
    except interrupts.NotStarted:
        return StageOutcome(stage, False, 0.0, 128 + 2, "not started: interrupted", interrupted=True)
    interrupted = bool(returncode) and (interrupts.interrupted.is_set() or stage_status in _SIGNAL_STATUSES
                                        or (dvc_error or "").startswith(_DVC_INTERRUPTED[len("ERROR: "):]))
    if interrupted:
        error = "interrupted"
    else:
        error = (stage_error or dvc_error or f"dvc exited with status {returncode}") if returncode else None
    return StageOutcome(stage, ran, time.perf_counter() - started, returncode, error,
                        reported=_reported(returncode, stage_error, interrupted), interrupted=interrupted)


def _reported(returncode: int, stage_error: str | None, interrupted: bool) -> bool:
    """Whether the failure is the stage's own one-line report of a problem a retry would only repeat (bad
    input, a ladder run out). An unexpected internal error also ends in one line ("unexpected ...", see
    patchsplat.console.report_unexpected) but is a crash like a traceback: worth a retry."""
    return bool(returncode and stage_error and not interrupted and not stage_error.startswith("unexpected "))


def pipeline_up_to_date(workspace: Path, environment: dict[str, str]) -> bool:
    """``dvc status`` reports nothing: every stage's inputs and outputs match ``dvc.lock``."""
    from patchsplat.orchestrate import interrupts

    try:
        completed = interrupts.run_child([sys.executable, "-m", "dvc", "status", "--json"], "dvc status",
                                         cwd=workspace, env=environment, capture_output=True, text=True)
    except interrupts.NotStarted:
        return False
    if completed.returncode != 0:
        return False
    try:
        return json.loads(completed.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False


def lock_entries(workspace: Path) -> dict[str, dict]:
    """``dvc.lock``'s stages: name -> its entry (cmd, deps, params, outs)."""
    from patchsplat.config import read_yaml
    from patchsplat.errors import InputError

    lock = workspace / "dvc.lock"
    if not lock.exists():
        return {}
    content = read_yaml(lock, "DVC lock file") or {}
    stages = content.get("stages", {}) if isinstance(content, dict) else None
    if not isinstance(stages, dict):
        raise InputError(lock, "not a DVC lock file (no stages mapping): delete it and run again", kind="corrupt_file")
    return stages


def _hash_of(entry: dict) -> str | None:
    return entry.get("md5") or entry.get("hash") and entry.get(entry["hash"]) or None


def tag_key(text: str) -> str:
    return _TAG_UNSAFE.sub("_", text)


def stage_hash_tags(entry: dict) -> dict[str, str]:
    """One stage's lock entry as MLflow tags: ``dvc.deps.<path>`` / ``dvc.outs.<path>`` -> md5."""
    tags = {}
    for section in ("deps", "outs"):
        for item in entry.get(section, []) or []:
            digest = _hash_of(item)
            if digest:
                tags[tag_key(f"dvc.{section}.{item['path']}")] = str(digest)
    return tags


def pipeline_hash_tags(workspace: Path) -> dict[str, str]:
    """The whole pipeline's lock as tags: every output, every input no stage produces, and the lock's own md5."""
    entries = lock_entries(workspace)
    produced = {item["path"] for entry in entries.values() for item in entry.get("outs", []) or []}
    tags: dict[str, str] = {}
    for entry in entries.values():
        for item in entry.get("outs", []) or []:
            if _hash_of(item):
                tags[tag_key(f"dvc.outs.{item['path']}")] = str(_hash_of(item))
        for item in entry.get("deps", []) or []:
            inside = any(item["path"] == path or item["path"].startswith(path.rstrip("/") + "/") for path in produced)
            if not inside and _hash_of(item):
                tags[tag_key(f"dvc.inputs.{item['path']}")] = str(_hash_of(item))
    lock = workspace / "dvc.lock"
    if lock.exists():
        tags["dvc.lock.md5"] = hashlib.md5(lock.read_bytes()).hexdigest()
    return tags
