"""DVC stage ``evaluate``: score the merged splats on the held-out views and the mesh.

Reads the ``evaluate`` section of params.yaml and data/trained/pN/metrics.json (the resolution the
patches were trained at, which the held-out views are evaluated at unless evaluate.resolution_factor
is set); writes reports/evaluation.json, reports/evaluation_grid.png and the headline, metrics/evaluate.json. A missing mesh
(or patches folder) is reported in the JSON, not an error; missing merged splats are.
"""

from patchsplat.atomic import keep_last_good
from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.evaluate import evaluate_scene
from patchsplat.headline import EvaluateHeadline
from patchsplat.scene_layout import locate_scene
from patchsplat.scene_source import resolve_scene_dir
from patchsplat.tracking import flat_numbers, stage_run
from patchsplat.workspace import Workspace


def main() -> None:
    params = load_params()
    workspace = Workspace()
    scene_root = locate_scene(resolve_scene_dir(workspace.scene_dir)).root
    report_file, grid = workspace.evaluation_report, workspace.evaluation_grid
    with stage_run(params.tracking, "evaluate", "evaluate", params.evaluate) as tracker:
        report = evaluate_scene(scene_root, workspace.merged_splats, workspace.mesh_ply, workspace.patches_dir,
                                report_file, grid, params.evaluate, trained_dir=workspace.trained_dir)
        EvaluateHeadline.from_report(report).save(workspace.stage_metrics("evaluate"))
        keep_last_good(report_file, grid)  # reports/last-good/: what a failed re-run leaves (DVC deletes them first)
        tracker.metrics(flat_numbers(report, max_depth=4))
        tracker.artifact(report_file)
        tracker.artifact(grid)


if __name__ == "__main__":
    guarded(main)
