"""The table a flow run ends with."""

from __future__ import annotations

from rich.table import Table

from patchsplat.console import console


def print_flow_summary(summary) -> None:
    """Stage by stage: ran / up to date / failed, seconds, and the reason of a failure."""
    if summary.outcome == "up_to_date":
        console.print(f"reconstruct: nothing to do, every stage is up to date ({summary.seconds:.1f} s)")
        return
    table = Table(title=f"reconstruct: {summary.outcome} in {summary.seconds:.0f} s")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("note", overflow="fold")
    for stage in summary.stages:
        result = "failed" if stage["returncode"] else ("ran" if stage["ran"] else "up to date")
        table.add_row(stage["stage"], result, f"{stage['seconds']:.1f}", stage.get("error") or "")
    console.print(table)
    if summary.mlflow_run_id:
        console.print(f"MLflow pipeline run {summary.mlflow_run_id}; compare runs with `patchsplat compare`")
