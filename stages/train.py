"""DVC stage ``train@<patch id>``: train one patch (data/trained/<id>), resuming an interrupted run.

Reads ``train`` and ``patch_overrides.<patch id>`` of params.yaml (and ``tracking``); settings left
null come from the training profile for this patch and this machine (patchsplat.profiles).
"""

import sys
from pathlib import Path

from patchsplat.atomic import LAST_GOOD_FOLDER, keep_last_good
from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.errors import InputError
from patchsplat.train.stage import train_patch_stage


def main() -> None:
    if len(sys.argv) != 2:
        raise InputError("stages/train.py", "usage: python stages/train.py PATCH_ID")
    patch_id = sys.argv[1]
    params = load_params()
    patch_dir = Path("data/patches") / patch_id
    out_dir = Path("data/trained") / patch_id
    train_patch_stage(
        patch_id,
        patch_dir=patch_dir,
        prepared_dir=Path("data/prepared") / patch_id,
        out_dir=out_dir,
        checkpoint_dir=Path("data/checkpoints") / patch_id,
        settings=params.resolved_train(patch_id, patch_dir),
        tracking=params.tracking,
        resume=True,
    )
    # The metrics DVC does not cache: a failed re-run would leave none (DVC deletes them first).
    keep_last_good(out_dir / "metrics.json", out_dir / "curve.csv", folder=LAST_GOOD_FOLDER / "trained" / patch_id)


if __name__ == "__main__":
    guarded(main)
