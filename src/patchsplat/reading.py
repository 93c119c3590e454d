"""Reading the JSON files the stages wrote, so that a damaged one is a one-line InputError naming it."""

from __future__ import annotations

import json
from pathlib import Path
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
