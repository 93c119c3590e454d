"""The one error type users see.

Every failure caused by input (a file, a parameter, a folder) is raised as
:class:`InputError` naming the thing and the problem. The command line turns it
into a single line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: ``where`` names the file, folder or setting, ``problem`` says what is wrong."""

    def __init__(self, where: str | Path, problem: str, kind: str = "input") -> None:
        self.where = str(where)
        self.problem = problem
        # A short machine-readable category ("corrupt_file", "missing_image", ...) for tests and reports.
        self.kind = kind
        super().__init__(f"{self.where}: {problem}" if problem else self.where)

    def one_line(self) -> str:
        return " ".join(str(self).split())
