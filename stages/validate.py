"""DVC stage ``validate``: check the scene and write reports/validation.json.

Reads the ``validate`` section of params.yaml. Stops the pipeline (non-zero exit,
one line naming the file) when the scene has errors.
"""

from pathlib import Path

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.scene_source import resolve_scene_dir
from patchsplat.validate import run_validation

SCENE_DIR = Path("data/scene")
REPORT = Path("reports/validation.json")


def main() -> None:
    run_validation(resolve_scene_dir(SCENE_DIR), REPORT, load_params().validate_)


if __name__ == "__main__":
    guarded(main)
