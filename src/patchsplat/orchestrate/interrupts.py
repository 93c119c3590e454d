"""Ctrl-C and SIGTERM for ``patchsplat run`` and ``patchsplat repro``: stop within seconds, children ended, one line.

Why Python's default (a KeyboardInterrupt wherever the main thread happens to be) is not enough: a
terminal's Ctrl-C goes to the whole foreground process group — every ``dvc`` process, every stage
process and Prefect's temporary API server. Measured before this module existed: the server died
with the first Ctrl-C, so every later API call of the flow failed and was retried, Prefect's events
worker logged each undelivered event in full (2 kB lines), the interrupted patches were scheduled
for a retry, and the run hung for minutes. So, while :func:`run` is in charge:

* every child (``dvc repro ...``) starts in a session of its own (:func:`child`) and is registered
  here, so a signal reaches it only when we forward it; Prefect's temporary API server is started in
  a session of its own too (:mod:`patchsplat.orchestrate.prefect_api`);
* the work runs in a worker thread and the main thread only waits, so no KeyboardInterrupt (nor
  Prefect's SIGTERM bridge, which only the main thread can install) lands inside Prefect's engine;
* the first SIGINT or SIGTERM sets :data:`interrupted` and forwards SIGINT to each child's process
  group: ``dvc`` ignores it while its stage runs and waits for it; the stage stops (training saves a
  checkpoint of its current step) and exits 130, which ``dvc`` reports as a failure, keeping the
  checkpoints (persisted outputs). What is still alive after :data:`GRACE_SECONDS` gets SIGTERM,
  then SIGKILL; a second signal does that at once;
* nothing new starts once :data:`interrupted` is set; the flow marks the interrupted tasks Cancelled
  (never retried) and the command ends with one line saying what stopped and how to continue
  (:class:`patchsplat.console.Interrupted`, exit status 130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from patchsplat.console import Interrupted
from patchsplat.workspace import Workspace

T = TypeVar("T")

# Seconds a child gets, after the forwarded SIGINT, to stop on its own (training finishes its step and
# writes a checkpoint: well under a second on a CPU, more for a large model on a GPU), then after SIGTERM.
GRACE_SECONDS = 3.5
TERM_SECONDS = 1.5
# How long the main thread waits for the work to wind down after the children are gone (Prefect's
# final state updates, the flow's summary: ~1 s) before it stops waiting and exits anyway (e.g. when
# Ctrl-C came while Prefect's temporary server was still starting).
WIND_DOWN_SECONDS = 4.0

interrupted = threading.Event()  # set by the first SIGINT/SIGTERM while run() is in charge


@dataclass
class _State:
    handling: bool = False                     # run() installed its handlers: children get sessions of their own
    signal_number: int | None = None           # the first signal received
    signalled_at: float = 0.0
    running_at_signal: list[str] = field(default_factory=list)  # labels of the children alive then
    escalate: threading.Event = field(default_factory=threading.Event)


_state = _State()
_lock = threading.Lock()
_children: dict[int, tuple[subprocess.Popen, str]] = {}  # pid -> (process, label)
_own_groups: set[int] = set()  # pids started in a session of their own: signalled as a whole group


class NotStarted(RuntimeError):
    """A child was not started because the command is being interrupted."""


def handling() -> bool:
    """Whether :func:`run` is in charge of signals (children then start in sessions of their own)."""
    return _state.handling


def popen(command: list[str], label: str, **kwargs) -> subprocess.Popen:
    """Start and register a child (``label``: the stage it runs, for the closing line); refused once interrupted."""
    with _lock:
        # Checked under the lock the stopper takes to list the children: a child either is refused
        # here or is in the list the forwarded signal goes to.
        if interrupted.is_set():
            raise NotStarted(f"{label}: not started (interrupted)")
        process = subprocess.Popen(command, start_new_session=_state.handling, **kwargs)
        _children[process.pid] = (process, label)
        if _state.handling:
            _own_groups.add(process.pid)
    return process


def release(process: subprocess.Popen) -> None:
    with _lock:
        _children.pop(process.pid, None)


@contextmanager
def child(command: list[str], label: str, **kwargs) -> Iterator[subprocess.Popen]:
    """A registered child for the duration of the block; if the block is left by an exception (a
    Prefect cancellation, a KeyboardInterrupt outside :func:`run`) the child's group is ended too, since
    in a session of its own it would otherwise outlive us."""
    process = popen(command, label, **kwargs)
    try:
        with process:
            try:
                yield process
            except BaseException:
                _end_groups([process.pid], wait=TERM_SECONDS)
                raise
    finally:
        release(process)


def run_child(command: list[str], label: str, **kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` for a registered child (``capture_output``/``text`` as there)."""
    if kwargs.pop("capture_output", False):
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with child(command, label, **kwargs) as process:
        out, err = process.communicate()
        return subprocess.CompletedProcess(command, process.returncode, out, err)


def _send(pid: int, number: int) -> None:
    """To the child's whole group when it has one of its own (dvc and its stage), else to the child alone."""
    os.killpg(pid, number) if pid in _own_groups else os.kill(pid, number)


def _group_alive(pgid: int) -> bool:
    try:
        _send(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_groups(pgids: list[int], number: int) -> None:
    for pgid in pgids:
        try:
            _send(pgid, number)
        except (ProcessLookupError, PermissionError):
            pass


def _end_groups(pgids: list[int], wait: float) -> None:
    """SIGTERM the groups, SIGKILL what is left after ``wait`` seconds."""
    _signal_groups(pgids, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_group_alive(pgid) for pgid in pgids):
        time.sleep(0.05)
    _signal_groups([pgid for pgid in pgids if _group_alive(pgid)], signal.SIGKILL)


def _stopper() -> None:
    """Forward SIGINT to every child's group; SIGTERM then SIGKILL whatever outlives the grace period."""
    with _lock:
        pgids = list(_children)
    _signal_groups(pgids, signal.SIGINT)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and any(_group_alive(pgid) for pgid in pgids):
        if _state.escalate.wait(0.05):
            break
    _end_groups([pgid for pgid in pgids if _group_alive(pgid)], wait=TERM_SECONDS)


def _on_signal(number: int, frame) -> None:
    # Runs in the main thread, which only waits in run(): no lock is taken here (the stopper thread
    # does that), so a signal can never deadlock against a thread holding the registry's lock.
    if interrupted.is_set():
        _state.escalate.set()  # a second Ctrl-C: no more waiting for checkpoints
        return
    _state.signal_number, _state.signalled_at = number, time.monotonic()
    _state.running_at_signal = [label for _, label in list(_children.values())]
    interrupted.set()
    threading.Thread(target=_stopper, name="patchsplat-stopper", daemon=True).start()


def reset() -> None:
    """Forget an interrupt (a new command in the same process, or a test)."""
    interrupted.clear()
    with _lock:
        _own_groups.intersection_update(_children)
    _state.signal_number, _state.signalled_at, _state.running_at_signal = None, 0.0, []
    _state.escalate = threading.Event()


def signal_number() -> int | None:
    """The first signal received (SIGINT or SIGTERM), if any."""
    return _state.signal_number


def stopped_stages() -> list[str]:
    """The stages whose ``dvc`` was running when the first signal came (children labelled with a stage)."""
    return [label for label in _state.running_at_signal if "@" in label or label in _SINGLE_STAGES]


def describe(stages: list[str], command: str) -> str:
    """``interrupted: training of p0, p1 stopped (checkpoints kept in data/checkpoints); run `patchsplat run`
    again to resume`` for the stages that were running."""
    stages = sorted(dict.fromkeys(stages), key=lambda name: [int(part) if part.isdigit() else part
                                                            for part in re.split(r"(\d+)", name)])
    patches = [stage.split("@", 1)[1] for stage in stages if stage.startswith("train@")]
    others = [stage for stage in stages if not stage.startswith("train@")]
    parts = ([f"training of {', '.join(patches)}"] if patches else []) + others
    what = f"{' and '.join([', '.join(parts[:-1]), parts[-1]]) if len(parts) > 1 else parts[0]} stopped" if parts \
        else "no stage was running"
    kept = f" (checkpoints kept in {Workspace().checkpoints_dir})" if patches else ""
    return f"interrupted: {what}{kept}; run `{command}` again to {'resume' if patches else 'continue'}"


def run(work: Callable[[], T], command: str, interrupted_stages: Callable[[], list[str]] | None = None) -> T:
    """Run ``work`` with SIGINT/SIGTERM handled as this module describes; its result, or :class:`Interrupted`
    carrying the closing line (``command``: what to run again; ``interrupted_stages``: the stages that were
    stopped, when the registry's labels do not name them, as for a whole ``dvc repro``)."""
    if threading.current_thread() is not threading.main_thread():
        return work()  # signals can only be handled in the main thread: run as it is
    reset()
    # pycolmap's import takes SIGTERM over (glog); imported here first, the handler can be put back.
    from patchsplat.colmap_library import load_in_main_thread

    load_in_main_thread()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = error

    previous = {number: signal.signal(number, _on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    _state.handling = True
    worker = threading.Thread(target=target, name="patchsplat-work", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)  # short waits: the signal handler runs between them
            if interrupted.is_set() and time.monotonic() > _state.signalled_at + WIND_DOWN_SECONDS + (
                    GRACE_SECONDS + TERM_SECONDS if _state.running_at_signal else 0.0):
                break  # the children are gone; whatever the work is stuck in is not worth waiting for
    finally:
        _state.handling = False
        for number, handler in previous.items():
            signal.signal(number, handler)
    if interrupted.is_set():
        with _lock:
            left = list(_children)
        if left:
            _end_groups(left, wait=TERM_SECONDS)
        stages = (interrupted_stages() if interrupted_stages else []) or stopped_stages()
        # exit_now: the caller may skip the interpreter's teardown once it has stopped what it started
        # outside this registry (patchsplat run: Prefect's temporary server).
        raise Interrupted(describe(stages, command), 128 + (_state.signal_number or signal.SIGINT), exit_now=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# Stage names without an "@" a child's label may be (the flow labels each dvc child with its stage).
_SINGLE_STAGES = {"scene", "validate", "split", "merge", "mesh", "evaluate"}
