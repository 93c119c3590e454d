"""Write outputs so they are either complete or absent.

Everything is written to a temporary sibling first and renamed into place, so a
crash or a kill never leaves a half-written file, and an earlier good result is
replaced only once the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target``.

    The previous ``target`` (if any) is kept until the new one is complete, then
    removed. On failure the temporary folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _naming(target.parent, always=True):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    _ordinary_permissions(tmp, directory=True)
    try:
        with _naming(target):
            yield tmp
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
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
