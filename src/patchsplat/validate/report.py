"""The validation report: a dataclass, its JSON form, and a rich table for the terminal.

The JSON is deterministic (same scene and settings -> same bytes): no timestamps, no
machine paths other than the scene folder as the user gave it, findings in a fixed
order, ids sorted by the checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from patchsplat.validate.findings import Finding
from patchsplat.validate.stats import SceneStats

REPORT_VERSION = 1


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`patchsplat.validate.validate_scene` found.

    Paths other than ``scene_dir`` are relative to it (POSIX spelling). ``stats`` is None
    when the model could not be read (then ``findings`` holds the error saying why).
    ``images_checked`` is 'decoded' (opened and fully decoded), 'presence' (only tested
    for existence) or 'skipped'.
    """

    scene_dir: str
    images_dir: str
    model_dir: str
    model_format: str
    images_checked: str
    num_cameras: int = 0
    num_images: int = 0
    num_unregistered_images: int = 0
    camera_models: dict[str, int] = field(default_factory=dict)
    other_models: tuple[tuple[str, int | None], ...] = ()
    stats: SceneStats | None = None
    findings: tuple[Finding, ...] = ()

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if not f.is_error]

    @property
    def has_errors(self) -> bool:
        return any(f.is_error for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "scene_dir": self.scene_dir,
            "images_dir": self.images_dir,
            "model_dir": self.model_dir,
            "model_format": self.model_format,
            "images_checked": self.images_checked,
            "has_errors": self.has_errors,
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "num_cameras": self.num_cameras,
            "num_images": self.num_images,
            "num_unregistered_images": self.num_unregistered_images,
            "camera_models": dict(sorted(self.camera_models.items())),
            "other_models": [{"path": path, "num_images": count} for path, count in self.other_models],
            "stats": None if self.stats is None else self.stats.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
        }


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _vector(values: tuple[float, float, float] | None) -> str:
    return "-" if values is None else "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def statistics_rows(report: ValidationReport) -> list[tuple[str, str]]:
    """(label, value) rows of the statistics table."""
    rows = [
        ("scene", report.scene_dir),
        ("model", f"{report.model_dir} ({report.model_format})"),
        ("cameras", f"{report.num_cameras} ({', '.join(f'{m} x{n}' for m, n in sorted(report.camera_models.items())) or '-'})"),
        ("registered images", f"{report.num_images} (files {report.images_checked})"),
    ]
    stats = report.stats
    if stats is None:
        return rows
    rows += [
        ("3D points", f"{stats.num_points}"),
        ("observations", f"{stats.num_observations} (mean track length {stats.mean_track_length:.3f})"),
        ("mean reprojection error", f"{_number(stats.mean_reprojection_error_px)} px"),
        ("extent (min..max)", f"{_vector(stats.extent_min)} .. {_vector(stats.extent_max)}"),
        ("robust extent", f"{_vector(stats.robust_min)} .. {_vector(stats.robust_max)}"),
        ("robust size", _vector(stats.robust_size)),
        ("mean NN spacing (mean scale)", _number(stats.mean_nn_spacing)),
        ("scene scale (gsplat)", _number(stats.scene_scale)),
        (
            "recommended init scale",
            f"{_number(stats.recommended_init_scale)} world = {_number(stats.recommended_init_scale_canonical)} x scene scale",
        ),
        ("far outliers / duplicates / non-finite", f"{stats.num_far_outliers} / {stats.num_duplicates} / {stats.num_nonfinite}"),
    ]
    return rows


def print_report(report: ValidationReport) -> None:
    """Print the statistics and the findings as two rich tables on stdout."""
    from rich.table import Table
    from rich.text import Text

    from patchsplat.console import console

    table = Table(title="Scene validation", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for label, value in statistics_rows(report):
        table.add_row(label, Text(value))  # Text: paths and messages may hold '[' (not markup)
    console.print(table)

    if not report.findings:
        console.print("No problems found.")
        return
    findings = Table(title=f"Findings: {len(report.errors)} error(s), {len(report.warnings)} warning(s)", title_justify="left")
    findings.add_column("severity")
    findings.add_column("kind")
    findings.add_column("message", overflow="fold")
    for finding in report.findings:
        style = "bold red" if finding.is_error else "yellow"
        findings.add_row(Text(finding.severity, style=style), Text(finding.kind), Text(finding.message))
    console.print(findings)
