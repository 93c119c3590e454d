"""Shared terminal output, and the guard every command and stage runs under: a :class:`PatchsplatError` (bad
input, a training whose ladder ran out...) or a failed file operation (permission denied, disk full, read-only
folder...) becomes one line, an unexpected error one line and a trace file (the traceback itself with ``--debug``
or PATCHSPLAT_DEBUG=1), an interrupt (Ctrl-C, SIGTERM) one line and exit status 130/143, and a DVC stage ends
with its time and a record of its outcome (:mod:`patchsplat.stage_record`)."""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from patchsplat import stage_record
from patchsplat.errors import EXITED, INTERNAL_ERROR, FileError, PatchsplatError
from patchsplat.stage_record import StageRecord

# Tables are wide; when output goes to a file or a pipe (DVC, CI) rich would assume 80 columns.
console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)

T = TypeVar("T")

EXIT_REPORTED_ERROR = 1  # a PatchsplatError: bad input, a training that failed, a refused file operation...
# An unexpected (internal) error: one line and a trace file, or the traceback in debug mode.
EXIT_INTERNAL_ERROR = 1
# Set (to anything but "" or "0") by `patchsplat --debug`, or by the user: unexpected errors show their traceback.
# An environment variable so the stage processes `patchsplat run/repro` start inherit it.
DEBUG_ENV = "PATCHSPLAT_DEBUG"
# An echoed value (an exception's message) is cut to this many characters: one line must stay readable.
MAX_LINE_CHARS = 400
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


def shorten(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters (a huge value must not become a huge error line)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 25] + f"... ({len(line)} characters)"


def fail(error: PatchsplatError) -> None:
    """Print the one-line error and exit non-zero (no traceback)."""
    # soft_wrap: the message must stay on one line however narrow the terminal.
    err_console.print(f"error: {shorten(error.one_line())}", markup=False, soft_wrap=True)
    sys.exit(EXIT_REPORTED_ERROR)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def file_error(error: OSError) -> FileError | None:
    """A failed file operation as the error to show ("<file>: No space left on device"), or None for an
    OSError that names no file and is not one of the usual user-side causes (a bug: shown as unexpected).
    Writers that know their target name it (patchsplat.atomic); a bare write() on a full disk cannot."""
    # A failed rename names the destination: the source is usually a writer's temporary sibling.
    where = error.filename2 if error.filename2 is not None else error.filename
    problem = error.strerror or str(error)
    if where is not None:
        return FileError(os.fsdecode(where), problem)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
        return FileError("writing outputs" if error.errno != errno.EIO else "reading or writing", problem)
    return None


def _trace_file(exception: BaseException) -> Path | None:
    """Write the full traceback to a file in the temp dir (never into the workspace, which may be the
    read-only or full place that failed) and return its path; None when even that cannot be written."""
    try:
        handle, name = tempfile.mkstemp(prefix="patchsplat-trace-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(f"patchsplat {' '.join(sys.argv)}\n")
            out.write("".join(traceback.format_exception(type(exception), exception, exception.__traceback__)))
        return Path(name)
    except OSError:
        return None


def _unexpected_summary(exception: BaseException) -> str:
    return "unexpected " + shorten(f"{type(exception).__name__}: {exception}", MAX_LINE_CHARS - 120)


def unexpected_line(exception: BaseException) -> str:
    """Write the traceback to a trace file; the one line naming the error and where its traceback went."""
    trace = _trace_file(exception)
    where = f"full trace in {trace}" if trace else "the trace could not be written"
    return f"{_unexpected_summary(exception)} ({where}; --debug or {DEBUG_ENV}=1 shows it)"


def _exit_unexpected(line: str) -> None:
    err_console.print(f"error: {line}", markup=False, soft_wrap=True)
    sys.exit(EXIT_INTERNAL_ERROR)


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


class _Recorder:
    """The outcome record (:mod:`patchsplat.stage_record`) of the DVC stage being guarded; nothing for a
    command (``stage`` None) or when no runner asked for records."""

    def __init__(self, stage: str | None) -> None:
        self.stage, self.started = stage, time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def write(self, outcome: str, kind: str | None = None, reason: str | None = None) -> None:
        if self.stage:
            stage_record.append_record(StageRecord(self.stage, outcome, self.seconds, kind, reason))

    def failed(self, error: PatchsplatError) -> None:
        self.write(stage_record.FAILED, error.kind, shorten(error.one_line()))

    def exited(self, status: object) -> None:
        """``sys.exit(status)`` (or click's equivalent) ended the stage."""
        if status in (0, None):
            self.write(stage_record.DONE)
        else:
            self.write(stage_record.FAILED, EXITED, f"exit status {status}")


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


def _exit_unexpected_or_reraise(error: BaseException, recorder: _Recorder) -> None:
    """Exit with one line and a trace file, unless in debug mode or the exception is click's own (typer.Exit,
    Abort, a usage error: click handles those itself), when the caller re-raises it."""
    import click

    if isinstance(error, (click.exceptions.Exit, click.exceptions.Abort, click.ClickException)):
        recorder.exited(getattr(error, "exit_code", 1))
        return
    if debug_enabled():
        recorder.write(stage_record.FAILED, INTERNAL_ERROR, _unexpected_summary(error))
        return
    line = unexpected_line(error)
    recorder.write(stage_record.FAILED, INTERNAL_ERROR, line)
    _exit_unexpected(line)


def _exit_interrupted(interrupt: KeyboardInterrupt, recorder: _Recorder) -> None:
    """One line saying what stopped (and where its checkpoint is), then the signal's exit status."""
    stage = recorder.stage
    message = str(interrupt) or f"interrupted after {_seconds(recorder.seconds)}"
    recorder.write(stage_record.INTERRUPTED, reason=message)
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


def guarded(function: Callable[[], T], stage: str | None = None) -> T:
    """Run ``function`` (a command, or a stage's ``main``) so that:

    * a :class:`PatchsplatError` (bad input, a training whose ladder ran out, ...) becomes one line on stderr
      and exit status 1, and so does an OSError naming a file ("<file>: Permission denied", "No space left
      on device", "Read-only file system", ...);
    * any other exception becomes one line naming it and a trace file, exit status 1; with ``--debug`` or
      PATCHSPLAT_DEBUG=1 it propagates with its traceback instead;
    * Ctrl-C or SIGTERM becomes one line and exit status 130 or 143, no traceback: the line is the
      KeyboardInterrupt's message when it carries one (the training loop's ``TrainingInterrupted``
      says at which step its checkpoint was saved), else "<stage>: interrupted after 12.3 s";
    * a DVC stage (``stage``, by default DVC's ``DVC_STAGE``) ends with "<stage> done in 12.3 s",
      says it is still running every minute when its output goes to a pipe (training prints its own
      progress lines), and records that it started and how it ended — outcome, a failure's kind and
      one line, its time — in ``$PATCHSPLAT_STAGE_RECORDS`` when set (:mod:`patchsplat.stage_record`).
    """
    global _guarding
    recorder = _Recorder(stage or os.environ.get("DVC_STAGE") or None)
    stage = recorder.stage
    recorder.write(stage_record.STARTED)
    previous = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            # SIGTERM (kill, a batch system, `patchsplat run` escalating) stops like Ctrl-C, cleanly.
            previous = signal.signal(signal.SIGTERM, _stage_signal)
        _guarding = True
    heartbeat = _Heartbeat(stage, recorder.started) if stage and not stage.startswith("train@") and not sys.stdout.isatty() else None
    try:
        result = function()
    except PatchsplatError as error:
        recorder.failed(error)
        fail(error)
        raise AssertionError("unreachable") from None
    except KeyboardInterrupt as interrupt:
        _exit_interrupted(interrupt, recorder)
        raise AssertionError("unreachable") from None
    except SystemExit as exit_:
        recorder.exited(exit_.code)
        raise
    except OSError as error:
        shown = file_error(error)
        if shown is None or debug_enabled():
            _exit_unexpected_or_reraise(error, recorder)
            raise
        recorder.failed(shown)
        fail(shown)
        raise AssertionError("unreachable") from None
    except Exception as error:
        _exit_unexpected_or_reraise(error, recorder)
        raise
    except BaseException as error:
        recorder.write(stage_record.FAILED, INTERNAL_ERROR, _unexpected_summary(error))
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop.set()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    recorder.write(stage_record.DONE)
    if stage:
        console.print(f"{stage} done in {_seconds(recorder.seconds)}", markup=False, highlight=False)
    return result
