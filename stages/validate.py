"""DVC stage ``validate``: check the scene; write reports/validation.json and its headline, metrics/validate.json.

Reads the ``validate`` section of params.yaml. Stops the pipeline (non-zero exit,
one line naming the file) when the scene has errors.
"""

import json

from patchsplat.atomic import keep_last_good
from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.headline import ValidateHeadline
from patchsplat.scene_source import resolve_scene_dir
from patchsplat.tracking import flat_numbers, stage_run
from patchsplat.validate import run_validation
from patchsplat.workspace import Workspace


def main() -> None:
    params = load_params()
    workspace = Workspace()
    report = workspace.validation_report
    with stage_run(params.tracking, "validate", "validate", params.validate_) as tracker:
        run_validation(resolve_scene_dir(workspace.scene_dir), report, params.validate_)
        keep_last_good(report)  # reports/last-good/: what a failed re-run leaves (DVC deletes the report first)
        content = json.loads(report.read_text(encoding="utf-8"))
        ValidateHeadline.from_report(content).save(workspace.stage_metrics("validate"))
        tracker.metrics(flat_numbers(content, max_depth=2))
        tracker.artifact(report)


if __name__ == "__main__":
    guarded(main)
