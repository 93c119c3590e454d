"""Which folders a command may replace: only its own.

Every command writes its output folder whole and swaps it in (:func:`patchsplat.atomic.atomic_dir`),
so whatever was there before is deleted. That is safe only for a folder the command made itself.
The rule, in one place:

* the output folder must not be, contain, or lie inside one of the command's inputs;
* it is replaced only when it is absent, empty, or marked as this command's (the :data:`MARKER`
  file an earlier run left in it) and holds nothing the command does not write (at the top level, and
  for a split inside each patch folder: `patchsplat train PATCH` writes beside a patch's model);
* folders from versions before the marker (no marker file) are accepted when they hold nothing but
  what the command writes *and* the file only that command writes (its ``signature``), e.g. a
  demo scene's ``manifest.json``: a user's own COLMAP folder (``images/``, ``sparse/``) never passes.

Anything else is refused with one :class:`InputError` line naming the folder; nothing is touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from patchsplat.errors import InputError
from patchsplat.workspace import PATCH_ID_PATTERN

MARKER = ".patchsplat-output"


@dataclass(frozen=True)
class OutputKind:
    """What one command writes into its output folder."""

    command: str                      # written into the marker: who owns the folder
    entries: tuple[str, ...]          # regular expressions of the names the command writes at the top level
    signature: tuple[str, ...] = ()   # names only this command writes: one of them marks an unmarked old output
    also_replaces: tuple[str, ...] = ()  # other commands whose folders this one may take over
    nested: tuple[str, ...] | None = None  # names the command writes inside each top-level folder (None: anything)

    def writes(self, name: str) -> bool:
        return name == MARKER or any(re.fullmatch(pattern, name) for pattern in self.entries)

    def owns(self, owner: str) -> bool:
        return owner == self.command or owner in self.also_replaces


_DEMO_ENTRIES = ("images", "sparse", "ground_truth_mesh.ply", "manifest.json")
_TRAIN_ENTRIES = ("splats.ply", "heldout.png", "settings.json", "attempts.json", "metrics.json", "curve.csv")

DEMO_SCENE = OutputKind("demo-scene", _DEMO_ENTRIES, signature=("manifest.json",), also_replaces=("scene",))
SCENE = OutputKind("scene", _DEMO_ENTRIES + ("scene.json", "undistorted"), signature=("manifest.json", "scene.json"),
                   also_replaces=("demo-scene",))
UNDISTORT = OutputKind("validate --undistort", ("images", "sparse"), signature=("sparse",))  # the rule before markers
# A patch folder holds its model and description; `patchsplat train PATCH` writes its outputs beside them
# (PATCH/trained...), and a re-split must not delete those.
SPLIT = OutputKind("split", (PATCH_ID_PATTERN, "split.json", "layout.png"), signature=("split.json",),
                   nested=("sparse", "patch.json"))
PREPARE = OutputKind("prepare", ("init.npz", "prepare.json"), signature=("prepare.json",))
TRAIN = OutputKind("train", _TRAIN_ENTRIES, signature=("metrics.json", "attempts.json"))
MERGE = OutputKind("merge", (r"splats\.ply", r"splats\.(splat|spz|glb)", "merge.json"), signature=("merge.json",))
MESH = OutputKind("mesh", ("mesh.ply", "mesh.glb", "mesh.json"), signature=("mesh.json",))


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def refuse_overlap(target: str | Path, inputs: Iterable[str | Path], what: str = "output folder") -> None:
    """The output must not be an input, hold one (it would be deleted) or lie inside one (it would change it)."""
    out = _absolute(target)
    for given in inputs:
        source = _absolute(given)
        if out == source:
            problem = "is also an input of this command"
        elif out in source.parents:
            problem = f"holds the input {given}"
        elif source in out.parents:
            problem = f"lies inside the input {given}"
        else:
            continue
        raise InputError(target, f"{problem}; it would be overwritten: give a separate {what}", kind="bad_output")


def _refuse_file_above(target: Path) -> None:
    """An output under a regular file (``notes.txt/demo``) cannot be made: say so rather than 'File exists'."""
    for ancestor in target.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise InputError(ancestor, f"is a file, not a folder: {target} cannot be written inside it",
                                 kind="bad_output")
            return


def _owner(folder: Path) -> str | None:
    marker = folder / MARKER
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else None


def check_replaceable(target: str | Path, kind: OutputKind, inputs: Iterable[str | Path] = ()) -> None:
    """Raise :class:`InputError` unless ``kind``'s command may replace ``target`` (see the module docstring)."""
    target = Path(target)
    refuse_overlap(target, inputs)
    _refuse_file_above(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise InputError(target, f"exists and is not a folder `{kind.command}` wrote; give a new folder", kind="bad_output")
    names = sorted(entry.name for entry in target.iterdir())
    if not names:
        return
    owner = _owner(target)
    if owner is not None and not kind.owns(owner):
        raise InputError(target, f"holds the output of `{owner}`, not of `{kind.command}`: give another folder",
                         kind="bad_output")
    # Even in the command's own folder: whatever it did not write there (a user's notes, another command's
    # output put inside) would be deleted with it.
    foreign = [name for name in names if not kind.writes(name) and not _leftover(name)] + _foreign_nested(target, kind)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise InputError(target, f"holds things `{kind.command}` did not write ({shown}); it would be replaced: "
                                 "move them, or give a new or empty folder", kind="bad_output")
    if owner is None and not any(name in names for name in kind.signature):
        raise InputError(target, f"is not an earlier output of `{kind.command}` (no {MARKER}); it would be replaced: "
                                 "give a new or empty folder", kind="bad_output")


def _leftover(name: str) -> bool:
    """A temporary file or folder of patchsplat.atomic (a killed run's): swept, never a user's."""
    return name.startswith(".") and (name.endswith((".tmp", ".old")) or ".tmp." in name)


def _foreign_nested(target: Path, kind: OutputKind) -> list[str]:
    if kind.nested is None:
        return []
    return [f"{folder.name}/{entry.name}" for folder in sorted(target.iterdir())
            if folder.is_dir() and not folder.is_symlink() and kind.writes(folder.name) and folder.name != MARKER
            for entry in sorted(folder.iterdir())
            if entry.name not in kind.nested and not _leftover(entry.name)]


def mark(folder: Path, kind: OutputKind) -> None:
    """Leave the owner's name in a folder the command wrote (it becomes part of the output)."""
    (folder / MARKER).write_text(kind.command + "\n", encoding="utf-8")


# ------------------------------------------------------------------ single files

# Written into every PNG a command writes at a path the user chose (PNG text chunk "Software"),
# so that the next run knows the file is its own.
PNG_SOFTWARE = "patchsplat"
_LARGEST_REPORT = 64 * 2**20  # a report patchsplat writes is a few kB; a larger file is not one


def is_validation_report(path: Path) -> bool:
    """A JSON object with the keys every ``patchsplat validate`` report has had."""
    import json

    try:
        if path.stat().st_size > _LARGEST_REPORT:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"report_version", "scene_dir", "num_images"} <= data.keys()


def is_patchsplat_png(path: Path) -> bool:
    """A PNG whose Software text chunk says patchsplat wrote it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and str(image.info.get("Software", "")).startswith(PNG_SOFTWARE)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):  # PIL: SyntaxError for a damaged PNG
        return False


@dataclass(frozen=True)
class OutputFile:
    """What one command writes at a file path the user gives."""

    command: str
    what: str                          # "validation report", "comparison PNG": said in the refusal
    is_own: Callable[[Path], bool]     # recognises a file an earlier run of the command wrote


VALIDATION_REPORT = OutputFile("validate", "validation report", is_validation_report)
COMPARISON_PNG = OutputFile("compare", "comparison PNG", is_patchsplat_png)


def check_replaceable_file(target: str | Path, kind: OutputFile, inputs: Iterable[str | Path] = ()) -> None:
    """Raise :class:`InputError` unless ``target`` is absent or a file an earlier run of the command wrote."""
    target = Path(target)
    refuse_overlap(target, inputs, what="output file")
    _refuse_file_above(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink():
        raise InputError(target, f"is a folder; give the path of the {kind.what} file", kind="bad_output")
    if target.is_symlink() or not target.is_file() or not kind.is_own(target):
        raise InputError(target, f"exists and is not a {kind.what} `{kind.command}` wrote; it would be overwritten: "
                                 "give a new path (or delete the file first)", kind="bad_output")
