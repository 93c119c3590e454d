"""DVC stage ``train@<patch id>``: train one patch (data/trained/<id>), resuming an interrupted run.

Reads ``train`` and ``patch_overrides.<patch id>`` of params.yaml (and ``tracking``); settings left
null come from the training profile for this patch and this machine (patchsplat.profiles).
"""

import sys

from patchsplat.atomic import keep_last_good
from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.errors import InputError
from patchsplat.train.records import METRICS_FILE
from patchsplat.train.stage import train_patch_stage
from patchsplat.workspace import Workspace


def main() -> None:
    if len(sys.argv) != 2:
        raise InputError("stages/train.py", "usage: python stages/train.py PATCH_ID")
    patch = Workspace().patch(sys.argv[1])
    params = load_params()
    train_patch_stage(
        patch.id,
        patch_dir=patch.patch_dir,
        prepared_dir=patch.prepared_dir,
        out_dir=patch.trained_dir,
        checkpoint_dir=patch.checkpoint_dir,
        settings=params.resolved_train(patch.id, patch.patch_dir),
        tracking=params.tracking,
        resume=True,
    )
    # The metrics DVC does not cache: a failed re-run would leave none (DVC deletes them first).
    keep_last_good(patch.trained_dir / METRICS_FILE, patch.trained_dir / "curve.csv", folder=patch.last_good_dir)


if __name__ == "__main__":
    guarded(main)
