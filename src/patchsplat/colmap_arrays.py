"""A COLMAP model as flat numpy arrays, for the stages that work on every point at once.

pycolmap reads and writes models; but walking ``rec.points3D`` from Python costs
~2 us per point (2 s for a million points), more than the read itself. This module
parses the binary files pycolmap (or COLMAP) wrote with vectorised numpy instead:
``images.bin`` per image (images are few), ``points3D.bin`` in one pass, using the
fact that COLMAP writes points sorted by id and that every point's track length is
the number of image observations that reference it. Both assumptions are verified;
if either fails (a hand-edited file), the arrays are taken from pycolmap instead.

Text models are converted to binary in a temporary folder first (pycolmap), so the
result does not depend on the model's format.

:func:`write_model_subset` writes a sub-model (some images, some points) the same way,
vectorised: pycolmap's only bulk way to cut a model (``crop`` + de-registering frames)
copies every image of the whole model for each cut, which made a 12-patch split of a
million-point model cost ~5x reading it. Every written model is read back by pycolmap
in the tests.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchsplat.errors import InputError

_INVALID_POINT3D_ID = np.uint64(2**64 - 1)
_POINT_HEADER_BYTES = 8 + 24 + 3 + 8 + 8  # id, xyz, rgb, error, track length
_OBSERVATION_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("point3D_id", "<u8")])


@dataclass(frozen=True)
class ModelArrays:
    """Images, points and observations of one COLMAP model.

    Observations link ``obs_image`` (an index into the image arrays) to ``obs_point``
    (an index into the point arrays); ``obs_xy`` is the 2D position in pixels.
    """

    image_ids: np.ndarray          # (M,) int64, COLMAP image ids, in file order
    image_names: tuple[str, ...]   # (M,)
    camera_ids: np.ndarray         # (M,) int64
    quaternions_wxyz: np.ndarray   # (M, 4) cam_from_world rotation
    translations: np.ndarray       # (M, 3) cam_from_world translation
    point_ids: np.ndarray          # (N,) int64, sorted
    xyz: np.ndarray                # (N, 3) float64
    rgb: np.ndarray                # (N, 3) uint8
    error: np.ndarray              # (N,) float64, mean reprojection error in pixels
    obs_image: np.ndarray          # (K,) int32
    obs_point: np.ndarray          # (K,) int32
    obs_xy: np.ndarray             # (K, 2) float64
    cameras_bin: bytes             # the model's cameras.bin as read (cameras are few)

    @property
    def rotations(self) -> np.ndarray:
        """(M, 3, 3) cam_from_world rotation matrices."""
        return quaternion_to_matrix(self.quaternions_wxyz)

    @property
    def camera_centres(self) -> np.ndarray:
        """(M, 3) camera centres in world coordinates: -R^T t."""
        return -np.einsum("mji,mj->mi", self.rotations, self.translations)

    @property
    def track_lengths(self) -> np.ndarray:
        return np.bincount(self.obs_point, minlength=len(self.point_ids))


def quaternion_to_matrix(quaternions_wxyz: np.ndarray) -> np.ndarray:
    q = quaternions_wxyz / np.linalg.norm(quaternions_wxyz, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _parse_images(path: Path) -> tuple[list, np.ndarray, np.ndarray]:
    """Image headers, and every observation's (image index, x, y, point3D id)."""
    data = path.read_bytes()
    view = memoryview(data)
    try:
        (num_images,) = struct.unpack_from("<Q", data, 0)
        offset = 8
        headers, observations, owners = [], [], []
        for index in range(num_images):
            image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = struct.unpack_from("<I7dI", data, offset)
            offset += 4 + 56 + 4
            name_end = data.index(b"\x00", offset)
            name = data[offset:name_end].decode("utf-8")
            offset = name_end + 1
            (num_points2d,) = struct.unpack_from("<Q", data, offset)
            offset += 8
            block = np.frombuffer(view[offset : offset + 24 * num_points2d], dtype=_OBSERVATION_DTYPE)
            if len(block) != num_points2d:
                raise struct.error("truncated")
            offset += 24 * num_points2d
            headers.append((image_id, name, camera_id, (qw, qx, qy, qz), (tx, ty, tz)))
            observations.append(block)
            owners.append(np.full(num_points2d, index, dtype=np.int32))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise InputError(path, "truncated or corrupt images file", kind="corrupt_file") from None
    if offset != len(data):
        raise InputError(path, f"{len(data) - offset} unexpected bytes after the last image", kind="corrupt_file")
    all_obs = np.concatenate(observations) if observations else np.zeros(0, _OBSERVATION_DTYPE)
    all_owner = np.concatenate(owners) if owners else np.zeros(0, np.int32)
    return headers, all_obs, all_owner


def _gather(buffer: np.ndarray, byte_offsets: np.ndarray, dtype: str) -> np.ndarray:
    """Read one 8-byte value at each (unaligned) byte offset without a per-byte index array.

    The buffer is viewed as 8-byte words at each of the 8 possible alignments, so
    each value is one element gather instead of 8 byte gathers.
    """
    out = np.empty(len(byte_offsets), dtype=dtype)
    alignment = byte_offsets % 8
    for shift in range(8):
        selected = np.flatnonzero(alignment == shift)
        if len(selected) == 0:
            continue
        words = buffer[shift : shift + 8 * ((len(buffer) - shift) // 8)].view(dtype)
        out[selected] = words[(byte_offsets[selected] - shift) // 8]
    return out


def _parse_points_sorted(path: Path, point_ids: np.ndarray, track_lengths: np.ndarray):
    """Vectorised parse of points3D.bin, assuming records sorted by id; None if the file says otherwise."""
    buffer = np.fromfile(path, dtype=np.uint8)
    record_sizes = _POINT_HEADER_BYTES + 8 * track_lengths.astype(np.int64)
    expected_size = 8 + int(record_sizes.sum())
    if len(buffer) != expected_size or len(buffer) < 8 or int(buffer[:8].view("<u8")[0]) != len(point_ids):
        return None
    starts = np.empty(len(record_sizes), dtype=np.int64)
    starts[0:1] = 8
    np.cumsum(record_sizes[:-1], out=starts[1:])
    starts[1:] += 8
    if not np.array_equal(_gather(buffer, starts, "<u8"), point_ids.astype(np.uint64)):
        return None
    if not np.array_equal(_gather(buffer, starts + 43, "<u8"), track_lengths.astype(np.uint64)):
        return None
    xyz = np.stack([_gather(buffer, starts + 8 + 8 * axis, "<f8") for axis in range(3)], axis=1)
    rgb = buffer[starts[:, None] + 32 + np.arange(3)]
    error = _gather(buffer, starts + 35, "<f8")
    return xyz, rgb, error


def _count_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(ids, return_inverse, return_counts) without sorting when ids are dense (COLMAP's are)."""
    if len(ids) == 0:
        return ids, ids.astype(np.int32), ids
    largest = int(ids.max())
    if ids.min() < 0 or largest > 4 * len(ids) + 1_000_000:
        return np.unique(ids, return_inverse=True, return_counts=True)
    counts = np.bincount(ids, minlength=largest + 1)
    unique_ids = np.flatnonzero(counts)
    position = np.zeros(largest + 1, dtype=np.int64)
    position[unique_ids] = np.arange(len(unique_ids))
    return unique_ids, position[ids], counts[unique_ids]


def _points_from_pycolmap(model_dir: Path, point_ids: np.ndarray):
    import pycolmap

    reconstruction = pycolmap.Reconstruction(str(model_dir))
    xyz = np.empty((len(point_ids), 3))
    rgb = np.empty((len(point_ids), 3), np.uint8)
    error = np.empty(len(point_ids))
    for index, point_id in enumerate(point_ids):
        point = reconstruction.point3D(int(point_id))
        xyz[index], rgb[index], error[index] = point.xyz, point.color, point.error
    return xyz, rgb, error


def read_model_arrays(model_dir: str | Path) -> ModelArrays:
    """Read the model in ``model_dir`` (binary or text) into :class:`ModelArrays`."""
    model_dir = Path(model_dir)
    if not (model_dir / "images.bin").exists() and (model_dir / "images.txt").exists():
        import pycolmap

        with tempfile.TemporaryDirectory(prefix="patchsplat-model-") as tmp:
            pycolmap.Reconstruction(str(model_dir)).write_binary(tmp)
            return read_model_arrays(tmp)

    headers, observations, owners = _parse_images(model_dir / "images.bin")
    valid = observations["point3D_id"] != _INVALID_POINT3D_ID
    obs_point_id = observations["point3D_id"][valid].astype(np.int64)
    point_ids, obs_point, track_lengths = _count_ids(obs_point_id)
    parsed = _parse_points_sorted(model_dir / "points3D.bin", point_ids, track_lengths)
    if parsed is None:
        parsed = _points_from_pycolmap(model_dir, point_ids)
    xyz, rgb, error = parsed
    return ModelArrays(
        image_ids=np.array([h[0] for h in headers], dtype=np.int64),
        image_names=tuple(h[1] for h in headers),
        camera_ids=np.array([h[2] for h in headers], dtype=np.int64),
        quaternions_wxyz=np.array([h[3] for h in headers], dtype=np.float64).reshape(-1, 4),
        translations=np.array([h[4] for h in headers], dtype=np.float64).reshape(-1, 3),
        point_ids=point_ids,
        xyz=xyz,
        rgb=rgb,
        error=error,
        obs_image=owners[valid],
        obs_point=obs_point.astype(np.int32),
        obs_xy=np.stack([observations["x"][valid], observations["y"][valid]], axis=1),
        cameras_bin=(model_dir / "cameras.bin").read_bytes(),
    )


def _scatter(buffer: np.ndarray, byte_offsets: np.ndarray, values: np.ndarray) -> None:
    """Write one 8-byte value at each (unaligned) byte offset of ``buffer`` (see :func:`_gather`)."""
    values = np.ascontiguousarray(values)
    alignment = byte_offsets % 8
    for shift in range(8):
        selected = np.flatnonzero(alignment == shift)
        if len(selected) == 0:
            continue
        words = buffer[shift : shift + 8 * ((len(buffer) - shift) // 8)].view(values.dtype)
        words[(byte_offsets[selected] - shift) // 8] = values[selected]


def _camera_records(cameras_bin: bytes) -> dict[int, bytes]:
    """camera id -> its raw record in cameras.bin."""
    from patchsplat.validate.bin_format import camera_model_num_params

    num_params = {model_id: count for model_id, (_, count) in camera_model_num_params().items()}
    (count,) = struct.unpack_from("<Q", cameras_bin, 0)
    records, offset = {}, 8
    for _ in range(count):
        camera_id, model_id, _, _ = struct.unpack_from("<IiQQ", cameras_bin, offset)
        size = 24 + 8 * num_params[model_id]
        records[camera_id] = cameras_bin[offset : offset + size]
        offset += size
    return records


def write_model_subset(arrays: ModelArrays, image_indices: np.ndarray, point_indices: np.ndarray, model_dir: Path) -> tuple[int, int]:
    """Write the sub-model holding ``image_indices`` and ``point_indices`` as COLMAP binary files.

    Tracks keep only observations by the kept images; each kept image lists only its
    observations of kept points (2D indices renumbered accordingly). Points left with
    fewer than two observations are dropped, as COLMAP drops them. Returns the number
    of images and points written.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    image_indices = np.sort(np.asarray(image_indices, dtype=np.int64))
    in_image = np.zeros(len(arrays.image_ids), dtype=bool)
    in_image[image_indices] = True
    in_point = np.zeros(len(arrays.point_ids), dtype=bool)
    in_point[np.asarray(point_indices, dtype=np.int64)] = True
    in_point &= np.bincount(arrays.obs_point[in_image[arrays.obs_image]], minlength=len(in_point)) >= 2

    kept = np.flatnonzero(in_image[arrays.obs_image] & in_point[arrays.obs_point])
    kept_image, kept_point = arrays.obs_image[kept], arrays.obs_point[kept]
    # Observations are stored image by image, so the kept ones of an image are contiguous and in order.
    per_image = np.bincount(kept_image, minlength=len(arrays.image_ids))
    first_of_image = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    point2d_index = np.arange(len(kept)) - first_of_image[kept_image]

    # cameras.bin: the records of the cameras the kept images use, unchanged.
    records = _camera_records(arrays.cameras_bin)
    camera_ids = sorted({int(arrays.camera_ids[i]) for i in image_indices})
    (model_dir / "cameras.bin").write_bytes(struct.pack("<Q", len(camera_ids)) + b"".join(records[c] for c in camera_ids))

    # images.bin
    blocks = np.empty(len(kept), dtype=_OBSERVATION_DTYPE)
    blocks["x"], blocks["y"] = arrays.obs_xy[kept, 0], arrays.obs_xy[kept, 1]
    blocks["point3D_id"] = arrays.point_ids[kept_point].astype(np.uint64)
    chunks = [struct.pack("<Q", len(image_indices))]
    for index in image_indices:
        start, count = int(first_of_image[index]), int(per_image[index])
        chunks.append(struct.pack("<I7dI", int(arrays.image_ids[index]), *arrays.quaternions_wxyz[index],
                                  *arrays.translations[index], int(arrays.camera_ids[index])))
        chunks.append(arrays.image_names[index].encode("utf-8") + b"\x00")
        chunks.append(struct.pack("<Q", count))
        chunks.append(blocks[start : start + count].tobytes())
    (model_dir / "images.bin").write_bytes(b"".join(chunks))

    # points3D.bin, sorted by id like COLMAP writes it (and as read_model_arrays expects).
    points = np.flatnonzero(in_point)
    by_point = np.argsort(kept_point, kind="stable")
    track_lengths = np.bincount(kept_point, minlength=len(arrays.point_ids))[points].astype(np.int64)
    record_sizes = _POINT_HEADER_BYTES + 8 * track_lengths
    starts = 8 + np.cumsum(record_sizes) - record_sizes
    buffer = np.zeros(8 + int(record_sizes.sum()), dtype=np.uint8)
    buffer[:8] = np.frombuffer(struct.pack("<Q", len(points)), dtype=np.uint8)
    _scatter(buffer, starts, arrays.point_ids[points].astype("<u8"))
    for axis in range(3):
        _scatter(buffer, starts + 8 + 8 * axis, arrays.xyz[points, axis].astype("<f8"))
    for channel in range(3):
        buffer[starts + 32 + channel] = arrays.rgb[points, channel]
    _scatter(buffer, starts + 35, arrays.error[points].astype("<f8"))
    _scatter(buffer, starts + 43, track_lengths.astype("<u8"))
    element_owner = np.repeat(np.arange(len(points)), track_lengths)
    element_rank = np.arange(len(by_point)) - np.repeat(np.cumsum(track_lengths) - track_lengths, track_lengths)
    elements = arrays.image_ids[kept_image[by_point]].astype(np.uint64) | (point2d_index[by_point].astype(np.uint64) << np.uint64(32))
    _scatter(buffer, starts[element_owner] + _POINT_HEADER_BYTES + 8 * element_rank, elements.astype("<u8"))
    buffer.tofile(model_dir / "points3D.bin")
    return len(image_indices), len(points)
