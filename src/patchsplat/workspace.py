"""The layout of a patchsplat workspace: which file each stage reads and writes.

One object knows it. The stages, the command line, the summary, the Prefect flow and ``init``
ask a :class:`Workspace` for paths instead of spelling ``data/trained/p0/metrics.json`` out
themselves; ``dvc.yaml`` lists the same paths (a test checks that each stage's ``outs`` and
data ``deps`` there are the ones named here).

    params.yaml, dvc.yaml, dvc.lock
    data/scene/                  the demo scene, or scene.json pointing at the user's COLMAP folder
    data/patches/pN/             one folder per patch (sparse/0 + patch.json), split.json, layout.png
    data/prepared/pN/            the patch's canonical frame and initial Gaussians
    data/checkpoints/pN/         training checkpoints (kept until the patch is trained; resume)
    data/trained/pN/             splats.ply, metrics.json, attempts.json, settings.json, curve.csv, heldout.png
    data/trained/pN.failed.json  the attempts of a training that failed (beside the absent outputs)
    data/merged/                 splats.ply + merge.json: one scene from the patches
    data/mesh/                   mesh.ply, mesh.glb, mesh.json
    reports/                     validation.json, split.json, split_layout.png, evaluation.json, evaluation_grid.png
    reports/last-good/           each report's last successful copy (DVC deletes outputs before a run)
    reports/run.html             the last pipeline run at a glance, one self-contained page
    metrics/                     validate.json, split.json, merge.json, evaluate.json: each stage's headline
                                 numbers, the DVC metrics files (``dvc metrics show``, ``dvc exp show``)

Paths are built from ``root`` as given, so a stage run inside the workspace (``Workspace()``)
names files relative to it in its messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from patchsplat.errors import InputError

# A patch id: "p" and the patch's number ("p0", "p12"). The split numbers patches from 0.
PATCH_ID_PATTERN = r"p\d+"
_PATCH_ID = re.compile(PATCH_ID_PATTERN)


def is_patch_id(name: str) -> bool:
    return _PATCH_ID.fullmatch(name) is not None


def patch_id_of(index: int) -> str:
    """The id of patch number ``index``."""
    return f"p{index}"


def patch_number(patch_id: str) -> int:
    """The number in ``patch_id``, to sort ids as numbers (p2 before p10)."""
    return int(patch_id[1:])


@dataclass(frozen=True)
class PatchPaths:
    """Where one patch's files are, stage by stage."""

    id: str
    patch_dir: Path         # the split's: sparse/0 + patch.json
    prepared_dir: Path      # prepare's
    checkpoint_dir: Path    # training's checkpoints (resume)
    trained_dir: Path       # training's outputs
    failed_record: Path     # a failed training's attempts, beside its (absent) outputs
    last_good_dir: Path     # the last successful training's metrics and curve


@dataclass(frozen=True)
class Workspace:
    """The files of the workspace at ``root`` (the current folder by default)."""

    root: Path = Path(".")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # The pipeline definition and its state.
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_yaml(self) -> Path:
        return self.root / "dvc.yaml"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    # data/: the stages' outputs DVC caches.
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def scene_dir(self) -> Path:
        return self.data_dir / "scene"

    @property
    def patches_dir(self) -> Path:
        return self.data_dir / "patches"

    @property
    def prepared_dir(self) -> Path:
        return self.data_dir / "prepared"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def trained_dir(self) -> Path:
        return self.data_dir / "trained"

    @property
    def merged_dir(self) -> Path:
        return self.data_dir / "merged"

    @property
    def merged_splats(self) -> Path:
        return self.merged_dir / "splats.ply"

    @property
    def merge_report(self) -> Path:
        return self.merged_dir / "merge.json"

    @property
    def mesh_dir(self) -> Path:
        return self.data_dir / "mesh"

    @property
    def mesh_ply(self) -> Path:
        return self.mesh_dir / "mesh.ply"

    @property
    def mesh_report(self) -> Path:
        return self.mesh_dir / "mesh.json"

    # reports/: each stage's full report and plots (not cached), and their last good copies.
    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def validation_report(self) -> Path:
        return self.reports_dir / "validation.json"

    @property
    def split_report(self) -> Path:
        return self.reports_dir / "split.json"

    @property
    def split_layout_png(self) -> Path:
        return self.reports_dir / "split_layout.png"

    @property
    def evaluation_report(self) -> Path:
        return self.reports_dir / "evaluation.json"

    @property
    def evaluation_grid(self) -> Path:
        return self.reports_dir / "evaluation_grid.png"

    @property
    def last_good_dir(self) -> Path:
        return self.reports_dir / "last-good"

    @property
    def run_report(self) -> Path:
        return self.reports_dir / "run.html"

    # The partition check (`patchsplat check-partition`): not a stage, so outside DVC's outputs.
    @property
    def partition_check_dir(self) -> Path:
        """Its training work (single model and split patches), kept so an interrupted check resumes."""
        return self.data_dir / "partition-check"

    @property
    def partition_report(self) -> Path:
        return self.reports_dir / "partition.json"

    @property
    def partition_png(self) -> Path:
        return self.reports_dir / "partition_border.png"

    # metrics/: the DVC metrics files, a few numbers per stage; the reports above hold the rest.
    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def stage_metrics(self, stage: str) -> Path:
        """The headline metrics file of ``stage`` (validate, split, merge, evaluate)."""
        return self.metrics_dir / f"{stage}.json"

    def patch(self, patch_id: str) -> PatchPaths:
        """The paths of patch ``patch_id`` (which need not exist yet)."""
        if not is_patch_id(patch_id):
            raise InputError("PATCH_ID", f"{patch_id!r} is not a patch id (p0, p1, ...)", kind="bad_patch_id")
        trained = self.trained_dir / patch_id
        return PatchPaths(
            id=patch_id,
            patch_dir=self.patches_dir / patch_id,
            prepared_dir=self.prepared_dir / patch_id,
            checkpoint_dir=self.checkpoints_dir / patch_id,
            trained_dir=trained,
            failed_record=failed_record_of(trained),
            last_good_dir=self.last_good_dir / "trained" / patch_id,
        )

    def trained_patch_ids(self) -> list[str]:
        """The ids of the patches with a training output folder, in patch-number order."""
        return patch_ids_in(self.trained_dir)


def failed_record_of(trained_dir: Path) -> Path:
    """Where a failed training's attempts go for outputs in ``trained_dir``: beside them, never half inside."""
    return trained_dir.parent / f"{trained_dir.name}.failed.json"


def patch_ids_in(folder: Path) -> list[str]:
    """The names of ``folder``'s sub-folders that are patch ids, in patch-number order ([] when absent).

    A killed run's temporary folders (``.p0.123-ab.tmp``) are dot-folders and never match.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((path.name for path in folder.iterdir() if path.is_dir() and is_patch_id(path.name)), key=patch_number)
