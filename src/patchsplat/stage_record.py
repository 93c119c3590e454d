"""A DVC stage's own record of what happened to it, for the process that started ``dvc repro``.

The stage process (:func:`patchsplat.console.guarded`) appends JSON lines to the file named by
``$PATCHSPLAT_STAGE_RECORDS`` (when set): one ``started`` line as it begins, one closing line —
``done``, ``failed`` (with the failure's kind and its one-line reason) or ``interrupted`` — as it
ends. The stage runner (:mod:`patchsplat.orchestrate.stage_runner`) reads them instead of parsing
the stage's printed prose: a ``started`` line with no closing one means the process died without a
word (killed, out of memory), no line at all that the stage's command never ran.

Each line is one ``write`` on a file opened with ``O_APPEND``: stages running side by side (patches
trained in parallel) may share one file without cutting into each other's lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from patchsplat.workspace import is_patch_id

RECORDS_ENV = "PATCHSPLAT_STAGE_RECORDS"

STARTED, DONE, FAILED, INTERRUPTED = "started", "done", "failed", "interrupted"


@dataclass(frozen=True)
class StageRecord:
    stage: str                 # DVC's name for it: "validate", "train@p3"
    outcome: str               # STARTED | DONE | FAILED | INTERRUPTED
    seconds: float = 0.0
    kind: str | None = None    # a failure's kind (patchsplat.errors), None unless FAILED
    reason: str | None = None  # the one line the stage printed about its failure or interrupt

    @property
    def patch(self) -> str | None:
        return patch_of(self.stage)

    @property
    def ended(self) -> bool:
        return self.outcome != STARTED

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "patch": self.patch, "seconds": round(self.seconds, 2)})


def patch_of(stage: str) -> str | None:
    """The patch of a per-patch stage (``train@p3`` -> ``p3``), None for a whole-scene stage."""
    _, _, item = stage.partition("@")
    return item if is_patch_id(item) else None


def append_record(record: StageRecord, path: str | Path | None = None) -> None:
    """Append ``record`` to ``path`` (by default ``$PATCHSPLAT_STAGE_RECORDS``; nothing when unset)."""
    path = path or os.environ.get(RECORDS_ENV)
    if not path:
        return
    line = (record.to_json() + "\n").encode("utf-8")
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(handle, line)
        finally:
            os.close(handle)
    except OSError:
        pass  # the runner then sees a stage that said nothing: a crash, worth a retry, never a wrong verdict


def read_records(path: str | Path) -> list[StageRecord]:
    """The records in ``path``, in the order written ([] when it is absent); a line cut short by a killed
    process, or one not of this format, is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            fields = json.loads(line)
            records.append(StageRecord(stage=str(fields["stage"]), outcome=str(fields["outcome"]),
                                       seconds=float(fields.get("seconds") or 0.0), kind=fields.get("kind"),
                                       reason=fields.get("reason")))
        except (ValueError, KeyError, TypeError):
            continue
    return records
