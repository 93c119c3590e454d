"""Shared terminal output, and the guard every command and stage runs under: an input error becomes one
line, an interrupt (Ctrl-C, SIGTERM) one line and exit status 130/143, and a DVC stage ends with its time."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console

from patchsplat.errors import InputError

# Tables are wide; when output goes to a file or a pipe (DVC, CI) rich would assume 80 columns.
console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)

T = TypeVar("T")

EXIT_INPUT_ERROR = 1
# Where a stage process appends {"stage", "outcome", "seconds"} when it ends (a JSON line), if set:
# `patchsplat repro` reads it for its closing time table and to name the stages an interrupt stopped.
STAGE_TIMES_ENV = "PATCHSPLAT_STAGE_TIMES"
# A stage whose output goes to a pipe (dvc repro, patchsplat run) says it is still running this often.
HEARTBEAT_SECONDS = 60.0


class Interrupted(KeyboardInterrupt):
    """The user stopped the command (Ctrl-C, SIGTERM): ``str`` is the one line to show, ``exit_status``
    the shell's for that signal (130 for SIGINT, 143 for SIGTERM). A KeyboardInterrupt, like the training
    loop's ``TrainingInterrupted``, so code that cleans up after Ctrl-C cleans up after this too."""

    def __init__(self, message: str, exit_status: int = 128 + signal.SIGINT, exit_now: bool = False) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        # Everything is cleaned up already (children ended, servers stopped): exit without the
        # interpreter's teardown, which costs seconds with torch/Prefect/MLflow loaded.
        self.exit_now = exit_now


def fail(error: InputError) -> None:
    """Print the one-line error and exit non-zero (no traceback)."""
    # soft_wrap: the message must stay on one line however narrow the terminal.
    err_console.print(f"error: {error.one_line()}", markup=False, soft_wrap=True)
    sys.exit(EXIT_INPUT_ERROR)


_signal_received: int | None = None
_guarding = False


def _stage_signal(number: int, frame) -> None:
    """SIGINT/SIGTERM in a DVC stage process: both stop it the same way (DVC and the flow forward SIGINT,
    a batch system or ``kill`` sends SIGTERM)."""
    global _signal_received
    _signal_received = number
    if not _guarding:
        # Still importing (torch alone takes seconds): nothing to save yet, so leave quietly now
        # rather than with a traceback from inside some import.
        stage = os.environ.get("DVC_STAGE", "stage")
        err_console.print(f"{stage}: interrupted while starting", markup=False, soft_wrap=True)
        raise SystemExit(128 + number)
    raise KeyboardInterrupt


def _in_dvc_stage() -> bool:
    return bool(os.environ.get("DVC_STAGE")) and threading.current_thread() is threading.main_thread()


if _in_dvc_stage():
    # At import, so the handler is in place before a stage's slow imports (every stage script
    # imports this module before torch).
    for _number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_number, _stage_signal)


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _record_stage(stage: str | None, outcome: str, seconds: float) -> None:
    path = os.environ.get(STAGE_TIMES_ENV)
    if not stage or not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:  # one short append: whole lines even from parallel stages
            handle.write(json.dumps({"stage": stage, "outcome": outcome, "seconds": round(seconds, 2)}) + "\n")
    except OSError:
        pass  # only the closing table would miss this stage


class _Heartbeat:
    """"<stage>: still running (2 min 00 s)" every HEARTBEAT_SECONDS, for a stage whose output goes to a pipe:
    undistorting a large capture, meshing or evaluating can otherwise be silent for many minutes."""

    def __init__(self, stage: str, started: float) -> None:
        self.stage, self.started, self.stop = stage, started, threading.Event()
        threading.Thread(target=self.beat, name="patchsplat-heartbeat", daemon=True).start()

    def beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            console.print(f"{self.stage}: still running ({_seconds(time.perf_counter() - self.started)})",
                          markup=False, highlight=False)


def guarded(function: Callable[[], T], stage: str | None = None) -> T:
    """Run ``function`` (a command, or a stage's ``main``) so that:

    * an :class:`InputError` becomes one line on stderr and exit status 1;
    * Ctrl-C or SIGTERM becomes one line and exit status 130 or 143, no traceback: the line is the
      KeyboardInterrupt's message when it carries one (the training loop's ``TrainingInterrupted``
      says at which step its checkpoint was saved), else "<stage>: interrupted after 12.3 s";
    * a DVC stage (``stage``, by default DVC's ``DVC_STAGE``) ends with "<stage> done in 12.3 s",
      says it is still running every minute when its output goes to a pipe (training prints its own
      progress lines), and appends its outcome and time to ``$PATCHSPLAT_STAGE_TIMES`` when set.
    """
    global _guarding
    stage = stage or os.environ.get("DVC_STAGE") or None
    started = time.perf_counter()
    previous = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            # SIGTERM (kill, a batch system, `patchsplat run` escalating) stops like Ctrl-C, cleanly.
            previous = signal.signal(signal.SIGTERM, _stage_signal)
        _guarding = True
    heartbeat = _Heartbeat(stage, started) if stage and not stage.startswith("train@") and not sys.stdout.isatty() else None
    try:
        result = function()
    except InputError as error:
        _record_stage(stage, "failed", time.perf_counter() - started)
        fail(error)
        raise AssertionError("unreachable") from None
    except KeyboardInterrupt as interrupt:
        seconds = time.perf_counter() - started
        _record_stage(stage, "interrupted", seconds)
        message = str(interrupt) or f"interrupted after {_seconds(seconds)}"
        err_console.print(f"{stage}: {message}" if stage else message, markup=False, soft_wrap=True)
        status = getattr(interrupt, "exit_status", None) or 128 + (_signal_received or signal.SIGINT)
        if stage or getattr(interrupt, "exit_now", False):
            # A stage process whose checkpoint is written and whose `with` blocks (MLflow run, atomic
            # outputs) have all closed: tearing down the interpreter with torch loaded takes ~2 s on a busy
            # CPU, time the user waits for after Ctrl-C (and DVC after that). Only the output is left to flush.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        sys.exit(status)
    except SystemExit as exit_:
        _record_stage(stage, "failed" if exit_.code else "ran", time.perf_counter() - started)
        raise
    except BaseException:
        _record_stage(stage, "failed", time.perf_counter() - started)
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop.set()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if stage:
        seconds = time.perf_counter() - started
        _record_stage(stage, "ran", seconds)
        console.print(f"{stage} done in {_seconds(seconds)}", markup=False, highlight=False)
    return result
