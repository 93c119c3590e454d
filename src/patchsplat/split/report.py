"""The comparison table printed after a split."""

from __future__ import annotations

from rich.table import Table

from patchsplat.console import console


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_split_table(summary: dict) -> None:
    table = Table(title=f"{summary['num_patches']} patches ({summary['mode']}, up from {summary['up_method']})")
    for column in ("patch", "cameras", "core cams", "points", "core pts", "XYZ range (robust, in cell)", "mean NN spacing", "scene scale", "flags"):
        table.add_column(column, justify="right" if column not in ("patch", "flags") else "left")
    for row in summary["patches"]:
        stats = row["stats"]
        size = " x ".join(f"{v:.3g}" for v in stats["robust_size"]) if stats["robust_size"] else "-"
        table.add_row(
            row["id"], str(row["num_cameras"]), str(row["num_core_cameras"]), str(row["num_points"]),
            str(row["num_core_points"]), size, _number(stats["mean_nn_spacing"]), _number(stats["scene_scale"]),
            "; ".join(row["flags"]) or "-",
            style="bold red" if row["flags"] else None,
        )
    console.print(table)
    if summary.get("decision"):
        console.print(f"split: {summary['decision']}", markup=False)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for note in summary["notes"]:
        console.print(f"note: {note}")
