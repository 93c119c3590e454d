"""Structural checks of COLMAP binary model files, in plain Python, before pycolmap sees them.

Why: pycolmap 4.2.1 trusts the counts in a binary file. Measured on a 77-image model
(see the validation notes in the project report):

- a truncated or garbled ``points3D.bin`` makes it allocate until ``std::bad_alloc``
  (or, without a memory limit, until the machine runs out of memory);
- a 4-byte ``images.bin`` or a garbled ``frames.bin`` makes it loop forever;
- a file short by one byte, or with extra bytes appended, is accepted silently
  (one observation too many for a truncated ``images.bin``).

So every binary file is walked record by record here first: known camera model ids,
counts that fit in the file, names terminated, and records that consume the file
exactly. ``cameras``, ``images``, ``rigs`` and ``frames`` are small (a record per
camera / image). ``points3D.bin`` is walked with one ``struct`` read per point (about
0.3 s per million points) through ``mmap``; the ids, coordinates and track lengths
are then gathered with numpy at the record offsets (~0.05 s), so the validator gets
float64 coordinates without a per-point Python object.

The layouts are :mod:`.layout`'s (COLMAP's ``reconstruction_io_binary.cc``).
"""

from __future__ import annotations

import array
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchsplat.colmap_io.layout import (
    CAMERA_HEAD,
    CAMERA_PARAM_BYTES,
    COUNT,
    DATA_ID,
    FRAME_HEAD,
    IMAGE_HEAD,
    POINT2D_BYTES,
    POINT_HEAD_BYTES,
    POINT_ID_AT,
    POINT_TRACK_LENGTH_AT,
    POINT_XYZ_AT,
    RIG_HEAD,
    RIG_SENSOR_POSE_BYTES,
    SENSOR,
    SENSOR_TYPES,
    TRACK_ELEMENT_BYTES,
    CameraRecord,
    camera_models,
)


class CorruptFile(Exception):
    """``path`` is not a well-formed COLMAP file; ``problem`` says where and why."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _read_count(data, path: Path, what: str, min_record_bytes: int) -> int:
    if len(data) < COUNT.size:
        raise CorruptFile(path, f"{len(data)} bytes: too short to hold the number of {what}")
    (count,) = COUNT.unpack_from(data, 0)
    if COUNT.size + count * min_record_bytes > len(data):
        raise CorruptFile(path, f"says it holds {count} {what} but its {len(data)} bytes cannot hold that many (truncated or corrupt)")
    return count


def _check_consumed(path: Path, offset: int, size: int, what: str) -> None:
    if offset != size:
        raise CorruptFile(path, f"{size - offset} unexpected bytes after the last of the {what} (corrupt, or appended data)")


def walk_cameras(path: Path) -> dict[int, CameraRecord]:
    """Walk ``cameras.bin``: every model id known, every record complete, nothing left over."""
    return walk_camera_bytes(path.read_bytes(), path)


def walk_camera_bytes(data: bytes, path: Path) -> dict[int, CameraRecord]:
    """:func:`walk_cameras` on the file's bytes (``path`` names it in errors)."""
    count = _read_count(data, path, "cameras", CAMERA_HEAD.size)
    models = camera_models().by_id
    cameras: dict[int, CameraRecord] = {}
    offset = COUNT.size
    for index in range(count):
        if offset + CAMERA_HEAD.size > len(data):
            raise CorruptFile(path, f"truncated in camera record {index + 1} of {count}")
        camera_id, model_id, width, height = CAMERA_HEAD.unpack_from(data, offset)
        if model_id not in models:
            raise CorruptFile(path, f"camera record {index + 1} (id {camera_id}) has unknown camera model id {model_id} (corrupt file)")
        model = models[model_id]
        params_at = offset + CAMERA_HEAD.size
        offset = params_at + CAMERA_PARAM_BYTES * model.num_params
        if offset > len(data):
            raise CorruptFile(path, f"truncated in the parameters of camera {camera_id}")
        if camera_id in cameras:
            raise CorruptFile(path, f"camera id {camera_id} appears twice (corrupt file)")
        params = struct.unpack_from(f"<{model.num_params}d", data, params_at)
        cameras[camera_id] = CameraRecord(camera_id, model.name, width, height, params)
    _check_consumed(path, offset, len(data), "cameras")
    return cameras


@dataclass(frozen=True)
class ImagesWalk:
    image_ids: tuple[int, ...]
    camera_ids: tuple[int, ...]
    num_points2D: tuple[int, ...]
    names: tuple[str, ...] = ()
    poses: tuple[tuple[float, ...], ...] = ()   # qw qx qy qz tx ty tz (cam_from_world)
    points2D_at: tuple[int, ...] = ()           # byte offset of each image's 2D points


def walk_images(path: Path) -> ImagesWalk:
    """Walk ``images.bin`` header by header, skipping each image's 2D points without reading them."""
    min_record = IMAGE_HEAD.size + 1 + COUNT.size  # empty name, no points
    image_ids: list[int] = []
    camera_ids: list[int] = []
    num_points: list[int] = []
    names: list[str] = []
    poses: list[tuple[float, ...]] = []
    points_at: list[int] = []
    with _mapped(path) as data:
        size = len(data)
        count = _read_count(data, path, "images", min_record)
        offset = COUNT.size
        seen: set[int] = set()
        for index in range(count):
            if offset + IMAGE_HEAD.size > size:
                raise CorruptFile(path, f"truncated in image record {index + 1} of {count}")
            fields = IMAGE_HEAD.unpack_from(data, offset)
            image_id, camera_id = fields[0], fields[8]
            offset += IMAGE_HEAD.size
            name_end = data.find(b"\x00", offset)
            if name_end < 0:
                raise CorruptFile(path, f"truncated in the name of image {image_id}")
            try:
                name = data[offset:name_end].decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptFile(path, f"the name of image {image_id} is not valid UTF-8 (corrupt file)") from None
            offset = name_end + 1
            if offset + COUNT.size > size:
                raise CorruptFile(path, f"truncated after the name of image {image_id}")
            (points2d,) = COUNT.unpack_from(data, offset)
            offset += COUNT.size + POINT2D_BYTES * points2d
            if offset > size:
                raise CorruptFile(path, f"image {image_id} says it has {points2d} 2D points but the file ends before them (truncated or corrupt)")
            if image_id in seen:
                raise CorruptFile(path, f"image id {image_id} appears twice (corrupt file)")
            seen.add(image_id)
            image_ids.append(image_id)
            camera_ids.append(camera_id)
            num_points.append(points2d)
            names.append(name)
            poses.append(fields[1:8])
            points_at.append(offset - POINT2D_BYTES * points2d)
        _check_consumed(path, offset, size, "images")
    return ImagesWalk(tuple(image_ids), tuple(camera_ids), tuple(num_points), tuple(names), tuple(poses), tuple(points_at))


def walk_rigs(path: Path) -> int:
    """Walk ``rigs.bin`` (COLMAP >= 3.12); return the number of rigs."""
    data = path.read_bytes()
    count = _read_count(data, path, "rigs", RIG_HEAD.size)
    offset = COUNT.size
    try:
        for index in range(count):
            rig_id, num_sensors = RIG_HEAD.unpack_from(data, offset)
            offset += RIG_HEAD.size
            for sensor in range(num_sensors):
                sensor_type, _ = SENSOR.unpack_from(data, offset)
                if sensor_type not in SENSOR_TYPES:
                    raise CorruptFile(path, f"rig {rig_id} has unknown sensor type {sensor_type} (corrupt file)")
                offset += SENSOR.size
                if sensor > 0:  # every sensor but the reference one carries an optional pose
                    has_pose = data[offset]
                    offset += 1 + (RIG_SENSOR_POSE_BYTES if has_pose else 0)
            if offset > len(data):
                raise struct.error
    except (struct.error, IndexError):
        raise CorruptFile(path, f"truncated in rig record {index + 1} of {count}") from None
    _check_consumed(path, offset, len(data), "rigs")
    return count


def walk_frames(path: Path) -> int:
    """Walk ``frames.bin`` (COLMAP >= 3.12); return the number of frames."""
    with _mapped(path) as data:
        count = _read_count(data, path, "frames", FRAME_HEAD.size)
        offset = COUNT.size
        for index in range(count):
            if offset + FRAME_HEAD.size > len(data):
                raise CorruptFile(path, f"truncated in frame record {index + 1} of {count}")
            fields = FRAME_HEAD.unpack_from(data, offset)
            frame_id, num_data = fields[0], fields[-1]
            offset += FRAME_HEAD.size
            end = offset + DATA_ID.size * num_data
            if end > len(data):
                raise CorruptFile(path, f"frame {frame_id} says it has {num_data} data ids but the file ends before them (truncated or corrupt)")
            for data_offset in range(offset, end, DATA_ID.size):
                sensor_type, _ = SENSOR.unpack_from(data, data_offset)  # a data id starts with its sensor
                if sensor_type not in SENSOR_TYPES:
                    raise CorruptFile(path, f"frame {frame_id} has unknown sensor type {sensor_type} (corrupt file)")
            offset = end
        _check_consumed(path, offset, len(data), "frames")
    return count


@dataclass(frozen=True)
class PointArrays:
    """The 3D points of a model: ids, float64 coordinates and the total number of track elements."""

    point_ids: np.ndarray        # (N,) int64
    xyz: np.ndarray              # (N, 3) float64
    total_track_length: int
    starts: np.ndarray | None = None          # (N,) int64 byte offset of each record
    track_lengths: np.ndarray | None = None   # (N,) uint64


def read_points(path: Path) -> PointArrays:
    """Walk ``points3D.bin`` and gather ids and coordinates; raise :class:`CorruptFile` if malformed.

    The walk is the only per-record Python work; the gathers are vectorised. The
    file must be consumed exactly: size == 8 + 51 N + 8 (total track length)
    (:data:`.layout.POINT_HEAD` and :data:`.layout.TRACK_ELEMENT`).
    """
    with _mapped(path) as data:
        size = len(data)
        count = _read_count(data, path, "3D points", POINT_HEAD_BYTES)
        starts = array.array("q")
        append = starts.append
        unpack = COUNT.unpack_from
        offset = COUNT.size
        # A garbage track length makes the offset jump past the end of the file: caught at
        # once, so the loop is bounded by the file size and never trusts a count blindly.
        index = 0
        try:
            for index in range(count):
                append(offset)
                offset += POINT_HEAD_BYTES + TRACK_ELEMENT_BYTES * unpack(data, offset + POINT_TRACK_LENGTH_AT)[0]
                if offset > size:
                    break
        except struct.error:
            raise CorruptFile(path, f"truncated in 3D point record {index + 1} of {count}") from None
        if offset > size:
            track_length = (offset - starts[-1] - POINT_HEAD_BYTES) // TRACK_ELEMENT_BYTES
            raise CorruptFile(
                path,
                f"3D point record {index + 1} of {count} has a track of {track_length} elements, running "
                f"{offset - size} byte(s) past the end of the file (truncated or corrupt)",
            )
        _check_consumed(path, offset, size, "3D points")
        offsets = np.frombuffer(starts, dtype=np.int64)
        buffer = np.frombuffer(data, dtype=np.uint8)
        try:
            point_ids, xyz, track_lengths = _gather_point_headers(buffer, offsets)
        finally:
            del buffer  # release the export so the mapping can close
    return PointArrays(point_ids, xyz, int(track_lengths.sum()), offsets.copy(), track_lengths)


_GATHER_CHUNK = 1 << 18  # records per gather: bounds the temporary copy to ~13 MB


def _gather_point_headers(buffer: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, xyz and track lengths of the records starting at ``starts``.

    A zero-copy sliding window over the bytes lets one fancy-index copy the fixed
    51-byte head (:data:`.layout.POINT_HEAD`) of every record (fast row copies; unaligned
    per-value gathers are several times slower), then the fields are sliced out and reinterpreted.
    """
    from numpy.lib.stride_tricks import as_strided

    count = len(starts)
    ids = np.empty(count, dtype=np.int64)
    xyz = np.empty((count, 3), dtype=np.float64)
    track_lengths = np.empty(count, dtype=np.uint64)
    if count == 0:
        return ids, xyz, track_lengths
    windows = as_strided(
        buffer, shape=(len(buffer) - POINT_HEAD_BYTES + 1, POINT_HEAD_BYTES), strides=(1, 1), writeable=False
    )
    for begin in range(0, count, _GATHER_CHUNK):
        end = min(begin + _GATHER_CHUNK, count)
        heads = windows[starts[begin:end]]
        ids[begin:end] = np.ascontiguousarray(heads[:, POINT_ID_AT : POINT_ID_AT + 8]).view("<u8").ravel()
        xyz[begin:end] = np.ascontiguousarray(heads[:, POINT_XYZ_AT : POINT_XYZ_AT + 24]).view("<f8")
        track_lengths[begin:end] = np.ascontiguousarray(heads[:, POINT_TRACK_LENGTH_AT : POINT_TRACK_LENGTH_AT + 8]).view("<u8").ravel()
    return ids, xyz, track_lengths


class _mapped:
    """Context manager: the file's bytes through a read-only mmap (an empty file gives b'')."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._map: mmap.mmap | None = None

    def __enter__(self):
        self._file = open(self.path, "rb")
        try:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            return b""
        return self._map

    def __exit__(self, *exc) -> None:
        if self._map is not None:
            self._map.close()
        if self._file is not None:
            self._file.close()


def header_count(path: Path) -> int | None:
    """The record count a binary model file starts with (8 bytes), or None if unreadable. Cheap."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(COUNT.size)
    except OSError:
        return None
    return COUNT.unpack(head)[0] if len(head) == COUNT.size else None
