"""DVC stage ``merge``: one scene from the trained patches (data/merged), and metrics/merge.json.

Reads the ``merge`` section of params.yaml; the headline also sums up the patches' training records.
"""

from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.headline import MergeHeadline
from patchsplat.merge import merge_patches, print_merge_table
from patchsplat.tracking import flat_numbers, stage_run
from patchsplat.train.records import METRICS_FILE, TrainedMetrics
from patchsplat.workspace import Workspace


def main() -> None:
    params = load_params()
    workspace = Workspace()
    with stage_run(params.tracking, "merge", "merge", params.merge) as tracker:
        summary = merge_patches(workspace.patches_dir, workspace.trained_dir, workspace.merged_dir, params.merge)
        trained = [TrainedMetrics.load(workspace.patch(row["id"]).trained_dir / METRICS_FILE) for row in summary["patches"]]
        MergeHeadline.from_patches(summary["num_gaussians"], trained).save(workspace.stage_metrics("merge"))
        tracker.metrics(flat_numbers(summary, max_depth=1))
    print_merge_table(summary)


if __name__ == "__main__":
    guarded(main)
