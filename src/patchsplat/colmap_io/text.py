"""COLMAP text models: their headers, their cameras, and the broken file and line of a damaged one.

pycolmap's text reader fails with messages such as ``Check failed: line_stream >>
point3D_id >> ...`` that name neither the file nor the line, and it accepts some
damage silently (measured with pycolmap 4.2.1: a ``points3D.txt`` cut in half reads
as a model with half the points; an empty one as a model with none). So:

- :func:`header_count` reads the ``# Number of ...: N`` line COLMAP writes at the top
  of each file (cheap: the first lines only), to compare with what was read;
- :func:`read_cameras` reads ``cameras.txt`` as the same :class:`~.layout.CameraRecord` the
  binary walk gives (cameras are few), checked against the camera model table;
- :func:`diagnose_text_model` re-reads the files line by line in Python, only after
  pycolmap has failed, and returns the first file and line that is malformed or
  refers to a camera, image or 2D point that does not exist.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

from patchsplat.colmap_io.binary import CorruptFile
from patchsplat.colmap_io.layout import CameraRecord, camera_models

_HEADER = re.compile(r"^#\s*Number of (cameras|images|points|rigs|frames)\s*:\s*(\d+)")
_HEADER_NOUN = {"cameras": "cameras", "images": "images", "points3D": "points", "rigs": "rigs", "frames": "frames"}
_HEADER_LINES = 10


def header_count(path: Path, stem: str) -> int | None:
    """The count in the ``# Number of <noun>: N`` header of a COLMAP text file, if it has one."""
    noun = _HEADER_NOUN[stem]
    with open(path, encoding="utf-8", errors="replace") as handle:
        for _, line in zip(range(_HEADER_LINES), handle):
            match = _HEADER.match(line.strip())
            if match and match.group(1) == noun:
                return int(match.group(2))
    return None


class _Malformed(Exception):
    pass


def _int(token: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise _Malformed(f"{what} {token!r} is not an integer") from None


def _float(token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise _Malformed(f"{what} {token!r} is not a number") from None
    if not math.isfinite(value):
        # COLMAP's reader does not accept 'nan' or 'inf' in a text model.
        raise _Malformed(f"{what} is {token!r}")
    return value


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.strip()


def read_cameras(path: Path) -> dict[int, CameraRecord]:
    """Read ``cameras.txt``: camera id -> its record; :class:`CorruptFile` naming the line of a malformed one."""
    try:
        return _cameras(path)
    except _Malformed as problem:
        raise CorruptFile(path, str(problem)) from None


def _cameras(path: Path) -> dict[int, CameraRecord]:
    models = camera_models().by_name
    cameras: dict[int, CameraRecord] = {}
    for number, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        try:
            tokens = line.split()
            if len(tokens) < 4:
                raise _Malformed(f"{len(tokens)} fields; expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...")
            camera_id = _int(tokens[0], "camera id")
            model = tokens[1]
            if model not in models:
                raise _Malformed(f"unknown camera model {model!r}")
            width = _int(tokens[2], "width")
            height = _int(tokens[3], "height")
            params = tuple(_float(t, "parameter") for t in tokens[4:])
            if len(params) != models[model].num_params:
                raise _Malformed(f"{model} takes {models[model].num_params} parameters, found {len(params)}")
            if camera_id in cameras:
                raise _Malformed(f"camera id {camera_id} appears twice")
        except _Malformed as problem:
            raise _Malformed(f"line {number}: {problem}") from None
        cameras[camera_id] = CameraRecord(camera_id, model, width, height, params)
    return cameras


def _image_points(path: Path, cameras: dict[int, CameraRecord]) -> dict[int, int]:
    """Image id -> number of 2D points, checking both lines of every image."""
    points: dict[int, int] = {}
    lines = _lines(path)
    for number, line in lines:
        if not line or line.startswith("#"):
            continue
        try:
            tokens = line.split()
            if len(tokens) < 10:
                raise _Malformed(f"{len(tokens)} fields; expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
            image_id = _int(tokens[0], "image id")
            for token in tokens[1:8]:
                _float(token, "pose value")
            camera_id = _int(tokens[8], "camera id")
            if camera_id not in cameras:
                raise _Malformed(f"image {image_id} uses camera {camera_id}, which the cameras file does not define")
            if image_id in points:
                raise _Malformed(f"image id {image_id} appears twice")
        except _Malformed as problem:
            raise _Malformed(f"line {number}: {problem}") from None
        # COLMAP reads the next physical line as this image's 2D points (it may be empty).
        next_line = next(lines, None)
        if next_line is None:
            raise _Malformed(f"line {number}: image {image_id} has no 2D points line (the file is truncated)")
        number, line = next_line
        tokens = line.split()
        try:
            if len(tokens) % 3:
                raise _Malformed(f"{len(tokens)} values; the 2D points line holds X Y POINT3D_ID triplets")
            for index in range(0, len(tokens), 3):
                _float(tokens[index], "2D x")
                _float(tokens[index + 1], "2D y")
                _int(tokens[index + 2], "3D point id")
        except _Malformed as problem:
            raise _Malformed(f"line {number}: {problem}") from None
        points[image_id] = len(tokens) // 3
    return points


def _check_points(path: Path, image_points: dict[int, int]) -> None:
    seen: set[int] = set()
    for number, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        try:
            tokens = line.split()
            if len(tokens) < 8 or (len(tokens) - 8) % 2:
                raise _Malformed(f"{len(tokens)} fields; expected POINT3D_ID X Y Z R G B ERROR then IMAGE_ID POINT2D_IDX pairs")
            point_id = _int(tokens[0], "point id")
            for token in tokens[1:4]:
                _float(token, "coordinate")
            for token in tokens[4:7]:
                if not 0 <= _int(token, "colour") <= 255:
                    raise _Malformed(f"colour {token} is outside 0..255")
            _float(tokens[7], "error")
            for index in range(8, len(tokens), 2):
                image_id = _int(tokens[index], "track image id")
                point2d = _int(tokens[index + 1], "track 2D point index")
                if image_id not in image_points:
                    raise _Malformed(f"point {point_id} is seen by image {image_id}, which the images file does not define")
                if not 0 <= point2d < image_points[image_id]:
                    raise _Malformed(f"point {point_id} refers to 2D point {point2d} of image {image_id}, which has {image_points[image_id]}")
            if point_id in seen:
                raise _Malformed(f"point id {point_id} appears twice")
        except _Malformed as problem:
            raise _Malformed(f"line {number}: {problem}") from None
        seen.add(point_id)


def diagnose_text_model(files: dict[str, Path]) -> tuple[Path, str] | None:
    """The first (file, 'line N: problem') found in the text model ``files`` (stem -> path), or None.

    Checks cameras, then images, then points3D, the order pycolmap reads them in.
    Reads every line: call it only after pycolmap has rejected the model.
    """
    stem = "cameras"
    try:
        cameras = _cameras(files[stem])
        if not cameras:
            raise _Malformed("holds no cameras (empty or truncated)")
        stem = "images"
        image_points = _image_points(files[stem], cameras)
        if not image_points:
            raise _Malformed("holds no images (empty or truncated)")
        stem = "points3D"
        _check_points(files[stem], image_points)
    except _Malformed as problem:
        return files[stem], str(problem)
    return None
