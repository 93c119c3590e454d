"""Merge the trained patches into one scene: each patch keeps the Gaussians whose centre lies in its core cell.

Core cells are disjoint and together cover the ground plane (see :mod:`patchsplat.split`),
so every Gaussian of the merged scene comes from exactly one patch, and the overlap
regions — trained twice, once at each patch's border — are taken from the patch whose
interior they are ("seamless merging", VastGaussian).

Contract: :func:`merge_patches` reads ``patches_dir/pN/patch.json`` (:class:`patchsplat.split.SplitLayout`) and
``trained_dir/<id>/splats.ply`` (world frame) and writes ``out_dir`` atomically:
``splats.ply`` (INRIA layout, world frame), ``merge.json`` (counts per patch) and, for each of
``merge.export_formats``, ``splats.<ext>`` (:mod:`patchsplat.export`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from patchsplat.atomic import atomic_dir, write_json
from patchsplat.config import MergeConfig
from patchsplat.errors import InputError
from patchsplat.gaussians import GAUSSIAN_FIELDS
from patchsplat.output_folder import MERGE, check_replaceable
from patchsplat.split import SplitLayout
from patchsplat.splat_io import read_splats_ply, write_splats_ply


def _pad_sh(shN: torch.Tensor, coefficients: int) -> torch.Tensor:
    """Patches trained to different SH degrees are merged at the highest (missing bands are zero)."""
    if shN.shape[1] == coefficients:
        return shN
    padded = torch.zeros((shN.shape[0], coefficients, 3), dtype=shN.dtype)
    padded[:, : shN.shape[1]] = shN
    return padded


def merge_patches(patches_dir: Path, trained_dir: Path, out_dir: Path, config: MergeConfig) -> dict:
    check_replaceable(out_dir, MERGE, (patches_dir, trained_dir))
    pieces, rows = [], []
    for patch in SplitLayout.load(patches_dir).patches:
        ply = Path(trained_dir) / patch.id / "splats.ply"
        if not ply.exists():
            raise InputError(ply, f"patch {patch.id} has no trained splats: train it first", kind="missing_file")
        splats = read_splats_ply(ply)
        # Ownership on the aligned ground plane: each Gaussian goes to the patch whose core cell holds its centre.
        inside = patch.core_contains(splats["means"].double().numpy())
        opaque = torch.sigmoid(splats["opacities"]).numpy() >= config.min_opacity
        keep = torch.from_numpy(np.flatnonzero(inside & opaque))
        pieces.append({key: splats[key][keep] for key in GAUSSIAN_FIELDS})
        rows.append({"id": patch.id, "trained": int(len(inside)), "kept": int(len(keep)),
                     "outside_core": int((~inside).sum()), "below_min_opacity": int((inside & ~opaque).sum())})
    coefficients = max(piece["shN"].shape[1] for piece in pieces)
    merged = {key: torch.cat([_pad_sh(p[key], coefficients) if key == "shN" else p[key] for p in pieces]) for key in GAUSSIAN_FIELDS}
    summary = {"num_gaussians": int(merged["means"].shape[0]), "patches": rows}
    with atomic_dir(out_dir, MERGE, (patches_dir, trained_dir)) as tmp:
        written = write_splats_ply(tmp / "splats.ply", **merged)
        summary["dropped_non_finite"] = written["n_dropped"]
        summary["exports"] = _write_exports(merged, config.export_formats, tmp)
        write_json(tmp / "merge.json", summary)
    return summary


def _write_exports(merged: dict, formats: list[str], folder: Path) -> dict[str, str]:
    """The merged scene in each chosen format beside splats.ply; {format: file name}."""
    from patchsplat.export import EXTENSIONS, export_splats

    written = {}
    for format in dict.fromkeys(formats):  # in order, once each
        if format == "ply":
            continue  # splats.ply is always there
        name = f"splats{EXTENSIONS[format]}"
        try:
            export_splats(merged, format, folder / name)
        except ValueError as error:
            raise InputError("merge.export_formats", f"the merged scene cannot be written as {format}: {error}",
                             kind="bad_input") from error
        written[format] = name
    return written


def print_merge_table(summary: dict) -> None:
    from rich.table import Table

    from patchsplat.console import console

    table = Table(title=f"merged scene: {summary['num_gaussians']} Gaussians")
    for column in ("patch", "trained", "kept (core cell)", "outside core", "below min opacity"):
        table.add_column(column, justify="right" if column != "patch" else "left")
    for row in summary["patches"]:
        table.add_row(row["id"], str(row["trained"]), str(row["kept"]), str(row["outside_core"]), str(row["below_min_opacity"]))
    console.print(table)
