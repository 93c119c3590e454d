"""Export Gaussians to the formats viewers load: PLY, .splat, SPZ and glTF 2.0 (.glb).

One entry, :func:`export_splats`, for every format; one module per format says what it stores and how:

* ``ply``   the INRIA layout :mod:`patchsplat.splat_io` writes (every value, float32),
* ``splat`` antimatter15's 32-byte records (:mod:`.splat`): no SH beyond degree 0, 8-bit colour and rotation,
* ``spz``   Niantic's compressed format, written by the gsply library (:mod:`.spz`),
* ``gltf``  a .glb with the KHR_gaussian_splatting extension, written with pygltflib (:mod:`.gltf`), turned
            into glTF's y-up frame as @playcanvas/splat-transform turns a PLY (half a turn about z).

The other formats keep the scene's frame, as the PLY.

Every format drops a Gaussian that has a value not finite in float32, alone, as the PLY writer does
(and, where the format stores unit quaternions, one whose quaternion has length 0), and says which.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchsplat.config import ExportFormat
from patchsplat.errors import InputError

FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)
# The file extension each format is written with.
EXTENSIONS = {"ply": ".ply", "splat": ".splat", "spz": ".spz", "gltf": ".glb"}


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote."""

    path: Path
    format: str
    n_written: int
    dropped_indices: tuple[int, ...]  # indices into the Gaussians given, of those not written

    @property
    def n_dropped(self) -> int:
        return len(self.dropped_indices)


def _writer(format: str) -> Callable[..., Any]:
    """The format's writer, imported on demand: gsply (SPZ) pulls in numba, which the others do not need."""
    if format == "ply":
        from patchsplat.export.ply import write_ply

        return write_ply
    if format == "splat":
        from patchsplat.export.splat import write_splat

        return write_splat
    if format == "spz":
        from patchsplat.export.spz import write_spz

        return write_spz
    if format == "gltf":
        from patchsplat.export.gltf import write_glb

        return write_glb
    raise ValueError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")


def export_splats(gaussians: Mapping[str, Any], format: str, out: str | Path) -> ExportResult:
    """Write ``gaussians`` (the raw fields of :mod:`patchsplat.gaussians`, tensors or arrays) to ``out`` as
    ``format`` (one of :data:`FORMATS`), atomically. Raises ValueError for an unknown format or wrong shapes."""
    write = _writer(format)
    dropped = write(gaussians, Path(out))
    return ExportResult(Path(out), format, _count(gaussians) - len(dropped), tuple(int(i) for i in dropped))


def _count(gaussians: Mapping[str, Any]) -> int:
    return int(gaussians["means"].shape[0])


def format_of(out: Path, format: str | None) -> str:
    """The format to write ``out`` in: ``format`` if given (``out`` must then end in its extension), else the one
    ``out``'s extension names. Raises InputError (naming ``out``) when neither says."""
    by_extension = {extension: name for name, extension in EXTENSIONS.items()}
    named = by_extension.get(out.suffix.lower())
    if format is None:
        if named is None:
            raise InputError(out, f"has no extension of a format ({', '.join(EXTENSIONS.values())}): give --format "
                                  "or one of those", kind="bad_output")
        return named
    if format not in EXTENSIONS:
        raise InputError("--format", f"{format!r} is not a format: one of {', '.join(FORMATS)}", kind="bad_argument")
    if out.suffix.lower() != EXTENSIONS[format]:
        raise InputError(out, f"does not end in {EXTENSIONS[format]}, the extension of --format {format}", kind="bad_output")
    return format


def check_export_target(out: Path, format: str, inputs: Iterable[Path] = ()) -> None:
    """Raise InputError unless ``out`` may be written: absent, or a PLY or .glb an earlier export wrote (their
    headers say so). A .splat or .spz has no place for such a mark, so an existing one is never replaced."""
    from patchsplat.output_folder import OutputFile, check_replaceable_file

    if format in ("splat", "spz"):
        from patchsplat.output_folder import refuse_overlap

        refuse_overlap(out, inputs, what="output file")
        if out.exists() or out.is_symlink():
            raise InputError(out, f"exists, and a {EXTENSIONS[format]} file carries no mark of who wrote it, so export "
                                  "never replaces one: give a new path (or delete the file first)", kind="bad_output")
        return
    if format == "ply":
        from patchsplat.export.ply import is_own_ply as is_own
    else:
        from patchsplat.export.gltf import is_own_glb as is_own
    check_replaceable_file(out, OutputFile("export", f"{EXTENSIONS[format]} file", is_own), inputs)


def source_splats(workspace: Path, patch: str | None = None) -> Path:
    """The trained splats.ply of ``patch`` in ``workspace``, or its merged scene. InputError when absent."""
    from patchsplat.workspace import Workspace

    if not workspace.is_dir():
        raise InputError(workspace, "is not a folder: give a patchsplat workspace (holding data/)", kind="missing_file")
    space = Workspace(workspace)
    if patch is not None:
        path = space.patch(patch).trained_dir / "splats.ply"
        if not path.is_file():
            raise InputError(path, f"patch {patch} has no trained splats: train it first", kind="missing_file")
        return path
    if not space.merged_splats.is_file():
        raise InputError(space.merged_splats, "no merged scene: run the pipeline (patchsplat repro) or merge first, "
                                              "or give --patch ID", kind="missing_file")
    return space.merged_splats


def export_file(source: Path, format: str, out: Path) -> ExportResult:
    """Read the splats PLY ``source`` and write it to ``out`` as ``format`` (the checks of
    :func:`check_export_target` first). A value the format cannot hold is an InputError naming ``source``."""
    from patchsplat.splat_io import read_splats_ply

    check_export_target(out, format, (source,))
    gaussians = read_splats_ply(source)
    try:
        return export_splats(gaussians, format, out)
    except ValueError as error:
        raise InputError(source, f"cannot be written as {format}: {error}", kind="bad_input") from error
