"""Shared terminal output and the guard that turns input errors into one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console

from patchsplat.errors import InputError

# Tables are wide; when output goes to a file or a pipe (DVC, CI) rich would assume 80 columns.
console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)

T = TypeVar("T")

EXIT_INPUT_ERROR = 1


def fail(error: InputError) -> None:
    """Print the one-line error and exit non-zero (no traceback)."""
    # soft_wrap: the message must stay on one line however narrow the terminal.
    err_console.print(f"error: {error.one_line()}", markup=False, soft_wrap=True)
    sys.exit(EXIT_INPUT_ERROR)


def guarded(function: Callable[[], T]) -> T:
    """Run ``function``; an :class:`InputError` becomes one line on stderr and exit status 1."""
    try:
        return function()
    except InputError as error:
        fail(error)
        raise AssertionError("unreachable") from None
