"""``reports/partition.json``: the partition check's result, one typed record with one load and save."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from patchsplat.atomic import write_json
from patchsplat.errors import InputError
from patchsplat.reading import read_json_object


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ViewComparison(_Record):
    """One held-out view scored in both variants."""

    name: str
    patch: str | None               # the patch whose core cell holds the camera centre
    border: bool                    # its camera sees a second core cell (see border.is_border)
    cells: dict[str, float]         # patch id -> fraction of its observed SfM points in that core cell
    single_psnr: float
    merged_psnr: float
    single_ssim: float
    merged_ssim: float
    psnr_difference: float          # merged minus single, dB


class VariantSummary(_Record):
    """One way of training the scene: as one patch, or as the workspace's split."""

    patches: int
    steps: int                      # training steps over all patches
    cap_max: int                    # Gaussian caps summed over all patches
    gaussians: int                  # Gaussians in the (merged) scene evaluated
    train_seconds: float | None     # training time summed over patches: each patch's steps at its measured rate
    psnr: float                     # mean over the held-out views
    ssim: float


class PartitionCheck(_Record):
    """Merged patches against one model of the same scene, trained with the same budget, on the same views."""

    scene: str
    split: str                       # the split compared, in words
    budget: Literal["steps", "pipeline"] = "steps"   # how the split was trained (PartitionCheckConfig.budget)
    split_steps_factor: float = 1.0  # budget steps: the split's steps / the single model's (1: equal budgets)
    resolution_factor: int           # the downscale both were trained and evaluated at
    single: VariantSummary
    merged: VariantSummary
    psnr_difference: float           # merged minus single, dB, mean over all held-out views
    ssim_difference: float
    border_psnr_difference: float | None     # the same over border views only (None: no border view)
    interior_psnr_difference: float | None   # ... and over the others
    num_views: int
    num_border_views: int
    worst_view: str                  # the border view merging costs most (any view when none is a border view)
    overall_target_db: float         # the price allowed: merged at most this far below single overall
    border_target_db: float          # ... and on border views
    within_target: bool
    views: list[ViewComparison]
    settings_fingerprint: str        # of the split, train and merge settings and the scene it was made with
    definitions: list[str]

    def save(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))

    @staticmethod
    def load(path: Path) -> PartitionCheck:
        content = read_json_object(path, "partition check report")
        try:
            return PartitionCheck.model_validate(content)
        except ValidationError as error:
            problem = error.errors()[0]
            key = ".".join(str(part) for part in problem["loc"])
            raise InputError(path, f"not a partition check report ({key}: {problem['msg']}); run "
                             "`patchsplat check-partition` again", kind="corrupt_file") from None

    def budget_description(self) -> str:
        """How the split was trained against the single model, in words (the table's title, the run page)."""
        if self.budget == "pipeline":
            return "each patch trained as a pipeline run trains it"
        steps = (f"the single model's {self.single.steps} steps" if self.split_steps_factor == 1 else
                 f"{self.split_steps_factor:g} x the single model's {self.single.steps} steps")
        return f"{steps} and its cap of {self.single.cap_max:,} Gaussians shared among the patches"

    def border_psnr(self) -> tuple[float | None, float | None]:
        """(single, merged) mean PSNR over the border views (None, None without one)."""
        border = [view for view in self.views if view.border]
        if not border:
            return None, None
        return (sum(view.single_psnr for view in border) / len(border),
                sum(view.merged_psnr for view in border) / len(border))

    def headline(self) -> dict[str, float | int]:
        """The numbers MLflow logs and the run comparison shows (``partition.*``)."""
        numbers = {
            "single_psnr": self.single.psnr, "merged_psnr": self.merged.psnr, "psnr_difference": self.psnr_difference,
            "ssim_difference": self.ssim_difference, "border_views": self.num_border_views,
            "border_psnr_difference": self.border_psnr_difference, "within_target": int(self.within_target),
            # The budget each was trained with: a difference means little without them (equal steps, a multiple,
            # or the pipeline's).
            "single_steps": self.single.steps, "merged_steps": self.merged.steps,
            "single_train_seconds": self.single.train_seconds, "merged_train_seconds": self.merged.train_seconds,
        }
        return {key: value for key, value in numbers.items() if value is not None}


def _signed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_partition_table(record: PartitionCheck) -> None:
    """The summary table: single vs merged, overall and on border views, against the targets."""
    from rich.table import Table

    from patchsplat.console import console

    table = Table(title=f"partition check: {record.split} vs one model; {record.budget_description()}")
    for column in ("views", "count", "single PSNR (dB)", "merged PSNR (dB)", "merged - single (dB)", "allowed (dB)"):
        table.add_column(column, justify="left" if column == "views" else "right")

    def psnr(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    border_single, border_merged = record.border_psnr()
    table.add_row("all held-out", str(record.num_views), f"{record.single.psnr:.2f}", f"{record.merged.psnr:.2f}",
                  _signed(record.psnr_difference), f"-{record.overall_target_db:g}")
    table.add_row("border views", str(record.num_border_views), psnr(border_single), psnr(border_merged),
                  _signed(record.border_psnr_difference),
                  f"-{record.border_target_db:g}")
    table.add_row("Gaussians", "", f"{record.single.gaussians:,}", f"{record.merged.gaussians:,}", "", "")
    table.add_row("training steps", "", f"{record.single.steps:,}", f"{record.merged.steps:,}", "", "")
    table.add_row("training seconds", "", _seconds(record.single.train_seconds), _seconds(record.merged.train_seconds), "", "")
    console.print(table)
    verdict = "within" if record.within_target else "OUTSIDE"
    if record.budget == "pipeline":
        verdict += " the target, as a run trains the split (the target is for equal budgets)"
    elif record.split_steps_factor != 1:
        verdict += f" the target, at {record.split_steps_factor:g} x the steps (the target is for equal budgets)"
    else:
        verdict += " the target"
    console.print(f"splitting costs {_signed(record.psnr_difference)} dB overall and "
                  f"{_signed(record.border_psnr_difference)} dB on border views: {verdict}; "
                  f"worst view {record.worst_view}", markup=False, highlight=False)
