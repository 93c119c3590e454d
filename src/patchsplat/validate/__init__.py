"""The validation stage: check a COLMAP scene before anything is trained on it.

Public API::

    validate_scene(scene_dir, config, check_images=True, *, undistort=False) -> ValidationReport
    run_validation(scene_dir, out, config, skip_images=False, undistort_dir=None) -> ValidationReport
    ValidationReport                      (patchsplat.validate.report)
    SceneStats, scene_statistics          (patchsplat.validate.stats)

What is checked (each finding names the file and/or ids; see :mod:`.findings`):

1. model files present, readable, well-formed and consistent (:mod:`.model_io`);
2. cameras: models training can use, plausible intrinsics (:func:`.checks.check_cameras`);
3. poses finite (:func:`.checks.check_poses`);
4. image names inside ``images/``; image files present, decodable, of their camera's size
   (:mod:`.image_files`);
5. points: non-finite, duplicated, far outliers; images observing no or few points;
6. other models beside the chosen one (COLMAP split the scene);

and the scene's statistics (:mod:`.stats`).
"""

from __future__ import annotations

from pathlib import Path

from patchsplat.config import ValidateConfig
from patchsplat.errors import InputError
from patchsplat.scene_layout import SceneLayout, locate_scene
from patchsplat.validate.findings import Finding
from patchsplat.validate.report import ValidationReport
from patchsplat.validate.stats import SceneStats, scene_statistics

__all__ = ["Finding", "SceneStats", "ValidationReport", "run_validation", "scene_statistics", "validate_scene"]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _report_base(layout: SceneLayout, images_checked: str) -> dict:
    from patchsplat.validate.checks import other_model_sizes

    return dict(
        scene_dir=str(layout.root),
        images_dir=_relative(layout.images_dir, layout.root),
        model_dir=_relative(layout.model_dir, layout.root),
        model_format=layout.model_format,
        images_checked=images_checked,
        other_models=tuple((_relative(folder, layout.root), count) for folder, count in other_model_sizes(layout)),
    )


def validate_scene(
    scene_dir: str | Path, config: ValidateConfig, check_images: bool = True, *, undistort: bool = False
) -> ValidationReport:
    """Check the COLMAP scene in ``scene_dir``; every problem becomes a finding in the report.

    ``check_images`` False: the image files are not touched at all (model checks only).
    With it True, ``config.check_images`` decides between fully decoding every image
    (True) and only testing that each file exists (False).
    ``undistort``: the caller will undistort the scene, so fisheye cameras are a warning
    rather than an error (see :func:`.checks.check_cameras`).

    Raises :class:`InputError` only when ``scene_dir`` is not a scene at all (no folder,
    no ``images/``, no model in ``sparse/``). A model file that is missing, unreadable or
    corrupt gives a report with that single error and no statistics.
    """
    from patchsplat.validate import checks, image_files
    from patchsplat.validate.model_io import ModelFileError, read_scene_model
    from patchsplat.validate.stats import analyse_points

    layout = locate_scene(Path(scene_dir))
    images_checked = "skipped" if not check_images else ("decoded" if config.check_images else "presence")
    base = _report_base(layout, images_checked)
    try:
        model = read_scene_model(layout)
    except ModelFileError as failure:
        return ValidationReport(**base, findings=(failure.finding,))

    findings: list[Finding] = []
    findings += checks.check_cameras(model, config, undistort=undistort)
    findings += checks.check_poses(model, config)
    name_findings, openable = image_files.check_image_names(model, config)
    findings += name_findings
    if check_images:
        findings += image_files.check_image_files(model, openable, config, decode=config.check_images)
    stats, flags = analyse_points(
        model.xyz, model.camera_centres,
        num_observations=model.num_observations, mean_track_length=model.mean_track_length,
        mean_reprojection_error=model.mean_reprojection_error, config=config,
    )
    findings += checks.check_points(model, flags, stats.robust_min, stats.robust_max, config)
    findings += checks.check_image_point_counts(model, config)
    findings += checks.check_other_models(layout, model, config)
    # Errors first (stable): the first error is the one the command line reports.
    findings.sort(key=lambda finding: not finding.is_error)

    camera_models: dict[str, int] = {}
    for camera in model.cameras.values():
        camera_models[camera.model] = camera_models.get(camera.model, 0) + 1
    return ValidationReport(
        **base,
        num_cameras=len(model.cameras),
        num_images=len(model.images),
        num_unregistered_images=model.num_unregistered_images,
        camera_models=camera_models,
        stats=stats,
        findings=tuple(findings),
    )


def _inside(path: Path, folder: Path) -> bool:
    """True if ``path`` is ``folder`` or lies under it, following symbolic links of existing parts."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_destinations(scene_dir: Path, out: Path, undistort_dir: Path | None) -> None:
    if scene_dir.is_dir() and _inside(out, scene_dir):
        raise InputError(out, f"is inside the scene folder {scene_dir}: the scene is never written to; put the report elsewhere", kind="bad_output")
    if out.is_dir():
        raise InputError(out, "is a folder; --out takes the path of the JSON report file", kind="bad_output")
    from patchsplat.output_folder import VALIDATION_REPORT, check_replaceable_file

    check_replaceable_file(out, VALIDATION_REPORT)  # a user's own file at --out is never overwritten
    if undistort_dir is None:
        return
    if scene_dir.is_dir() and (_inside(undistort_dir, scene_dir) or _inside(scene_dir, undistort_dir)):
        raise InputError(undistort_dir, f"overlaps the scene folder {scene_dir}: write the undistorted scene elsewhere", kind="bad_output")
    if _inside(out, undistort_dir):
        raise InputError(out, f"is inside the undistortion folder {undistort_dir}, which is replaced as a whole", kind="bad_output")
    from patchsplat.output_folder import UNDISTORT, check_replaceable

    check_replaceable(undistort_dir, UNDISTORT)  # before validating: a folder of someone else's is refused at once


def run_validation(
    scene_dir: str | Path,
    out: str | Path,
    config: ValidateConfig,
    skip_images: bool = False,
    undistort_dir: str | Path | None = None,
) -> ValidationReport:
    """Validate, print the tables, and write the JSON report to ``out`` (and the undistorted scene).

    If any finding is an error, raises :class:`InputError` naming the first error's file,
    with its message and the number of further errors, and writes nothing (an earlier
    report at ``out`` is left as it was). ``out`` and ``undistort_dir`` must lie outside
    the scene folder. Both are written atomically (temporary file or folder, then rename);
    the undistorted scene first, so a failed undistortion leaves no new report.
    """
    from patchsplat.atomic import write_json
    from patchsplat.validate.findings import first_error
    from patchsplat.validate.report import print_report
    from patchsplat.validate.undistort import undistort_scene

    scene_dir, out = Path(scene_dir), Path(out)
    undistort_path = None if undistort_dir is None else Path(undistort_dir)
    _check_destinations(scene_dir, out, undistort_path)

    report = validate_scene(scene_dir, config, check_images=not skip_images, undistort=undistort_path is not None)
    print_report(report)
    error = first_error(report.findings)
    if error is not None:
        more = len(report.errors) - 1
        suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        raise InputError(error.file or scene_dir, error.message + suffix, kind=error.kind)

    if undistort_path is not None:
        undistort_scene(locate_scene(scene_dir), undistort_path)
    write_json(out, report.to_dict())
    return report
