"""DVC stage ``prepare@<patch id>``: one patch's canonical frame and initial Gaussians.

Reads ``train`` and ``patch_overrides.<patch id>`` of params.yaml; writes data/prepared/<patch id>.
"""

import sys

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.errors import InputError
from patchsplat.prepare import prepare_patch
from patchsplat.tracking import flat_numbers, stage_run
from patchsplat.workspace import Workspace


def main() -> None:
    if len(sys.argv) != 2:
        raise InputError("stages/prepare.py", "usage: python stages/prepare.py PATCH_ID")
    patch = Workspace().patch(sys.argv[1])
    params = load_params()
    settings = params.train_settings(patch.id)
    with stage_run(params.tracking, f"prepare@{patch.id}", "train", settings) as tracker:
        summary = prepare_patch(patch.patch_dir, patch.prepared_dir, settings, patch.id)
        tracker.metrics(flat_numbers(summary, max_depth=1))


if __name__ == "__main__":
    guarded(main)
