"""DVC stage ``evaluate``: score the merged splats on the held-out views and the mesh.

Reads the ``evaluate`` section of params.yaml and data/trained/pN/metrics.json (the resolution the
patches were trained at, which the held-out views are evaluated at unless evaluate.resolution_factor
is set); writes reports/evaluation.json (DVC metrics) and reports/evaluation_grid.png. A missing mesh
(or patches folder) is reported in the JSON, not an error; missing merged splats are.
"""

from pathlib import Path

from patchsplat.atomic import keep_last_good
from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.evaluate import evaluate_scene
from patchsplat.scene_layout import locate_scene
from patchsplat.scene_source import resolve_scene_dir
from patchsplat.tracking import flat_numbers, stage_run

SCENE_DIR = Path("data/scene")
MERGED_PLY = Path("data/merged/splats.ply")
MESH_PLY = Path("data/mesh/mesh.ply")
PATCHES_DIR = Path("data/patches")
TRAINED_DIR = Path("data/trained")
REPORT = Path("reports/evaluation.json")
GRID = Path("reports/evaluation_grid.png")


def main() -> None:
    params = load_params()
    scene_root = locate_scene(resolve_scene_dir(SCENE_DIR)).root
    with stage_run(params.tracking, "evaluate", "evaluate", params.evaluate) as tracker:
        report = evaluate_scene(scene_root, MERGED_PLY, MESH_PLY, PATCHES_DIR, REPORT, GRID, params.evaluate,
                                trained_dir=TRAINED_DIR)
        keep_last_good(REPORT, GRID)  # reports/last-good/: what a failed re-run leaves (DVC deletes them first)
        tracker.metrics(flat_numbers(report, max_depth=4))
        tracker.artifact(REPORT)
        tracker.artifact(GRID)


if __name__ == "__main__":
    guarded(main)
