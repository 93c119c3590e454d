"""DVC stage ``validate``: check the scene and write reports/validation.json.

Reads the ``validate`` section of params.yaml. Stops the pipeline (non-zero exit,
one line naming the file) when the scene has errors.
"""

import json
from pathlib import Path

from patchsplat.atomic import keep_last_good
from patchsplat.config import load_params
from patchsplat.console import guarded
from patchsplat.scene_source import resolve_scene_dir
from patchsplat.tracking import flat_numbers, stage_run
from patchsplat.validate import run_validation

SCENE_DIR = Path("data/scene")
REPORT = Path("reports/validation.json")


def main() -> None:
    params = load_params()
    with stage_run(params.tracking, "validate", "validate", params.validate_) as tracker:
        run_validation(resolve_scene_dir(SCENE_DIR), REPORT, params.validate_)
        keep_last_good(REPORT)  # reports/last-good/: what a failed re-run leaves (DVC deletes REPORT first)
        tracker.metrics(flat_numbers(json.loads(REPORT.read_text(encoding="utf-8")), max_depth=2))
        tracker.artifact(REPORT)


if __name__ == "__main__":
    guarded(main)
