"""The run report as one self-contained HTML page: inline CSS, images as data: URIs, no script.

Every string that came from a file goes through :func:`_text` (HTML-escaped); nothing on the page
points off this machine (the one link is the local viewer's address).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape

from patchsplat.run_report.collect import (
    Evaluation, Missing, PartitionCost, PatchTraining, RunReport, Split, Validation,
)
from patchsplat.run_report.plot import curve_png
from patchsplat.train.records import TrainedMetrics

# The section headings, in page order (the tests look for each).
SECTIONS = ("Stage timings", "Metrics", "Validation", "Split", "Training", "Recovery", "Held-out grid",
            "Merge and mesh", "What splitting costs", "Viewer")
VIEWER_URL = "http://127.0.0.1:8080"  # `patchsplat view`'s default address

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ddd; padding: .2em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f3f3f3; }
.missing { color: #8a5a00; font-style: italic; } .error { color: #b00020; } .warning { color: #8a5a00; }
.stale { background: #fff4e5; padding: 0.5em; } .outcome-succeeded { color: #1b7f2a; } .outcome-failed, .outcome-interrupted { color: #b00020; }
img { max-width: 100%; border: 1px solid #ddd; } img.layout { max-width: 44em; display: block; } .patch img { max-width: calc(50% - .5em); } .patch { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
code { background: #f3f3f3; padding: 0 .3em; }
"""


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _number(value: float | int | None, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value:.{digits}f}{unit}"


def _missing(missing: Missing) -> str:
    return f'<p class="missing">not available: {_text(missing.reason)}</p>'


def _image(png: bytes, alt: str, css_class: str = "") -> str:
    style = f' class="{css_class}"' if css_class else ""
    return f'<img alt="{_text(alt)}"{style} src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """Cells are HTML already (callers escape what came from files); ``header`` None: a table of name | value rows."""
    numeric = set(numeric)
    head = "<thead><tr>" + "".join(f"<th>{_text(name)}</th>" for name in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f'<td class="n">{cell}</td>' if index in numeric else f"<td>{cell}</td>"
                                    for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _section(title: str, body: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f'<section id="{anchor}"><h2>{_text(title)}</h2>\n{body}\n</section>'


def _header(report: RunReport) -> str:
    kind = report.outcome.split(":", 1)[0]
    total = f"{report.seconds:.1f} s" if report.seconds is not None else "-"
    rows = [("workspace", f"<code>{_text(report.workspace)}</code>"), ("written", _text(report.written_at)),
            ("outcome", f'<strong class="outcome-{_text(kind)}">{_text(report.outcome)}</strong>'),
            ("patchsplat", _text(report.version)), ("total time", _text(total))]
    page = "<h1>patchsplat run report</h1>\n" + _table(None, rows)
    if kind != "succeeded":
        # The workspace still holds what earlier runs made for the stages this one never reached.
        page += ('\n<p class="stale"><strong>This run did not finish.</strong> Sections of stages it did not reach '
                 "(see the stage timings) show what an earlier run left in the workspace.</p>")
    return page


def _stage_timings(report: RunReport) -> str:
    if not report.stage_rows:
        return '<p class="missing">no stage ran</p>'
    return _table(("stage", "result", "seconds", "note"), ([_text(cell) for cell in row] for row in report.stage_rows),
                  numeric=(2,))


def _metrics(evaluation: Evaluation | Missing) -> str:
    if isinstance(evaluation, Missing):
        return _missing(evaluation)
    lpips = _number(evaluation.lpips, 3) if evaluation.lpips is not None else _text(evaluation.lpips_status or "-")
    headline = _table(("metric", "value"), [
        ("PSNR", _number(evaluation.psnr, 2, " dB")),
        ("PSNR, colour-corrected", _number(evaluation.psnr_colour_corrected, 2, " dB")),
        ("SSIM", _number(evaluation.ssim, 3)), ("LPIPS", lpips),
        ("Chamfer", _number(evaluation.chamfer, 4)), ("F-score", _number(evaluation.fscore, 3)),
        ("Gaussians", _number(evaluation.gaussians)), ("resolution", _text(evaluation.resolution or "-")),
        ("mesh", _text(evaluation.mesh_status or "-")),
    ])
    rows = [(_text(row.patch_id), _number(row.num_views), _number(row.psnr, 2), _number(row.ssim, 3),
             _number(row.lpips, 3), _text("; ".join(row.notes))) for row in evaluation.per_patch]
    per_patch = _table(("patch", "held-out views", "PSNR (dB)", "SSIM", "LPIPS", "notes"), rows, numeric=(1, 2, 3, 4))
    return headline + "<h3>Per patch</h3>" + per_patch


def _validation(validation: Validation | Missing) -> str:
    if isinstance(validation, Missing):
        return _missing(validation)
    counts = _table(("images", "registered", "points"),
                    [(_number(validation.images), _number(validation.registered), _number(validation.points))],
                    numeric=(0, 1, 2))
    if not validation.findings:
        return counts + "<p>no findings</p>"
    findings = _table(("severity", "message"), ((f'<span class="{_text(item.severity)}">{_text(item.severity)}</span>',
                                                 _text(item.message)) for item in validation.findings))
    return counts + findings


def _split(split: Split | Missing) -> str:
    if isinstance(split, Missing):
        return _missing(split)
    layout = (_image(split.layout_png, "split layout", "layout") if split.layout_png
              else '<p class="missing">not available: reports/split_layout.png is missing</p>')
    rows = [(_text(patch.patch_id), _number(patch.cameras), _number(patch.points), _number(patch.core_cameras),
             _number(patch.core_points), _text("; ".join(patch.flags) or "-")) for patch in split.patches]
    table = _table(("patch", "cameras", "points", "core cameras", "core points", "flags"), rows, numeric=(1, 2, 3, 4))
    return f"<p>{_text(split.decision)}</p>{layout}{table}"


def _trained_metrics(metrics: TrainedMetrics) -> str:
    return _table(None, [
        ("held-out PSNR", _number(metrics.heldout_psnr, 2, " dB")), ("held-out SSIM", _number(metrics.heldout_ssim, 3)),
        ("held-out views", _number(metrics.heldout_views)),
        ("Gaussians", _number(metrics.gaussians) + ("" if metrics.transparent_fraction is None else
                                                    f" ({metrics.transparent_fraction:.0%} near-transparent)")),
        ("steps", _number(metrics.steps)), ("steps/s", _number(metrics.steps_per_second, 1)),
        ("peak memory", _number(metrics.peak_memory_mb, 0, " MiB") + f" (planned {_number(metrics.memory_estimate_mb, 0)})"),
        ("memory plan", _text(metrics.memory_plan)), ("resolution", f"1/{metrics.resolution_factor}"),
        ("backend / device", _text(f"{metrics.backend} on {metrics.device}")),
        ("attempts", _number(metrics.attempts) + (" (recovered)" if metrics.recovered else "")
         + (" (resumed)" if metrics.resumed else "")),
    ])


def _patch_training(patch: PatchTraining) -> str:
    parts = [f'<h3 id="train-{_text(patch.patch_id)}">{_text(patch.patch_id)}</h3>']
    if patch.failed:
        parts.append('<p class="error">training failed: its attempts are under Recovery</p>')
    parts.append('<div class="patch">')  # the curve and the held-out view side by side, the numbers below
    if isinstance(patch.curve, Missing):
        parts.append(_missing(patch.curve))
    else:
        parts.append(_image(curve_png(patch.patch_id, patch.curve), f"{patch.patch_id} training curve"))
    parts.append(_image(patch.heldout_png, f"{patch.patch_id} held-out view") if patch.heldout_png
                 else '<p class="missing">not available: no held-out image</p>')
    parts.append("</div>")
    parts.append(_missing(patch.metrics) if isinstance(patch.metrics, Missing) else _trained_metrics(patch.metrics))
    return "\n".join(parts)


def _training(training: tuple[PatchTraining, ...] | Missing) -> str:
    if isinstance(training, Missing):
        return _missing(training)
    return "\n".join(_patch_training(patch) for patch in training)


def _changes(values: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def _recovery(training: tuple[PatchTraining, ...] | Missing) -> str:
    if isinstance(training, Missing):
        return _missing(training)
    recovered = [patch for patch in training if patch.failed or len(patch.attempts) > 1]
    if not recovered:
        return "<p>every patch trained at its first attempt</p>"
    parts = []
    for patch in recovered:
        rows = []
        for attempt in patch.attempts:
            ended = attempt.outcome
            if attempt.failure_kind:
                at = f" at step {attempt.failed_at_step}" if attempt.failed_at_step is not None else ""
                ended += f" ({attempt.failure_kind}{at}): {attempt.reason or ''}"
            if attempt.resumed_at_steps:
                ended += "; resumed from a checkpoint at step " + ", ".join(map(str, attempt.resumed_at_steps))
            rows.append((_number(attempt.number), _text(_changes(attempt.settings)), _number(attempt.start_step),
                         _text(ended), _text(_changes(attempt.next_change) or "-")))
        title = f"{patch.patch_id}: " + ("failed after its recovery ladder" if patch.failed
                                          else f"{len(patch.attempts)} attempts")
        parts.append(f"<h3>{_text(title)}</h3>" + _table(
            ("attempt", "settings", "from step", "how it ended and why", "changed for the next attempt"), rows,
            numeric=(0, 2)))
    return "\n".join(parts)


def _grid(report: RunReport) -> str:
    if report.evaluation_grid_png is None:
        return '<p class="missing">not available: reports/evaluation_grid.png is missing: the evaluate stage did not run to the end</p>'
    return _image(report.evaluation_grid_png, "held-out views: photo | render")


def _merge_and_mesh(report: RunReport) -> str:
    parts = ["<h3>Merge</h3>"]
    if isinstance(report.merge, Missing):
        parts.append(_missing(report.merge))
    else:
        merge = report.merge
        rows = [(_text(row.get("id", "?")), _number(row.get("trained")), _number(row.get("kept")),
                 _number(row.get("outside_core")), _number(row.get("below_min_opacity")))
                for row in merge.get("patches") or () if isinstance(row, dict)]
        parts.append(f"<p>{_number(merge.get('num_gaussians'))} Gaussians in the merged scene "
                     f"({_number(merge.get('dropped_non_finite'))} dropped for a non-finite value)</p>")
        parts.append(_table(("patch", "trained", "kept", "outside its core", "below min opacity"), rows,
                            numeric=(1, 2, 3, 4)))
    parts.append("<h3>Mesh</h3>")
    if isinstance(report.mesh, Missing):
        parts.append(_missing(report.mesh))
    else:
        totals = report.mesh.get("totals") or {}
        seconds = (report.mesh.get("seconds") or {}).get("total")
        parts.append(f"<p>{_number(totals.get('vertices'))} vertices, {_number(totals.get('faces'))} faces from "
                     f"{_number(totals.get('views_fused'))} fused views ({_text(report.mesh.get('tsdf_implementation', '-'))} "
                     f"on {_text(report.mesh.get('device', '-'))}; {_number(seconds, 1, ' s')})</p>")
    return "\n".join(parts)


def _partition(partition: PartitionCost | Missing) -> str:
    if isinstance(partition, Missing):
        return _missing(partition)
    record = partition.record
    border_single, border_merged = record.border_psnr()
    rows = [
        ("all held-out views", _number(record.num_views), _number(record.single.psnr), _number(record.merged.psnr),
         _text(f"{record.psnr_difference:+.2f}"), _text(f"-{record.overall_target_db:g}")),
        ("border views", _number(record.num_border_views), _number(border_single), _number(border_merged),
         "-" if record.border_psnr_difference is None else _text(f"{record.border_psnr_difference:+.2f}"),
         _text(f"-{record.border_target_db:g}")),
        ("Gaussians", "", _number(record.single.gaussians), _number(record.merged.gaussians), "", ""),
        ("training steps", "", _number(record.single.steps), _number(record.merged.steps), "", ""),
        ("training seconds", "", _number(record.single.train_seconds, 0), _number(record.merged.train_seconds, 0), "", ""),
    ]
    verdict = "within" if record.within_target else "outside"
    image = (_image(partition.worst_view_png, f"worst view {record.worst_view}: ground truth | single | merged | difference")
             if partition.worst_view_png else "")
    return (f"<p>{_text(record.split)} against the scene trained as one model ({_text(record.budget_description())}), scored on the same "
            f"held-out views: {verdict} the target; worst view {_text(record.worst_view)}.</p>"
            + _table(("views", "count", "single PSNR (dB)", "merged PSNR (dB)", "merged - single (dB)", "allowed (dB)"),
                     rows, numeric=(1, 2, 3, 4, 5)) + image)


def _viewer(report: RunReport) -> str:
    return (f"<p>Look at the splats, cameras, patch cells and mesh in a browser: run "
            f"<code>patchsplat view {_text(report.workspace)}</code>, then open "
            f'<a href="{VIEWER_URL}">{VIEWER_URL}</a> (served by this machine only).</p>')


def render_page(report: RunReport) -> str:
    sections = {
        "Stage timings": _stage_timings(report), "Metrics": _metrics(report.evaluation),
        "Validation": _validation(report.validation), "Split": _split(report.split),
        "Training": _training(report.training), "Recovery": _recovery(report.training),
        "Held-out grid": _grid(report), "Merge and mesh": _merge_and_mesh(report),
        "What splitting costs": _partition(report.partition), "Viewer": _viewer(report),
    }
    body = "\n".join(_section(title, sections[title]) for title in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>patchsplat run: {_text(report.outcome)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{_header(report)}\n{body}\n</body></html>\n")
