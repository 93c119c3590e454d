"""Compare tracked runs: the settings that differ, metrics per patch and overall, and a PNG.

Reads the MLflow store the pipeline logs to (the workspace's SQLite file or a team's server,
whatever URI it is given). The unit of comparison is a pipeline run (the parent run the Prefect
flow starts, tag ``patchsplat.kind=pipeline``): its params are the whole params.yaml flattened
with dots and its metrics describe the workspace at its end (``evaluate.*``, ``train.<patch>.*``,
``evaluate.images.per_patch.<patch>.*``, ...). Any other run (a lone ``train`` run from a plain
``dvc repro``) is compared generically by the same naming rules; a run tagged ``patch`` gets its
``final_<name>`` metrics shown as that patch's.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patchsplat.atomic import atomic_file
from patchsplat.errors import InputError
from patchsplat.output_folder import COMPARISON_PNG, PNG_SOFTWARE, check_replaceable_file
from patchsplat.workspace import PATCH_ID_PATTERN, is_patch_id, patch_number

PIPELINE_KIND_TAG = "patchsplat.kind"
PIPELINE_KIND = "pipeline"
OUTCOME_TAG = "patchsplat.outcome"
SWEEP_PARAM_TAG = "sweep.param"
SWEEP_VALUE_TAG = "sweep.value"

# Patch ids are p0, p1, ... (split/plan.py); anything else in that position is not a patch.
_TRAIN_PER_PATCH = re.compile(rf"train\.({PATCH_ID_PATTERN})\.(.+)")
_EVALUATE_PER_PATCH = re.compile(rf"evaluate\.images\.per_patch\.({PATCH_ID_PATTERN})\.(.+)")
# Per-patch metrics of the scene-wide evaluation are keyed apart from training's own held-out
# metrics: both have a "psnr", measured on different views.
SCENE_PREFIX = "scene_"

# Metrics shown first, in this order; the rest follow alphabetically.
_OVERALL_ORDER = ("evaluate.psnr", "evaluate.ssim", "evaluate.chamfer", "evaluate.fscore", "evaluate.accuracy",
                  "evaluate.completeness", "evaluate.num_gaussians",
                  # `patchsplat check-partition`'s price of splitting, on runs of the settings it was made with.
                  "partition.psnr_difference", "partition.border_psnr_difference", "partition.single_psnr",
                  "partition.merged_psnr", "partition.single_steps", "partition.merged_steps")
_PER_PATCH_ORDER = ("heldout_psnr", "scene_psnr", "heldout_ssim", "scene_ssim", "scene_l1", "gaussians", "attempts",
                    "train_loss", "steps_per_second", "scene_num_views")
_LABELS = {
    "heldout_psnr": "held-out PSNR (train)",
    "heldout_ssim": "held-out SSIM (train)",
    "scene_psnr": "PSNR (scene views)",
    "scene_ssim": "SSIM (scene views)",
    "scene_l1": "L1 (scene views)",
    "scene_num_views": "views (scene)",
}

# Which way is better, by the metric's last word. accuracy/completeness are the mesh's distances
# to the ground truth (evaluate), so lower is better like chamfer.
_HIGHER_IS_BETTER = ("psnr", "ssim", "fscore", "per_second")
_LOWER_IS_BETTER = ("chamfer", "accuracy", "completeness", "l1", "loss")

# The PNG's overall panel: metrics on comparable, bounded scales.
PNG_OVERALL = ("evaluate.psnr", "evaluate.ssim", "evaluate.fscore")


@dataclass
class RunSummary:
    run_id: str
    name: str
    start_time: datetime | None
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    @property
    def is_pipeline(self) -> bool:
        return self.tags.get(PIPELINE_KIND_TAG) == PIPELINE_KIND

    @property
    def sweep(self) -> str | None:
        """``param=value`` for a sweep's run, else None."""
        if SWEEP_PARAM_TAG not in self.tags:
            return None
        return f"{self.tags[SWEEP_PARAM_TAG]}={self.tags.get(SWEEP_VALUE_TAG, '?')}"

    @property
    def outcome(self) -> str:
        """The pipeline's own verdict when it logged one, else MLflow's run status."""
        return self.tags.get(OUTCOME_TAG) or self.tags.get("outcome") or self.status.lower()

    @property
    def label(self) -> str:
        return f"{self.short_id} {self.name}".strip()


@dataclass
class Comparison:
    runs: list[RunSummary]
    differing_params: dict[str, list[str | None]]
    overall: dict[str, list[float | None]]
    per_patch: dict[str, dict[str, list[float | None]]]

    @property
    def identical_params(self) -> int:
        """How many params every run has with the same value (not listed, but worth a mention)."""
        names = set().union(*(run.params for run in self.runs)) if self.runs else set()
        return len(names) - len(self.differing_params)


# --- reading the store -----------------------------------------------------------------------


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    from patchsplat.tracking import quiet_store_logs

    quiet_store_logs()
    return MlflowClient(tracking_uri=tracking_uri)


def _check_store_exists(tracking_uri: str) -> None:
    """A SQLite store that is not there means nothing was tracked yet; do not create an empty one."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    location = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    if location and location != ":memory:" and not Path(location).exists():
        raise InputError(location, "no MLflow store here: no runs have been tracked yet (run `patchsplat run` first)",
                         kind="no_runs")


def _check_server_answers(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when a tracking server is unreachable: MLflow's client retries for minutes.

    Any HTTP answer (even 401 or 404 from a proxy) means something listens; only a refused or timed
    out connection is an error here.
    """
    import urllib.error
    import urllib.request

    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(f"tracking server {tracking_uri}", f"does not answer ({reason})", kind="tracking_store") from None


def _check_store(tracking_uri: str) -> None:
    """A missing SQLite file or a silent server: a one-line error before MLflow gets involved."""
    _check_store_exists(tracking_uri)
    _check_server_answers(tracking_uri)


def _store_error(tracking_uri: str, error: Exception) -> InputError:
    message = " ".join(str(getattr(error, "message", error)).split())
    return InputError(f"tracking store {tracking_uri}", f"cannot be read: {message}", kind="tracking_store")


def _experiment_id(client, tracking_uri: str, experiment: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_experiment_by_name(experiment)
    except MlflowException as error:
        raise _store_error(tracking_uri, error) from None
    if found is None:
        raise InputError(f"experiment {experiment!r}", f"does not exist in {tracking_uri} (no runs tracked yet?)",
                         kind="no_runs")
    return found.experiment_id


def latest_pipeline_runs(tracking_uri: str, experiment: str, count: int = 2) -> list[str]:
    """Ids of the latest ``count`` pipeline runs by start time, oldest first (the table's reading order).

    Stage and patch runs (children) are never picked: only runs tagged ``patchsplat.kind=pipeline``.
    """
    from mlflow.exceptions import MlflowException

    if count < 1:
        raise InputError("count", f"must be at least 1, got {count}")
    _check_store(tracking_uri)
    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    try:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_KIND_TAG}` = '{PIPELINE_KIND}'",
                                  order_by=["attributes.start_time DESC"], max_results=count)
    except MlflowException as error:
        raise _store_error(tracking_uri, error) from None
    if not runs:
        raise InputError(f"experiment {experiment!r}", f"has no pipeline runs in {tracking_uri} (run `patchsplat run` first)",
                         kind="no_runs")
    return [run.info.run_id for run in reversed(runs)]


def _summary(run) -> RunSummary:
    start = run.info.start_time
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        start_time=None if start is None else datetime.fromtimestamp(start / 1000, tz=timezone.utc),
        status=run.info.status,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),  # the latest value of each metric
    )


def _resolve_prefix(client, tracking_uri: str, experiment: str | None, prefix: str) -> str:
    """A short id (as the table shows it) -> the full run id, looked up in ``experiment``."""
    if experiment is None:
        raise InputError(f"run {prefix}", "unknown run id (a short id needs the experiment to look in)",
                         kind="unknown_run")
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    matches: list[str] = []
    page_token = None
    while True:  # runs cannot be filtered by id prefix in MLflow's search language
        page = client.search_runs([experiment_id], max_results=1000, page_token=page_token)
        matches += [run.info.run_id for run in page if run.info.run_id.startswith(prefix)]
        page_token = page.token
        if not page_token:
            break
    if len(matches) != 1:
        problem = "unknown run id" if not matches else f"ambiguous short run id ({len(matches)} runs start with it)"
        raise InputError(f"run {prefix}", f"{problem} in experiment {experiment!r} of {tracking_uri}", kind="unknown_run")
    return matches[0]


def _get_run(client, tracking_uri: str, experiment: str | None, run_id: str) -> RunSummary:
    from mlflow.exceptions import MlflowException

    try:
        if len(run_id) < 32 and re.fullmatch(r"[0-9a-f]+", run_id):
            run_id = _resolve_prefix(client, tracking_uri, experiment, run_id)
        return _summary(client.get_run(run_id))
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise InputError(f"run {run_id}", f"unknown run id in {tracking_uri}", kind="unknown_run") from None
        raise _store_error(tracking_uri, error) from None


def load_comparison(tracking_uri: str, experiment: str | None, run_ids: list[str]) -> Comparison:
    """Read the runs (in the order given; none given: the two latest pipeline runs) and line them up.

    Unknown ids, a missing store or experiment, and a store without pipeline runs raise a one-line
    :class:`InputError`.
    """
    _check_store(tracking_uri)
    if not run_ids:
        if experiment is None:
            raise InputError("run ids", "none given and no experiment to pick the latest pipeline runs from")
        run_ids = latest_pipeline_runs(tracking_uri, experiment)
    client = _client(tracking_uri)
    unique = list(dict.fromkeys(run_ids))  # the same run twice would only repeat a column
    return compare_runs([_get_run(client, tracking_uri, experiment, run_id) for run_id in unique])


# --- lining runs up --------------------------------------------------------------------------


def split_metrics(run: RunSummary) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """A run's metrics as (overall name -> value, per-patch name -> patch -> value)."""
    overall: dict[str, float] = {}
    per_patch: dict[str, dict[str, float]] = {}
    lone_patch = run.tags.get("patch") if not run.is_pipeline else None
    for name, value in run.metrics.items():
        if (match := _TRAIN_PER_PATCH.fullmatch(name)) is not None:
            patch, metric = match.groups()
        elif (match := _EVALUATE_PER_PATCH.fullmatch(name)) is not None:
            patch, metric = match.group(1), SCENE_PREFIX + match.group(2)
        elif lone_patch and is_patch_id(lone_patch) and name.startswith("final_"):
            # A lone train run logs its end results as final_<name> (train/stage.py).
            patch, metric = lone_patch, name[len("final_"):]
        elif lone_patch and f"final_{name}" in run.metrics:
            continue  # the curve's last logged point of a final_ metric: the final value says it
        else:
            overall[name] = value
            continue
        per_patch.setdefault(metric, {})[patch] = value
    return overall, per_patch


def _ordered(names, first: tuple[str, ...]) -> list[str]:
    names = set(names)
    return [name for name in first if name in names] + sorted(names - set(first))


def _patch_order(patch: str) -> tuple[int, str]:
    return (patch_number(patch), patch) if is_patch_id(patch) else (10**9, patch)


def compare_runs(runs: list[RunSummary]) -> Comparison:
    """The comparison of already loaded runs (no store needed: the part tests and callers can reuse)."""
    names = sorted(set().union(*(run.params for run in runs))) if runs else []
    differing = {}
    for name in names:
        values = [run.params.get(name) for run in runs]
        if len(set(values)) > 1:
            differing[name] = values
    splits = [split_metrics(run) for run in runs]
    overall_names = _ordered(set().union(*(overall for overall, _ in splits)) if splits else [], _OVERALL_ORDER)
    overall = {name: [overall.get(name) for overall, _ in splits] for name in overall_names}
    patch_metrics = _ordered(set().union(*(per for _, per in splits)) if splits else [], _PER_PATCH_ORDER)
    per_patch = {}
    for metric in patch_metrics:
        patches = sorted(set().union(*(per.get(metric, {}) for _, per in splits)), key=_patch_order)
        per_patch[metric] = {patch: [per.get(metric, {}).get(patch) for _, per in splits] for patch in patches}
    return Comparison(runs=runs, differing_params=differing, overall=overall, per_patch=per_patch)


# --- presentation ----------------------------------------------------------------------------


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is, 0 when it is a matter of taste (Gaussians, attempts)."""
    last = metric.rsplit(".", 1)[-1]
    if any(word in last for word in _HIGHER_IS_BETTER):
        return 1
    if any(word in last for word in _LOWER_IS_BETTER):
        return -1
    return 0


def best_index(metric: str, values: list[float | None]) -> int | None:
    """The column to highlight: only when the direction is known and the runs actually differ."""
    sign = direction(metric)
    known = [(value, index) for index, value in enumerate(values) if _finite(value)]
    if sign == 0 or len(known) < 2 or len({value for value, _ in known}) < 2:
        return None
    return max(known, key=lambda item: sign * item[0])[1]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"  # counts: Gaussians, attempts, views
    return f"{value:.4g}"


def _format_delta(metric: str, values: list[float | None]) -> str:
    first, last = values[0], values[-1]
    if not (_finite(first) and _finite(last)):
        return "-"
    delta = last - first
    if delta == 0:
        return "0"
    text = f"{delta:+,.0f}" if delta == int(delta) and first == int(first) else f"{delta:+.3g}"
    sign = direction(metric)
    if sign and delta:
        return f"[green]{text}[/]" if sign * delta > 0 else f"[red]{text}[/]"
    return text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _column_header(run: RunSummary) -> str:
    second = run.sweep or (run.start_time.astimezone().strftime("%m-%d %H:%M") if run.start_time else "")
    return f"{run.label}\n[dim]{second}[/]" if second else run.label


def _cells(metric: str, values: list[float | None]) -> list[str]:
    best = best_index(metric, values)
    return [f"[bold green]{format_value(value)}[/]" if index == best else format_value(value)
            for index, value in enumerate(values)]


def _metric_table(title: str, first_columns: list[str], comparison: Comparison):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for name in first_columns:
        table.add_column(name, no_wrap=True)
    for run in comparison.runs:
        table.add_column(_column_header(run), justify="right")
    if len(comparison.runs) == 2:
        table.add_column("delta", justify="right")
    return table


def _runs_table(comparison: Comparison):
    from rich.table import Table

    table = Table(title="Runs", title_justify="left")
    for name in ("run", "name", "started", "outcome", "sweep", "commit"):
        table.add_column(name, no_wrap=name != "name")
    for run in comparison.runs:
        started = run.start_time.astimezone().strftime("%Y-%m-%d %H:%M:%S") if run.start_time else "-"
        kind = "" if run.is_pipeline else f" [dim]({run.tags.get('stage', 'not a pipeline run')})[/]"
        table.add_row(run.short_id, (run.name or "-") + kind, started, run.outcome, run.sweep or "-",
                      (run.tags.get("git.commit") or "-")[:12])
    return table


def _params_table(comparison: Comparison):
    from rich.table import Table

    caption = f"{_count(comparison.identical_params, 'setting')} identical in all runs (not shown)"
    table = Table(title="Settings that differ", title_justify="left", caption=caption, caption_justify="left")
    table.add_column("param", no_wrap=True)
    for run in comparison.runs:
        table.add_column(_column_header(run), justify="right")
    for name, values in comparison.differing_params.items():
        table.add_row(name, *("[dim]-[/]" if value is None else value for value in values))
    return table


def print_comparison(comparison: Comparison, console=None) -> None:
    """Runs, differing settings, overall metrics and per-patch metrics as rich tables."""
    from rich.markup import escape

    if console is None:
        from patchsplat.console import console
    console.print(_runs_table(comparison))
    if len(comparison.runs) > 1:
        if comparison.differing_params:
            console.print(_params_table(comparison))
        else:
            console.print(f"All {_count(comparison.identical_params, 'setting')} are identical in these runs.")
    if comparison.overall:
        table = _metric_table("Overall", ["metric"], comparison)
        for metric, values in comparison.overall.items():
            table.add_row(escape(metric), *_cells(metric, values),
                          *([_format_delta(metric, values)] if len(values) == 2 else []))
        console.print(table)
    if comparison.per_patch:
        table = _metric_table("Per patch", ["metric", "patch"], comparison)
        for metric, patches in comparison.per_patch.items():
            for index, (patch, values) in enumerate(patches.items()):
                label = escape(_LABELS.get(metric, metric)) if index == 0 else ""
                table.add_row(label, patch, *_cells(metric, values),
                              *([_format_delta(metric, values)] if len(values) == 2 else []))
            table.add_section()  # a rule between metrics keeps the patch rows of one metric together
        console.print(table)
    if not comparison.overall and not comparison.per_patch:
        console.print("No metrics were logged by these runs.")


def _png_patch_metric(comparison: Comparison) -> str | None:
    """Training's held-out PSNR per patch; the scene-wide per-patch PSNR when training's is absent."""
    return next((name for name in ("heldout_psnr", "scene_psnr") if comparison.per_patch.get(name)), None)


def write_comparison_png(comparison: Comparison, path: Path) -> Path:
    """Grouped bars of per-patch PSNR (one colour per run) above the overall PSNR/SSIM/F-score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = comparison.runs
    colours = [f"C{index % 10}" for index in range(len(runs))]
    labels = [f"{run.label}" + (f" ({run.sweep})" if run.sweep else "") for run in runs]
    figure = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, len(PNG_OVERALL), height_ratios=(1.3, 1))
    _draw_per_patch(figure.add_subplot(grid[0, :]), comparison, colours, labels)
    for column, metric in enumerate(PNG_OVERALL):
        _draw_overall(figure.add_subplot(grid[1, column]), metric, comparison.overall.get(metric), colours,
                      [run.short_id for run in runs])
    # Wrapped: a sweep of many runs would otherwise run off the figure's edge.
    figure.suptitle(textwrap.fill("Run comparison: " + "  vs  ".join(labels), width=140), fontsize=11)
    path = Path(path)
    check_replaceable_file(path, COMPARISON_PNG)
    with atomic_file(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
    return path


def _draw_per_patch(axis, comparison: Comparison, colours: list[str], labels: list[str]) -> None:
    metric = _png_patch_metric(comparison)
    if metric is None:
        axis.text(0.5, 0.5, "no per-patch PSNR logged", ha="center", va="center", transform=axis.transAxes)
        axis.set_axis_off()
        return
    patches = list(comparison.per_patch[metric])
    width = 0.8 / len(comparison.runs)
    for index, (colour, label) in enumerate(zip(colours, labels)):
        positions = [x - 0.4 + width * (index + 0.5) for x in range(len(patches))]
        heights = [comparison.per_patch[metric][patch][index] for patch in patches]
        bars = axis.bar(positions, [h if _finite(h) else 0.0 for h in heights], width, color=colour, label=label)
        axis.bar_label(bars, labels=[format_value(h) if _finite(h) else "n/a" for h in heights], fontsize=7, padding=2)
    axis.set_xticks(range(len(patches)), patches)
    axis.set_ylabel(f"{_LABELS.get(metric, metric)} [dB]")
    values = [v for row in comparison.per_patch[metric].values() for v in row if _finite(v)]
    if values:  # PSNRs of a few dB apart would be invisible on bars starting at 0
        low, high = min(values), max(values)
        margin = max(1.0, (high - low) * 0.25)
        axis.set_ylim(max(0.0, low - margin), high + margin)
    axis.set_title(f"Per patch: {_LABELS.get(metric, metric)}", fontsize=10)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="y", alpha=0.3)


def _draw_overall(axis, metric: str, values: list[float | None] | None, colours: list[str], run_ids: list[str]) -> None:
    axis.set_title(metric.removeprefix("evaluate."), fontsize=10)
    if not values or not any(_finite(v) for v in values):
        axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes)
        axis.set_xticks([])
        axis.set_yticks([])
        return
    bars = axis.bar(range(len(values)), [v if _finite(v) else 0.0 for v in values], color=colours)
    axis.bar_label(bars, labels=[format_value(v) if _finite(v) else "n/a" for v in values], fontsize=8, padding=2)
    axis.set_xticks(range(len(values)), run_ids, fontsize=8)
    finite = [v for v in values if _finite(v)]
    top = max(finite)
    axis.set_ylim(min(0.0, min(finite)), top * 1.15 if top > 0 else 1.0)
    axis.grid(axis="y", alpha=0.3)
