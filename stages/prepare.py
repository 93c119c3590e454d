"""DVC stage ``prepare@<patch id>``: one patch's canonical frame and initial Gaussians.

Reads ``train`` and ``patch_overrides.<patch id>`` of params.yaml; writes data/prepared/<patch id>.
"""

import sys
from pathlib import Path

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.errors import InputError
from patchsplat.prepare import prepare_patch
from patchsplat.tracking import flat_numbers, stage_run


def main() -> None:
    if len(sys.argv) != 2:
        raise InputError("stages/prepare.py", "usage: python stages/prepare.py PATCH_ID")
    patch_id = sys.argv[1]
    params = load_params()
    settings = params.train_settings(patch_id)
    with stage_run(params.tracking, f"prepare@{patch_id}", "train", settings) as tracker:
        summary = prepare_patch(Path("data/patches") / patch_id, Path("data/prepared") / patch_id, settings, patch_id)
        tracker.metrics(flat_numbers(summary, max_depth=1))


if __name__ == "__main__":
    guarded(main)
