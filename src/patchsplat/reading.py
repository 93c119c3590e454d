"""Reading the JSON files the stages wrote, so that a damaged one is a one-line InputError naming it."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any

from patchsplat.errors import InputError


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The parsed content of ``path``; an unreadable, non-UTF-8 or truncated file is an InputError
    ("reports/split.json: not a readable JSON file (line 3: Expecting value); rerun the stage that writes it")."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problem = f"line {error.lineno}: {error.msg}"
    except UnicodeDecodeError as error:
        problem = f"not UTF-8 text (offset {error.start})"
    except OSError as error:
        problem = error.strerror or str(error)
    raise InputError(path, f"not a readable {what} ({problem}); rerun the stage that writes it", kind="corrupt_file")


def read_json_object(path: str | Path, what: str, required: Iterable[str] = ()) -> dict:
    """:func:`read_json` of a file that must hold a JSON object with the ``required`` keys: another
    content (a hand edit, a file of another version) is an InputError naming the file and the key."""
    content = read_json(path, what)
    if not isinstance(content, dict):
        raise InputError(path, f"not a {what} (a JSON object expected, found {type(content).__name__}); "
                               "rerun the stage that writes it", kind="corrupt_file")
    return require_keys(content, required, path, what)


def require_keys(content: Any, required: Iterable[str], path: str | Path, what: str) -> Any:
    """``content`` if it is a mapping holding every ``required`` key; else an InputError naming ``path``."""
    missing = [key for key in required if not isinstance(content, Mapping) or key not in content]
    if missing:
        raise InputError(path, f"{what} lacks the key {missing[0]!r}; rerun the stage that writes it",
                         kind="corrupt_file")
    return content
