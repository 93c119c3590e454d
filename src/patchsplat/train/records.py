"""The records training writes beside the trained splats, and their one reader each.

    metrics.json    :class:`TrainedMetrics`: how training went (merge's headline metrics, MLflow, the summary; evaluation and
                    meshing read the resolution factor from it)
    attempts.json   :class:`AttemptsRecord`: every attempt, why it ended and what the next one changed; when the
                    recovery ladder runs out it is written beside the absent outputs instead
                    (``data/trained/pN.failed.json``, :func:`patchsplat.workspace.failed_record_of`)

Loading checks the content against the classes, so a damaged or hand-edited file is one
:class:`~patchsplat.errors.InputError` naming the file and the key, never a KeyError later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from patchsplat.atomic import write_json
from patchsplat.errors import InputError
from patchsplat.reading import read_json, read_json_object

# The names of the records in a trained patch's folder.
METRICS_FILE = "metrics.json"
ATTEMPTS_FILE = "attempts.json"


class TrainedMetrics(BaseModel):
    """How one patch's training went: ``metrics.json``, whose keys and values are these fields in this order."""

    model_config = ConfigDict(strict=True, frozen=True)

    train_loss: float | None            # mean loss over the last attempt's last 50 steps (None: no step ran)
    heldout_psnr: float                 # dB, mean over the held-out views, at the last evaluation
    heldout_ssim: float                 # the same views' mean SSIM
    heldout_views: int                  # how many views those are (the first training view when none is held out)
    steps: int                          # the run's total steps (train.steps)
    steps_per_second: float | None      # steps this run took / its seconds (a resumed run counts its own)
    gaussians: int                      # Gaussians at the end of training
    gaussians_dropped_non_finite: int   # of those, left out of splats.ply for a non-finite value
    peak_memory_mb: float               # peak device (or process) memory while training, MiB
    memory_estimate_mb: float           # what the memory plan expected, MiB
    memory_plan: str                    # the plan in words (what it lowered to fit the budget)
    resolution_factor: int = Field(ge=1)  # the image downscale training ended at (after any recovery rung)
    backend: str                        # the rasterizer: "gsplat" or "torch"
    device: str                         # the torch device trained on ("cuda", "cpu")
    attempts: int                       # attempts made (a resume is not one)
    recovered: bool                     # an attempt failed and a recovery rung succeeded
    resumed: bool                       # the run continued from a checkpoint
    # train.appearance: what the per-image colour transforms learnt, over all training images (None: off;
    # absent from metrics.json files written before the setting existed)
    appearance_max_gain_change: float | None = None   # the largest |M - I| entry of a transform's 3 x 3 matrix
    appearance_max_offset: float | None = None        # the largest |b| entry of a transform's offset (colours in 0..1)
    # Of the final Gaussians, the fraction below health.transparent_opacity: Gaussians that cost time and memory and
    # draw nothing (None: metrics.json files written before it was recorded)
    transparent_fraction: float | None = None

    def save(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))

    @staticmethod
    def load(path: Path) -> TrainedMetrics:
        content = read_json_object(path, "training metrics file")
        return _validated(TypeAdapter(TrainedMetrics), content, Path(path), "training metrics file")


@dataclass
class Attempt:
    """One attempt at training a patch, from its start to its outcome."""

    number: int                   # 1, 2, ... in the order made
    settings: dict                # the AttemptSettings it ran with (train.loop), as a dict
    start_step: int               # the step it started from (0, or a recovery's last good state)
    outcome: str = "running"      # running | succeeded | failed
    failure_kind: str | None = None     # why it failed: a recovery ladder's name (scale, nonfinite, collapse, out_of_memory)
    reason: str | None = None           # the failure in words
    failed_at_step: int | None = None   # the step the failure was detected at (None: not at a step, e.g. out of memory)
    next_change: dict = field(default_factory=dict)   # what the recovery rung changed for the next attempt
    # Steps at which an interrupted run of this attempt was resumed from its checkpoint: the same
    # attempt going on, not a recovery.
    resumed_at_steps: list[int] = field(default_factory=list)


@dataclass
class AttemptsRecord:
    """Every attempt of one patch's training, in order (``attempts.json``, or the failed-training record)."""

    attempts: list[Attempt]

    def to_json(self) -> list[dict]:
        """The JSON content (also what a checkpoint holds)."""
        return [asdict(attempt) for attempt in self.attempts]

    @staticmethod
    def from_json(content: Any, source: Path) -> AttemptsRecord:
        """The record of ``content`` (read from ``source``, which an InputError names)."""
        return AttemptsRecord(_validated(TypeAdapter(list[Attempt]), content, Path(source), "attempts record"))

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @staticmethod
    def load(path: Path) -> AttemptsRecord:
        return AttemptsRecord.from_json(read_json(path, "attempts record"), path)


def _validated(adapter: TypeAdapter, content: Any, path: Path, what: str) -> Any:
    """``content`` as ``adapter``'s type; its first problem an InputError naming ``path`` and the key."""
    try:
        return adapter.validate_python(content)
    except ValidationError as error:
        problem = error.errors()[0]
        key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]).lstrip(".")
        if problem["type"] == "missing":
            message = f"{what} lacks the key {key!r}"
        else:
            message = f"{key or what}: {problem['msg'].replace('Input should be', 'expected')}, got {problem['input']!r}"
        raise InputError(path, f"{message}; rerun the stage that writes it", kind="corrupt_file") from None
