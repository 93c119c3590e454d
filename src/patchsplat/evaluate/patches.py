"""Which patch a held-out view belongs to: the one whose core cell holds its camera centre.

Core cells (``data/patches/pN/patch.json``: ``core_cell`` = [x_min, x_max, y_min, y_max], None for an
infinite side) tile the ground plane of the aligned frame (``aligned = world_to_aligned @ world``;
every patch stores the same rotation), so every camera centre lies in exactly one of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchsplat.errors import InputError
from patchsplat.split.partition import Cell

PATCH_FILE = "patch.json"


@dataclass(frozen=True)
class PatchCells:
    """The core cells of a split, by patch id, and the world -> aligned rotation they are expressed in."""

    world_to_aligned: np.ndarray   # (3, 3)
    cells: dict[str, Cell]         # patch id -> core cell, in patch-number order


def _patch_number(folder: Path) -> int:
    return int(folder.name[1:])


def read_patch_cells(patches_dir: Path) -> PatchCells | None:
    """The core cells of the patches in ``patches_dir`` (folders ``p0``, ``p1``, ... holding ``patch.json``).

    Returns None when there is no such patch. Raises :class:`InputError` for an unreadable
    ``patch.json``, a missing key, or patches whose rotations differ (they come from one split).
    """
    folders = sorted(
        (p for p in Path(patches_dir).iterdir() if p.is_dir() and re.fullmatch(r"p\d+", p.name) and (p / PATCH_FILE).is_file()),
        key=_patch_number,
    ) if Path(patches_dir).is_dir() else []
    if not folders:
        return None
    cells: dict[str, Cell] = {}
    rotation = None
    for folder in folders:
        path = folder / PATCH_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cell = Cell.from_list(data["core_cell"])
            this_rotation = np.asarray(data["world_to_aligned"], dtype=float).reshape(3, 3)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(path, f"not a readable patch description ({type(error).__name__}: {error})", kind="corrupt_file") from None
        if rotation is None:
            rotation = this_rotation
        elif not np.allclose(rotation, this_rotation, atol=1e-9):
            raise InputError(path, "world_to_aligned differs from the other patches' (they must come from one split)", kind="corrupt_file")
        cells[folder.name] = cell
    return PatchCells(rotation, cells)


def assign_to_cells(centres_world: np.ndarray, world_to_aligned: np.ndarray, cells: dict[str, Cell]) -> list[str | None]:
    """For each of the (N, 3) world-frame ``centres_world``: the id of the cell holding its aligned (x, y).

    Cells are half-open ([x_min, x_max) x [y_min, y_max)), so a centre on a shared edge belongs to one
    cell only. If cells overlapped, the first id in ``cells``' order would win; a centre in no cell
    (possible only when the cells do not tile the plane) gets None.
    """
    centres_world = np.asarray(centres_world, dtype=float).reshape(-1, 3)
    ground_xy = (centres_world @ np.asarray(world_to_aligned, dtype=float).T)[:, :2]
    owners: list[str | None] = [None] * len(ground_xy)
    for patch_id, cell in cells.items():
        for index in np.flatnonzero(cell.contains(ground_xy)):
            if owners[index] is None:
                owners[index] = patch_id
    return owners
