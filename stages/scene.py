"""DVC stage ``scene``: the demo scene, or a pointer to the user's COLMAP folder, in data/scene.

Reads the ``scene`` section of params.yaml.
"""

from pathlib import Path

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.scene_source import prepare_scene

SCENE_DIR = Path("data/scene")


def main() -> None:
    prepare_scene(load_params().scene, SCENE_DIR)


if __name__ == "__main__":
    guarded(main)
