"""DVC stage ``split``: cut the scene into patches (data/patches) and compare them (reports/split.json).

Reads the ``split`` section of params.yaml (and validate.robust_percentile / nn_sample for the
statistics; train.profile / max_image_size / resolution_factor for what one patch trains in auto mode). Refuses to run when the patch ids it would make differ from params.yaml's
patch_overrides keys: `patchsplat repro` re-syncs them.
"""

import shutil

from patchsplat.atomic import atomic_file, keep_last_good
from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.headline import SplitHeadline
from patchsplat.patch_ids import check_patch_ids
from patchsplat.profiles import split_budget
from patchsplat.scene_source import resolve_scene_dir
from patchsplat.split import LAYOUT_FILE, SPLIT_FILE, split_scene
from patchsplat.split.report import print_split_table
from patchsplat.tracking import flat_numbers, stage_run
from patchsplat.workspace import Workspace


def main() -> None:
    params = load_params()
    workspace = Workspace()
    report, layout = workspace.split_report, workspace.split_layout_png
    with stage_run(params.tracking, "split", "split", params.split) as tracker:
        result = split_scene(
            resolve_scene_dir(workspace.scene_dir), workspace.patches_dir, params.split, params.validate_,
            check_ids=lambda ids: check_patch_ids(ids, workspace.params_file),
            budget=split_budget(params.train, params.split.megapixels_per_patch),
        )
        print_split_table(result.summary)
        for source, target in ((workspace.patches_dir / SPLIT_FILE, report), (workspace.patches_dir / LAYOUT_FILE, layout)):
            with atomic_file(target, suffix=target.suffix) as tmp:
                shutil.copyfile(source, tmp)
        SplitHeadline.from_report(result.summary).save(workspace.stage_metrics("split"))
        keep_last_good(report, layout)  # reports/last-good/: what a failed re-run leaves (DVC deletes them first)
        tracker.metrics(flat_numbers(result.summary, max_depth=1))
        tracker.artifact(report)
        tracker.artifact(layout)


if __name__ == "__main__":
    guarded(main)
