"""DVC stage ``prepare@<patch id>``: one patch's canonical frame and initial Gaussians.

Reads ``train`` and ``patch_overrides.<patch id>`` of params.yaml; writes data/prepared/<patch id>.
"""

import sys
from pathlib import Path

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.errors import InputError
from patchsplat.prepare import prepare_patch


def main() -> None:
    if len(sys.argv) != 2:
        raise InputError("stages/prepare.py", "usage: python stages/prepare.py PATCH_ID")
    patch_id = sys.argv[1]
    prepare_patch(Path("data/patches") / patch_id, Path("data/prepared") / patch_id, load_params().train_settings(patch_id), patch_id)


if __name__ == "__main__":
    guarded(main)
