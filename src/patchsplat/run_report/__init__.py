"""reports/run.html: one self-contained page recording a pipeline run (``patchsplat run`` and ``patchsplat repro``).

It shows the run's outcome and stage timings, then what the workspace holds after it: evaluation
metrics, validation findings, the split, each patch's training (curve, metrics, held-out image) and
recovery attempts, the held-out grid, merge and mesh, what splitting costs (the partition check, when one
was made with the current settings), and how to open the viewer. Sections whose
inputs a failed or interrupted run did not produce say so in one line.

:func:`write_run_report` raises on a bug (tests see it); the pipeline calls
:func:`write_run_report_or_say_why`, which never lets the report stop a run.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from patchsplat.atomic import write_text
from patchsplat.workspace import Workspace


def write_run_report(workspace: Workspace, stage_rows: list[tuple[str, str, str, str]], outcome: str,
                     out: Path | None = None, seconds: float | None = None) -> Path:
    """Write the run report (``workspace.run_report`` unless ``out``) and return its path.

    ``stage_rows``: (stage, result, seconds, note), as the run's closing table shows them;
    ``outcome``: "succeeded", "failed: <reason>" or "interrupted"; ``seconds``: the run's wall time.
    """
    from patchsplat import __version__
    from patchsplat.run_report.collect import collect
    from patchsplat.run_report.page import render_page

    written_at = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    report = collect(workspace, stage_rows, outcome, written_at, __version__, seconds)
    out = Path(out) if out is not None else workspace.run_report
    write_text(out, render_page(report))  # atomic: a reader never sees half a page
    return out


def write_run_report_or_say_why(workspace: Workspace, stage_rows: Callable[[], list[tuple[str, str, str, str]]],
                                outcome: str, seconds: float | None = None,
                                say: Callable[[str], object] | None = None) -> Path | None:
    """:func:`write_run_report` for the end of a run: a failure to write it is one line (``say``), never an
    error of the run, whose own outcome matters more than its report. ``stage_rows`` is called inside that
    guard too (the rows of a run that ended in an unexpected error may be odd)."""
    try:
        return write_run_report(workspace, stage_rows(), outcome, seconds=seconds)
    except Exception as error:  # noqa: BLE001 - the run has ended; its report must not change how
        if say is None:
            from patchsplat.console import console

            say = console.print
        say(f"{workspace.run_report}: the run report was not written ({type(error).__name__}: {error})")
        return None
