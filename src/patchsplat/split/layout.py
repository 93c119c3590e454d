"""What the split leaves for the later stages, as typed objects: each has one ``load`` and one ``save``.

    GroundFrame        the gravity-aligned frame the cells are drawn in (aligned = world_to_aligned @ world)
    PatchDescription   one patch's pN/patch.json: its cells, images, held-out views and statistics
    SplitLayout        every patch of a patches folder, in patch-number order, and the frame they share

The stages read patch.json only through :class:`PatchDescription`, and project points onto the ground
only through :class:`GroundFrame`, so the file's keys and the projection are written out once, here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchsplat.atomic import write_json
from patchsplat.errors import InputError
from patchsplat.reading import read_json_object
from patchsplat.split.partition import Cell
from patchsplat.workspace import patch_ids_in

PATCH_FILE = "patch.json"

# Rows per matrix product in GroundFrame: small enough that OpenBLAS keeps each product on one thread.
_ROWS_PER_PRODUCT = 8192


@dataclass(frozen=True, eq=False)
class GroundFrame:
    """The split's gravity-aligned frame. Its x and y axes span the ground plane the cells tile; z is up."""

    world_to_aligned: np.ndarray   # (3, 3) rotation; rows are the aligned axes in world coordinates

    def to_aligned(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) aligned coordinates ``points_world @ world_to_aligned.T`` of the (N, 3) world points.

        Computed in row blocks: one (N, 3) x (3, 3) product over a million points is spread over BLAS
        threads whose start-up and synchronisation cost 10-100x the arithmetic (0.4 s measured on a busy
        2-core machine, 5 ms in blocks). Each row's value is the same either way.
        """
        points = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        out = np.empty((len(points), 3))
        rotation = self.world_to_aligned.T
        for begin in range(0, len(points), _ROWS_PER_PRODUCT):
            np.matmul(points[begin : begin + _ROWS_PER_PRODUCT], rotation, out=out[begin : begin + _ROWS_PER_PRODUCT])
        return out

    def to_ground(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 2) ground positions (aligned x, y) of the (N, 3) world points."""
        return self.to_aligned(points_world)[:, :2]

    def cell_contains(self, cell: Cell, points_world: np.ndarray) -> np.ndarray:
        """Boolean mask of the (N, 3) world points whose ground position lies in the (half-open) ``cell``."""
        return cell.contains(self.to_ground(points_world))

    def same_as(self, other: GroundFrame) -> bool:
        """Whether both are the one frame of a split (equal up to the rounding of a JSON round trip)."""
        return bool(np.allclose(self.world_to_aligned, other.world_to_aligned, rtol=0.0, atol=1e-9))

    def to_list(self) -> list[list[float]]:
        return self.world_to_aligned.tolist()

    @staticmethod
    def from_list(rows: Any) -> GroundFrame:
        """The frame of a JSON 3 x 3 matrix; ValueError for anything else."""
        matrix = np.asarray(rows, dtype=np.float64)
        if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"a finite 3 x 3 matrix expected, found shape {matrix.shape}")
        return GroundFrame(matrix)


@dataclass(frozen=True)
class PatchDescription:
    """One patch as the split described it in ``pN/patch.json`` (the file's keys in brackets where they differ).

    ``images_dir`` is the reference as stored: relative to the patch folder when the split could (so the
    workspace can move), absolute otherwise; :meth:`images_folder` resolves it.
    """

    id: str                              # the patch id, also the name of its folder
    core_cell: Cell                      # the ground the patch owns (cells of a split tile the plane)
    expanded_cell: Cell                  # the core cell grown by split.overlap (the core cell itself at overlap 0)
    ground: GroundFrame                  # [world_to_aligned] the frame the cells are drawn in
    images_dir: str                      # the scene's images folder (no copies are made)
    image_names: tuple[str, ...]         # the images of the patch model, in the scene model's order
    heldout_image_names: tuple[str, ...] # its images held out for evaluation scene-wide: never trained on
    num_cameras: int                     # images of the patch model
    num_points: int                      # points of the patch model
    num_core_cameras: int                # camera centres inside the core cell
    num_core_points: int                 # points inside the core cell
    cameras_inside_expanded: int         # camera centres inside the expanded cell
    cameras_by_visibility: int           # cameras outside it taken because they see enough of the core
    cameras_dropped_by_cap: int          # cameras left out by split.max_cameras_per_patch
    statistics: dict                     # [stats] validation statistics of the patch's own region
                                         # (patchsplat.validate.stats, as its to_dict writes them)

    def images_folder(self, patch_dir: Path) -> Path:
        """The images folder this patch (in ``patch_dir``) references."""
        if os.path.isabs(self.images_dir):
            return Path(self.images_dir)
        return (Path(patch_dir) / self.images_dir).resolve()

    def core_contains(self, points_world: np.ndarray) -> np.ndarray:
        """Boolean mask of the (N, 3) world points the patch owns: those over its core cell."""
        return self.ground.cell_contains(self.core_cell, points_world)

    def training_image_names(self) -> set[str]:
        """The images the patch trains on: its images less the held-out ones."""
        return set(self.image_names) - set(self.heldout_image_names)

    def split_row(self) -> dict:
        """The patch's row of split.json: its cells, counts and statistics (patch.json holds these and more)."""
        return {key: value for key, value in self.to_json().items() if key in _SPLIT_ROW_KEYS}

    def to_json(self) -> dict:
        """The content of patch.json (keys in the order the split has always written them)."""
        return {
            "id": self.id,
            "core_cell": self.core_cell.to_list(),
            "expanded_cell": self.expanded_cell.to_list(),
            **{key: getattr(self, key) for key in _COUNT_KEYS},
            "stats": self.statistics,
            "world_to_aligned": self.ground.to_list(),
            "images_dir": self.images_dir,
            "image_names": list(self.image_names),
            "heldout_image_names": list(self.heldout_image_names),
        }

    def save(self, patch_dir: Path) -> None:
        """Write ``patch_dir/patch.json`` (atomically)."""
        write_json(Path(patch_dir) / PATCH_FILE, self.to_json())

    @staticmethod
    def load(patch_dir: Path) -> PatchDescription:
        """``patch_dir/patch.json``; one InputError line naming the file (and the key) for a missing or damaged one."""
        path = Path(patch_dir) / PATCH_FILE
        if not path.exists():
            raise InputError(patch_dir, f"not a patch folder (no {PATCH_FILE}): run the split first", kind="missing_file")
        content = read_json_object(path, "patch description", _REQUIRED_KEYS)
        field = _FieldReader(path, content)
        return PatchDescription(
            id=field("id", _text),
            core_cell=field("core_cell", _cell),
            expanded_cell=field("expanded_cell", _cell),
            ground=field("world_to_aligned", GroundFrame.from_list),
            images_dir=field("images_dir", _text),
            image_names=field("image_names", _names),
            heldout_image_names=field("heldout_image_names", _names),
            **{key: field(key, _count) for key in _COUNT_KEYS},
            statistics=field("stats", _mapping),
        )


_COUNT_KEYS = ("num_cameras", "num_points", "num_core_cameras", "num_core_points", "cameras_inside_expanded",
               "cameras_by_visibility", "cameras_dropped_by_cap")
_SPLIT_ROW_KEYS = ("id", "core_cell", "expanded_cell", *_COUNT_KEYS, "stats")
# Checked in this order: the keys the stages read first, so a damaged file names the one that matters.
_REQUIRED_KEYS = ("core_cell", "world_to_aligned", "images_dir", "heldout_image_names", "id", "expanded_cell",
                  "image_names", *_COUNT_KEYS, "stats")


@dataclass(frozen=True)
class _FieldReader:
    """Converts one key of a patch.json; a value of the wrong shape is an InputError naming the file and key."""

    path: Path
    content: dict

    def __call__(self, key: str, convert: Callable[[Any], Any]) -> Any:
        try:
            return convert(self.content[key])
        except (TypeError, ValueError) as error:
            raise InputError(self.path, f"patch description's {key!r} is not valid ({error}); rerun the split",
                             kind="corrupt_file") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"text expected, found {type(value).__name__}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a count expected, found {value!r}")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise TypeError("a list of image names expected")
    return tuple(value)


def _mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"a JSON object expected, found {type(value).__name__}")
    return value


def _cell(value: Any) -> Cell:
    """A cell of its JSON [x_min, x_max, y_min, y_max] (None for an infinite side)."""
    if not isinstance(value, list) or len(value) != 4 or not all(v is None or isinstance(v, (int, float)) for v in value):
        raise ValueError("[x_min, x_max, y_min, y_max] expected (numbers, or null for an infinite side)")
    return Cell.from_list(value)


@dataclass(frozen=True)
class SplitLayout:
    """The patches of one split, in patch-number order, and the ground frame they all share."""

    ground: GroundFrame
    patches: tuple[PatchDescription, ...]   # p0, p1, ... (numbers in order, as the split numbered them)

    @property
    def ids(self) -> list[str]:
        return [patch.id for patch in self.patches]

    def core_owners(self, points_world: np.ndarray) -> list[str | None]:
        """For each of the (N, 3) world points: the id of the patch whose core cell holds it on the ground.

        Cells are half-open ([x_min, x_max) x [y_min, y_max)), so a point on a shared edge belongs to one
        patch only. If cells overlapped, the first patch would win; a point in no cell (possible only when
        the cells do not tile the plane) gets None.
        """
        ground = self.ground.to_ground(points_world)
        owners: list[str | None] = [None] * len(ground)
        for patch in self.patches:
            for index in np.flatnonzero(patch.core_cell.contains(ground)):
                if owners[index] is None:
                    owners[index] = patch.id
        return owners

    def save(self, patches_dir: Path) -> None:
        """Write each patch's description into ``patches_dir/<id>/patch.json``."""
        for patch in self.patches:
            patch.save(Path(patches_dir) / patch.id)

    @staticmethod
    def load(patches_dir: Path) -> SplitLayout:
        """The patches of ``patches_dir``: every ``pN`` folder is a patch and holds its patch.json.

        InputError for a missing folder, one without patches, a patch without (or with a damaged)
        description, one whose id is not its folder's name, and patches whose frames differ.
        """
        patches_dir = Path(patches_dir)
        if not patches_dir.is_dir():
            raise InputError(patches_dir, "patches folder not found: run the split first", kind="missing_file")
        ids = patch_ids_in(patches_dir)
        if not ids:
            raise InputError(patches_dir, f"holds no patch (pN/{PATCH_FILE}): run the split first", kind="missing_file")
        patches = tuple(PatchDescription.load(patches_dir / patch_id) for patch_id in ids)
        ground = patches[0].ground
        for folder, patch in zip(ids, patches):
            path = patches_dir / folder / PATCH_FILE
            if patch.id != folder:
                raise InputError(path, f"describes patch {patch.id!r}, not its folder's {folder!r}; rerun the split",
                                 kind="corrupt_file")
            if not patch.ground.same_as(ground):
                raise InputError(path, "world_to_aligned differs from the other patches' (they must come from one split)",
                                 kind="corrupt_file")
        return SplitLayout(ground, patches)
