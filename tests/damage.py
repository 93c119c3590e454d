"""Ways to damage a small valid COLMAP scene (conftest.build_scene) one thing at a time, and the check every
bad-input test makes of the command's answer: a non-zero exit, one ``error:`` line naming the culprit, no
traceback. Shared by the bad-input tests (validate corpus, guarded reader, failures, the across-commands corpus).

A plain module (no fixtures): the mutations take the scene folder and change it in place.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

# Offsets in the binary files of a scene built by conftest.build_scene (one camera, images and points as built).
CAM = 8      # first camera record: id u32, model i32, width u64 @+8, height u64 @+16, params @+24
IMAGE = 8    # first image record: id u32, qvec @+4, tvec @+36, camera id u32 @+60, name @+64
POINT = 8    # first point record: id u64, xyz @+8, rgb @+32, error @+35, track length @+43, track @+51


def model_file(scene: Path, name: str) -> Path:
    return scene / "sparse" / "0" / name


def patch_bytes(scene: Path, name: str, offset: int, fmt: str, *values) -> None:
    """Overwrite ``values`` (packed as ``fmt``) at ``offset`` of the model file ``name``."""
    path = model_file(scene, name)
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def patched(name: str, offset: int, fmt: str, *values) -> Callable[[Path], None]:
    """:func:`patch_bytes` as a mutation of a scene."""
    return lambda scene: patch_bytes(scene, name, offset, fmt, *values)


def truncate(name: str, keep_fraction: float | None = None, *, drop: int | None = None) -> Callable[[Path], None]:
    """Cut the model file ``name`` to ``keep_fraction`` of its size, or by ``drop`` bytes."""

    def mutate(scene: Path) -> None:
        path = model_file(scene, name)
        size = path.stat().st_size
        os.truncate(path, int(size * keep_fraction) if keep_fraction is not None else size - drop)

    return mutate


def garbage_bytes(size: int) -> bytes:
    """Deterministic bytes that are no file format at all."""
    return bytes((i * 151 + 7) % 256 for i in range(size))


def garbage(name: str) -> Callable[[Path], None]:
    """Replace the model file ``name`` by as many garbage bytes."""

    def mutate(scene: Path) -> None:
        path = model_file(scene, name)
        path.write_bytes(garbage_bytes(path.stat().st_size))

    return mutate


def drop_first_point(scene: Path) -> None:
    """Remove the first 3D point record and fix the count: the images still refer to it."""
    path = model_file(scene, "points3D.bin")
    data = bytearray(path.read_bytes())
    (count,) = struct.unpack_from("<Q", data, 0)
    (track_length,) = struct.unpack_from("<Q", data, POINT + 43)
    del data[POINT : POINT + 51 + 8 * track_length]
    struct.pack_into("<Q", data, 0, count - 1)
    path.write_bytes(bytes(data))


def edit_text_line(name: str, data_line: int, edit: Callable[[str], str]) -> Callable[[Path], None]:
    """Apply ``edit`` to the ``data_line``-th non-comment line of the text model file ``name``."""

    def mutate(scene: Path) -> None:
        path = model_file(scene, name)
        lines = path.read_text().split("\n")
        data = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
        lines[data[data_line]] = edit(lines[data[data_line]])
        path.write_text("\n".join(lines))

    return mutate


def replace_token(index: int, value: str) -> Callable[[str], str]:
    """A line edit: the ``index``-th whitespace-separated token becomes ``value``."""

    def edit(line: str) -> str:
        tokens = line.split()
        tokens[index] = value
        return " ".join(tokens)

    return edit


def write_png(path: Path, width: int, height: int) -> None:
    from PIL import Image

    Image.new("RGB", (width, height), (90, 120, 150)).save(path, format="PNG")


def assert_one_line(result, *fragments: str) -> str:
    """The answer of a command that must refuse its input: a non-zero exit status, exactly one line on stderr,
    starting with ``error: `` and holding every fragment, and no traceback on stdout or stderr. ``result``: a
    ``subprocess.CompletedProcess`` (text mode) or a click/typer ``CliRunner`` result. Returns the line."""
    status = result.returncode if hasattr(result, "returncode") else result.exit_code
    stdout, stderr = result.stdout or "", result.stderr or ""
    assert status != 0, f"exit status 0\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not named in: {line}"
    return line
