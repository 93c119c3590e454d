"""Write outputs so they are either complete or absent.

Everything is written to a temporary sibling first and renamed into place, so a
crash or a kill never leaves a half-written file, and an earlier good result is
replaced only once the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from patchsplat.output_folder import OutputKind, check_replaceable, mark


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ordinary_permissions(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp make private (0600/0700) entries; outputs get the usual umask-based mode."""
    path.chmod((0o777 if directory else 0o666) & ~_current_umask())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _naming(target: Path, always: bool = False) -> Iterator[None]:
    """A write that fails without naming its file (a full disk: write() gives only "No space left on device")
    fails naming ``target`` (and, with ``always``, one naming another file too), so the user's one error line
    says which output could not be written."""
    try:
        yield
    except OSError as error:
        if (error.filename is not None and not always) or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(target)) from error


@contextlib.contextmanager
def atomic_file(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    ``suffix`` keeps an extension on the temporary name for writers that infer
    the format from it (e.g. PIL, trimesh).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _naming(target.parent, always=True):  # the folder refused it, not the temporary name the user never chose
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    _ordinary_permissions(tmp, directory=False)
    try:
        with _naming(target):
            yield tmp
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: str | Path, text: str) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


# A temporary sibling of the output folder ``name``: ".NAME.PID-RANDOM.tmp" while it is written,
# ".NAME.PID-RANDOM.old" while the previous output waits to be removed. The PID says whether the run
# that made it is still alive; names without one are from versions before it.
def _leftover_pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(f".{name}.") + r"(?:(\d+)-)?[a-z0-9_]+\.(tmp|old)")


# Leftovers without a PID older than this process are from a run that has ended.
_PROCESS_START = time.time()


def _in_use(pid: int | None, folder: Path) -> bool:
    if pid is None:
        return folder.stat().st_mtime >= _PROCESS_START
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def sweep_leftovers(target: str | Path) -> list[Path]:
    """Remove the temporary siblings that killed runs writing ``target`` left behind; returns them.

    Only folders named the way :func:`atomic_dir` names them for this target, and only those whose
    run is over (its PID is gone, or, for the older unnumbered names, made before this process
    started). A killed run's ``.old`` folder holds the previous output: it is put back when the
    target is missing, since it is the last complete result.
    """
    target = Path(target)
    pattern = _leftover_pattern(target.name)
    swept = []
    if not target.parent.is_dir():
        return swept
    for entry in sorted(target.parent.iterdir()):
        found = pattern.fullmatch(entry.name)
        if not found or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(found.group(1)) if found.group(1) else None
        if _in_use(pid, entry):
            continue
        previous = entry / "previous"
        if found.group(2) == "old" and previous.exists() and not (target.exists() or target.is_symlink()):
            os.replace(previous, target)
        shutil.rmtree(entry, ignore_errors=True)
        swept.append(entry)
    return swept


@contextlib.contextmanager
def atomic_dir(target: str | Path, kind: OutputKind, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target``.

    ``target`` must be replaceable by ``kind``'s command (see :mod:`patchsplat.output_folder`; ``inputs``
    are the command's inputs): otherwise :class:`~patchsplat.errors.InputError` and nothing is touched.
    Temporary folders that killed runs for the same target left are swept first. The new folder gets
    the command's marker. The previous ``target`` (if any) is kept until the new one is complete,
    then removed. On failure the temporary folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    check_replaceable(target, kind, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    with _naming(target.parent, always=True):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent))
    _ordinary_permissions(tmp, directory=True)
    try:
        with _naming(target):
            yield tmp
        mark(tmp, kind)
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".old", dir=target.parent))
            os.replace(target, old / "previous")
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:  # put the earlier result back: it must not be lost
                os.replace(old / "previous", target)
                shutil.rmtree(old, ignore_errors=True)
            raise
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def keep_last_good(*reports: str | Path, folder: str | Path | None = None) -> None:
    """Copy reports a stage has just written successfully into ``folder`` (same names; by default the
    workspace's reports/last-good): outside DVC's outputs, which DVC deletes before it runs a stage, so
    a failed re-run would otherwise leave no report at all."""
    from patchsplat.workspace import Workspace

    folder = Workspace().last_good_dir if folder is None else folder
    for report in map(Path, reports):
        with atomic_file(Path(folder) / report.name, suffix=report.suffix) as tmp:
            shutil.copyfile(report, tmp)
