"""Each stage's headline metrics: the few numbers DVC compares between runs (``metrics/<stage>.json``).

``dvc metrics show`` prints one row per metrics file and one column per key; ``dvc exp show`` one row
per experiment and one column per key of every file, prefixed by the file's path when two files share
a key. So the headline files hold numbers only, few of them, and no key appears in two of them: both
tables then stay within 120 columns on the demo and say at a glance whether a run was better. Everything
else — statuses, paths, per-view and per-patch detail — stays in the stage's report
(reports/*.json, data/merged/merge.json, data/trained/pN/metrics.json), which MLflow logs in full.

Floats are kept to 4 significant digits (PSNR 29.24 dB, SSIM 0.9076): enough to compare runs, and the
reports keep full precision. A figure a run could not measure (LPIPS without its package, Chamfer
without a reference mesh) is left out rather than written as a string or null.

Per-patch training figures are not DVC metrics of the ``train@pN`` stages: with one file per patch,
``dvc exp show`` would need 4 columns per patch, each headed ``data/trained/pN/...:key``. The merge
stage, which reads every patch, sums them up instead (``attempts``, ``patch_psnr``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchsplat.atomic import write_json
from patchsplat.errors import InputError
from patchsplat.train.records import TrainedMetrics

SIGNIFICANT_DIGITS = 4


def _rounded(value: float | int) -> float | int:
    if isinstance(value, int) or value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


class Headline(BaseModel):
    """One stage's headline numbers; ``save`` writes them (rounded, absent ones left out) to metrics/<stage>.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: ClassVar[str]

    def numbers(self) -> dict[str, float | int]:
        return {key: _rounded(value) for key, value in self.model_dump().items() if value is not None}

    def save(self, path: Path) -> None:
        write_json(path, self.numbers())

    @classmethod
    def load(cls, path: Path) -> Headline:
        try:
            return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
        except OSError as error:
            raise InputError(path, f"cannot read the {cls.stage} metrics ({error.strerror})", kind="missing_file") from None
        except (ValueError, ValidationError) as error:
            raise InputError(path, f"not a {cls.stage} metrics file ({str(error).splitlines()[0]})",
                             kind="bad_report") from None


class ValidateHeadline(Headline):
    stage: ClassVar[str] = "validate"
    warnings: int = Field(description="validation warnings (an error stops the stage, so there are none)")

    @classmethod
    def from_report(cls, report: dict) -> ValidateHeadline:
        return cls(warnings=report["num_warnings"])


class SplitHeadline(Headline):
    stage: ClassVar[str] = "split"
    patches: int = Field(description="patches the scene was cut into")

    @classmethod
    def from_report(cls, report: dict) -> SplitHeadline:
        return cls(patches=report["num_patches"])


class MergeHeadline(Headline):
    stage: ClassVar[str] = "merge"
    gaussians: int = Field(description="Gaussians in the merged scene")
    attempts: int = Field(description="training attempts over all patches: more than the patches when one was recovered")
    patch_psnr: float | None = Field(None, description="the worst patch's held-out PSNR (dB) on its own views, before merging")

    @classmethod
    def from_patches(cls, gaussians: int, trained: list[TrainedMetrics]) -> MergeHeadline:
        return cls(gaussians=gaussians, attempts=sum(metrics.attempts for metrics in trained),
                   patch_psnr=min((metrics.heldout_psnr for metrics in trained), default=None))


class EvaluateHeadline(Headline):
    stage: ClassVar[str] = "evaluate"
    psnr: float | None = Field(None, description="held-out PSNR (dB) of the merged scene")
    ssim: float | None = Field(None, description="held-out SSIM of the merged scene")
    lpips: float | None = Field(None, description="held-out LPIPS, when the lpips package is available")
    chamfer: float | None = Field(None, description="mesh Chamfer distance to the reference mesh (scene units)")
    fscore: float | None = Field(None, description="mesh F-score at the report's threshold")
    sfm_to_mesh: float | None = Field(None, description="median distance from the SfM points to the mesh: a real "
                                      "capture's proxy, when it has no reference mesh (scene units)")

    @classmethod
    def from_report(cls, report: dict) -> EvaluateHeadline:
        return cls(psnr=report.get("psnr"), ssim=report.get("ssim"), lpips=report.get("lpips"),
                   chamfer=report.get("chamfer"), fscore=report.get("fscore"),
                   sfm_to_mesh=report.get("sfm_to_mesh_median"))


HEADLINES: tuple[type[Headline], ...] = (ValidateHeadline, SplitHeadline, MergeHeadline, EvaluateHeadline)
