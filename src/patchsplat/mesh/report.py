"""The table printed after mesh extraction (from the summary written to mesh.json)."""

from __future__ import annotations

from rich.table import Table

from patchsplat.console import console


def _note(record: dict) -> str:
    if record.get("skipped"):
        return record["skipped"]
    coarsened = record.get("coarsened")
    if coarsened:
        return f"voxel coarsened from {coarsened['voxel_asked']:.4g} to fit {coarsened['budget_gb']:g} GB"
    return ""


def print_mesh_table(summary: dict) -> None:
    totals = summary["totals"]
    table = Table(title=f"mesh: {totals['faces']:,} faces, {totals['vertices']:,} vertices "
                        f"({summary['tsdf_implementation']}, {summary['device']})")
    for column in ("patch", "views", "rendered at", "depth trunc", "voxel", "grid", "faces (before crop)", "render s",
                   "fuse s", "note"):
        table.add_column(column, justify="left" if column in ("patch", "rendered at", "grid", "note") else "right")
    for record in summary["patches"]:
        seconds = record.get("seconds", {})
        views = record.get("depth_trunc_views") or {}
        trunc = f"{views['min']:.3g}-{views['max']:.3g}" if views else f"{record['depth_trunc']:.3g}"
        table.add_row(
            record["id"], str(record["views_fused"]), record.get("fusion_resolution") or "-", trunc,
            f"{record['voxel_size']:.4g}", "x".join(str(n) for n in record.get("grid_shape", [])) or "-",
            f"{record['faces']:,} ({record['faces_before_crop']:,})",
            f"{seconds.get('render', 0.0):.1f}", f"{seconds.get('fuse', 0.0):.1f}", _note(record),
        )
    console.print(table)
    for record in summary["patches"]:
        if record.get("coarsened"):
            console.print(f"{record['id']}: {record['why']['voxel_size']} (raise mesh.memory_budget_gb for a finer mesh)")
    welded = totals["seam_vertices_welded"]
    console.print(
        f"seams: {welded['on_lattice_edges']} vertices welded on shared lattice edges, {welded['by_distance']} by distance; "
        f"small pieces: {totals['components_removed']} of {totals['components']} removed "
        f"({totals['faces_removed_in_small_components']:,} faces); {summary['seconds']['total']:.1f} s"
    )
