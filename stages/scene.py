"""DVC stage ``scene``: the demo scene, or a pointer to the user's COLMAP folder, in data/scene.

Reads the ``scene`` section of params.yaml.
"""

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.scene_source import prepare_scene
from patchsplat.tracking import stage_run
from patchsplat.workspace import Workspace


def main() -> None:
    params = load_params()
    with stage_run(params.tracking, "scene", "scene", params.scene):
        prepare_scene(params.scene, Workspace().scene_dir)


if __name__ == "__main__":
    guarded(main)
