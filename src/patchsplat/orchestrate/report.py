"""The tables a flow run (``patchsplat run``) and ``patchsplat repro`` end with: every stage, what it did, its time."""

from __future__ import annotations

from rich.table import Table

from patchsplat.console import console
from patchsplat.stage_record import StageRecord


def _result(outcome: dict) -> str:
    if outcome.get("interrupted"):
        return "not started" if not outcome.get("ran") and not outcome.get("seconds") else "interrupted"
    if outcome["returncode"]:
        return "failed"
    return "ran" if outcome["ran"] else "up to date"


def _patch_row(patch_id: str, outcomes: list[dict]) -> tuple[str, str, str, str]:
    """One row for a patch: prepare + train together; the note gives each one's time."""
    results = [_result(outcome) for outcome in outcomes]
    result = next((r for r in ("failed", "interrupted", "not started") if r in results), None)
    result = result or ("ran" if "ran" in results else "up to date")
    seconds = sum(outcome["seconds"] for outcome in outcomes)
    parts = [f"{outcome['stage'].split('@')[0]} {outcome['seconds']:.1f} s" for outcome in outcomes if outcome["seconds"]]
    reasons = [outcome["reason"] for outcome in outcomes if outcome.get("reason") and not outcome.get("interrupted")]
    shown = "" if result == "not started" else f"{seconds:.1f}"
    return f"{patch_id} (prepare + train)", result, shown, "; ".join([", ".join(parts), *reasons]).strip("; ")


def flow_rows(summary) -> list[tuple[str, str, str, str]]:
    """Every stage of the pipeline in order (those the run never reached: "not run"), one row per patch."""
    from patchsplat.orchestrate.flow import HEAD_STAGES, TAIL_STAGES

    by_stage: dict[str, list[dict]] = {}
    for outcome in summary.stages:
        by_stage.setdefault(outcome["stage"], []).append(outcome)
    patch_ids = list(summary.patch_ids) or sorted({stage.split("@", 1)[1] for stage in by_stage if "@" in stage})
    rows = []
    for stage in (*HEAD_STAGES, "split", *patch_ids, *TAIL_STAGES):
        if stage in patch_ids:
            outcomes = [outcome for name in (f"prepare@{stage}", f"train@{stage}") for outcome in by_stage.get(name, [])]
            rows.append(_patch_row(stage, outcomes) if outcomes else (f"{stage} (prepare + train)", "not run", "", ""))
        elif stage in by_stage:
            outcome = by_stage[stage][-1]
            note = "" if outcome.get("interrupted") else outcome.get("reason") or ""
            rows.append((stage, _result(outcome), f"{outcome['seconds']:.1f}", note))
        else:
            rows.append((stage, "not run", "", ""))
    return rows


def print_flow_summary(summary) -> None:
    """Stage by stage: ran / up to date / failed / interrupted / not run, seconds, and a failure's reason;
    then the run's total."""
    if summary.outcome == "up_to_date":
        console.print(f"reconstruct: nothing to do, every stage is up to date ({summary.seconds:.1f} s)")
        return
    # The total is the run's wall time: patches train side by side, so it can be less than the rows' sum.
    _print_stage_table(f"reconstruct: {summary.outcome} in {summary.seconds:.0f} s", flow_rows(summary),
                       ("total", summary.outcome, f"{summary.seconds:.1f}", "wall time"))
    if summary.mlflow_run_id:
        console.print(f"MLflow pipeline run {summary.mlflow_run_id}; compare runs with `patchsplat compare`")


def print_stage_times(records: list[StageRecord], seconds: float, title: str) -> None:
    """The stages a ``dvc repro`` ran, in the order they ended, with their times (as the stages measured
    them, from their records: :mod:`patchsplat.stage_record`), and the total wall time."""
    if not records:
        console.print(f"{title}: no stage ran (every stage up to date or none reached) in {seconds:.1f} s")
        return
    rows = [row[:3] for row in repro_rows(records)]  # the note (a failure's reason) was printed by the stage itself
    _print_stage_table(f"{title}: stages run in {seconds:.0f} s", rows, ("total", "", f"{seconds:.1f}"))


def repro_rows(records: list[StageRecord]) -> list[tuple[str, str, str, str]]:
    """(stage, result, seconds, note) of each stage a ``dvc repro`` ran, in the order they ended. Only the
    stages that ran are listed: the others were up to date (or not reached, after a failure)."""
    return [(record.stage, f"{record.outcome} ({record.kind})" if record.kind else record.outcome,
             f"{record.seconds:.1f}", record.reason or "") for record in records]


def _print_stage_table(title: str, rows, total: tuple[str, ...]) -> None:
    """stage | result | seconds [| note] rows and a bold total row (the run's wall time)."""
    table = Table(title=title)
    for column in ("stage", "result"):
        table.add_column(column)
    table.add_column("seconds", justify="right")
    if len(total) > 3:
        table.add_column("note", overflow="fold")
    for row in rows:
        table.add_row(*row)
    table.add_row(*total, end_section=True, style="bold")
    console.print(table)
