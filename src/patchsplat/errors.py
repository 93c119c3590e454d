"""The errors users see, each one line: ``where`` names the file, folder, setting or stage, ``problem``
says what is wrong, ``kind`` is a short machine-readable category ("corrupt_file", "training_failed", ...).

:class:`InputError` is for bad input (a file, a parameter, a folder the user gave); the other
subclasses of :class:`PatchsplatError` are failures that are not the input's fault. The command
line (:func:`patchsplat.console.guarded`) turns any of them into a single line on stderr and a
non-zero exit, never a traceback, and a DVC stage also writes the kind into its outcome record
(:mod:`patchsplat.orchestrate.stage_runner`), which is how the runner learns what failed.
"""

from __future__ import annotations

from pathlib import Path


class PatchsplatError(Exception):
    """A failure reported in one line. Raise a subclass: it says whose failure it is."""

    default_kind = "failed"

    def __init__(self, where: str | Path, problem: str, kind: str | None = None) -> None:
        self.where = str(where)
        self.problem = problem
        self.kind = kind or self.default_kind
        super().__init__(f"{self.where}: {problem}" if problem else self.where)

    def one_line(self) -> str:
        return " ".join(str(self).split())


class InputError(PatchsplatError):
    """Bad input: a file, folder, argument or setting the user gave is missing, damaged or out of range."""

    default_kind = "input"


class FileError(PatchsplatError):
    """The system refused a file operation (permission denied, disk full, read-only file system), e.g. an
    output that cannot be replaced: the file is named, but nothing in the input is wrong."""

    default_kind = "file_error"


class TrainingFailed(PatchsplatError):
    """A patch's training failed on every rung of its recovery ladder (the attempts record says what was tried)."""

    default_kind = "training_failed"


class ToolFailed(PatchsplatError):
    """A program patchsplat runs (git, dvc, Prefect's API server) failed or did not start."""

    default_kind = "tool_failed"


class PipelineFailed(PatchsplatError):
    """A run of the pipeline failed: which stage or patches, and why (one line); ``summary`` what did run."""

    default_kind = "pipeline_failed"

    def __init__(self, where: str | Path, problem: str, kind: str | None = None, summary: dict | None = None) -> None:
        super().__init__(where, problem, kind)
        self.summary = summary or {}


# Kinds of failure that are no exception of ours: what the stage guard and the stage runner record.
INTERNAL_ERROR = "internal_error"  # an unexpected exception in a stage (a bug): one line and a trace file
CRASHED = "crashed"                # the stage process ended without saying how (killed, out of memory)
DVC_FAILED = "dvc_failed"          # DVC itself failed, not the stage (a lock, an unknown stage, an output not written)
EXITED = "exited"                  # the stage called sys.exit with a non-zero status

# What running the same stage again may change: a training resumes from its checkpoint (maybe with more
# memory free), a crash or DVC's own failure may not recur. Bad input, a refused file operation or a
# deliberate exit would only be repeated.
_WORTH_A_RETRY = frozenset({TrainingFailed.default_kind, INTERNAL_ERROR, CRASHED, DVC_FAILED})


def worth_a_retry(kind: str | None) -> bool:
    """Whether a stage that failed with ``kind`` may end differently when run again."""
    return kind in _WORTH_A_RETRY
