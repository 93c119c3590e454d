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
from functools import cached_property
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
    obs_xy: np.ndarray             # (K, 2) float64 (a view of obs_records)
    obs_records: np.ndarray        # (K,) the images.bin records (x, y, point3D_id) of the observations
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

    @cached_property
    def obs_words(self) -> np.ndarray:
        """(K, 3) uint64 view (or contiguous copy) of ``obs_records``: gathers of plain words are faster."""
        return np.ascontiguousarray(self.obs_records).view(np.uint64).reshape(-1, 3)

    @cached_property
    def image_obs_offsets(self) -> np.ndarray:
        """(M+1,) observations of image i are ``obs_*[offsets[i]:offsets[i+1]]`` (they are stored image by image)."""
        return np.concatenate([[0], np.cumsum(np.bincount(self.obs_image, minlength=len(self.image_ids)))])

    def observations_of(self, image_indices: np.ndarray) -> np.ndarray:
        """Indices of the observations made by these images (sorted if ``image_indices`` is), without a pass over all."""
        image_indices = np.asarray(image_indices, dtype=np.int64)
        starts = self.image_obs_offsets[image_indices]
        counts = self.image_obs_offsets[image_indices + 1] - starts
        first_of_run = np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(starts, counts) + np.arange(int(counts.sum())) - first_of_run


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
    """Image headers, and every observation's (image index, x, y, point3D id).

    Headers are walked in Python (images are few); the 2D-point blocks between them are
    copied out as one byte array and viewed as records (a structured concatenate is ~5x slower).
    """
    buffer = np.fromfile(path, dtype=np.uint8)
    data = memoryview(buffer)
    size = len(buffer)
    try:
        (num_images,) = struct.unpack_from("<Q", data, 0)
        offset = 8
        headers, block_ranges, counts = [], [], []
        for _ in range(num_images):
            image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = struct.unpack_from("<I7dI", data, offset)
            offset += 4 + 56 + 4
            name_end = offset
            while buffer[name_end] != 0:  # names are short: a Python scan is fine
                name_end += 1
            name = bytes(data[offset:name_end]).decode("utf-8")
            offset = name_end + 1
            (num_points2d,) = struct.unpack_from("<Q", data, offset)
            offset += 8
            if offset + 24 * num_points2d > size:
                raise struct.error("truncated")
            headers.append((image_id, name, camera_id, (qw, qx, qy, qz), (tx, ty, tz)))
            block_ranges.append((offset, offset + 24 * num_points2d))
            counts.append(num_points2d)
            offset += 24 * num_points2d
    except (struct.error, IndexError, UnicodeDecodeError):
        raise InputError(path, "truncated or corrupt images file", kind="corrupt_file") from None
    if offset != size:
        raise InputError(path, f"{size - offset} unexpected bytes after the last image", kind="corrupt_file")
    blocks = np.concatenate([buffer[begin:end] for begin, end in block_ranges]) if block_ranges else np.zeros(0, np.uint8)
    all_obs = blocks.view(_OBSERVATION_DTYPE)
    all_owner = np.repeat(np.arange(len(counts), dtype=np.int32), np.asarray(counts, dtype=np.int64))
    return headers, all_obs, all_owner


def _shifted_words(buffer: np.ndarray) -> list[np.ndarray]:
    """The buffer as 8-byte words starting at each byte offset 0..7: an unaligned 8-byte value at
    byte offset o is word (o - o % 8) // 8 of view o % 8, so a vectorised read or write of such
    values is one gather or scatter instead of 8 byte-wise ones."""
    return [buffer[shift : shift + 8 * ((len(buffer) - shift) // 8)].view("<u8") for shift in range(8)]


def _gather_field(words: list[np.ndarray], starts: np.ndarray, field_offset: int) -> np.ndarray:
    """The 8-byte field at ``field_offset`` of each points3D.bin record starting at ``starts``, as uint64.

    ``words`` are the file's buffer as 8-byte words at each byte alignment (:func:`_shifted_words`),
    so an unaligned value is one element gather, not 8 byte gathers. Record i starts at
    8 + 51 i + 8 t (t: the track elements before it), so its alignment is (3 i) % 8: records
    i = r, r + 8, ... share one, and each such group is read from strided views, without
    grouping the records by alignment first.
    """
    out = np.empty(len(starts), dtype=np.uint64)
    for remainder in range(min(8, len(starts))):
        group_starts = starts[remainder::8]
        shift = int(group_starts[0] + field_offset) % 8
        out[remainder::8] = words[shift][(group_starts + (field_offset - shift)) // 8]
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
    words = _shifted_words(buffer)
    if not np.array_equal(_gather_field(words, starts, 0), point_ids.astype(np.uint64)):
        return None
    if not np.array_equal(_gather_field(words, starts, 43), track_lengths.astype(np.uint64)):
        return None
    xyz = np.stack([_gather_field(words, starts, 8 + 8 * axis).view("<f8") for axis in range(3)], axis=1)
    rgb = buffer[starts[:, None] + 32 + np.arange(3)]
    error = _gather_field(words, starts, 35).view("<f8")
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
    if not valid.all():  # keypoints without a 3D point: drop them (a copy, avoided when all are valid)
        observations, owners = observations[valid], owners[valid]
    # (K, 3) float64 view of the (x, y, id) records: x and y without a copy.
    obs_xy = observations.view("<f8").reshape(-1, 3)[:, :2]
    obs_point_id = observations["point3D_id"].view(np.int64)
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
        obs_image=owners,
        obs_point=obs_point.astype(np.int32),
        obs_xy=obs_xy,
        obs_records=observations,
        cameras_bin=(model_dir / "cameras.bin").read_bytes(),
    )


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative int32 keys, as two 16-bit radix passes.

    NumPy sorts 16-bit keys stably with a radix sort; two passes (low half, then high half) are
    ~2x faster than its merge sort on 32-bit keys, and give the same order.
    """
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if len(keys) and int(keys.max()) > 0xFFFF:
        order = order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]
    return order


def _write_point_headers(words: list[np.ndarray], buffer: np.ndarray, starts: np.ndarray,
                         fields: list[tuple[int, np.ndarray]], rgb: np.ndarray) -> None:
    """Write the 51-byte record headers of points3D.bin at byte offsets ``starts``.

    As in :func:`_gather_field`, records i = r, r + 8, ... share an alignment, and each field
    is written for them from strided views, with no per-record grouping or gathering.
    """
    for remainder in range(min(8, len(starts))):
        group_starts = starts[remainder::8]
        for field_offset, values in fields:
            shift = int(group_starts[0] + field_offset) % 8
            words[shift][(group_starts + (field_offset - shift)) // 8] = values[remainder::8]
    for channel in range(3):
        buffer[starts + 32 + channel] = rgb[:, channel]


def _write_tracks(words: list[np.ndarray], elements: np.ndarray, track_lengths: np.ndarray) -> None:
    """Write the track elements (8 bytes each, sorted by point) after the headers of points3D.bin.

    Element e of the file, of point i, sits at byte 8 + 51 (i + 1) + 8 e: its alignment is
    (3 + 3 i) % 8, shared by the points i = r, r + 8, ... (see :func:`_gather_field`).
    """
    num_points = len(track_lengths)
    first_element = np.cumsum(track_lengths) - track_lengths
    for remainder in range(min(8, num_points)):
        lengths = track_lengths[remainder::8]
        points = np.arange(remainder, num_points, 8, dtype=np.int64)
        shift = int(59 + 51 * remainder) % 8
        # Element indices of these points, point by point: first_element[i] + (0 .. length - 1).
        local_first = np.cumsum(lengths) - lengths
        element = np.repeat(first_element[remainder::8] - local_first, lengths) + np.arange(int(lengths.sum()))
        word = element + np.repeat((59 + 51 * points - shift) // 8, lengths)
        words[shift][word] = elements[element]


@dataclass(frozen=True)
class CameraIntrinsics:
    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


def parse_cameras(cameras_bin: bytes) -> dict[int, CameraIntrinsics]:
    """camera id -> its model, size and parameters, from the bytes of cameras.bin."""
    from patchsplat.validate.bin_format import camera_model_num_params

    models = camera_model_num_params()
    cameras = {}
    for camera_id, record in _camera_records(cameras_bin).items():
        _, model_id, width, height = struct.unpack_from("<IiQQ", record, 0)
        name, count = models[model_id]
        cameras[camera_id] = CameraIntrinsics(camera_id, name, width, height, struct.unpack_from(f"<{count}d", record, 24))
    return cameras


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
    of_images = arrays.observations_of(image_indices)
    in_point = np.zeros(len(arrays.point_ids), dtype=bool)
    in_point[np.asarray(point_indices, dtype=np.int64)] = True
    observed = arrays.obs_point[of_images]
    in_point &= np.bincount(observed, minlength=len(in_point)) >= 2
    keep = in_point[observed]
    kept, kept_point = of_images[keep], observed[keep]
    kept_image = arrays.obs_image[kept]
    # Observations are stored image by image, so the kept ones of an image are contiguous and in order.
    per_image = np.bincount(kept_image, minlength=len(arrays.image_ids))
    first_of_image = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    point2d_index = np.arange(len(kept)) - first_of_image[kept_image]

    # cameras.bin: the records of the cameras the kept images use, unchanged.
    records = _camera_records(arrays.cameras_bin)
    camera_ids = sorted({int(arrays.camera_ids[i]) for i in image_indices})
    (model_dir / "cameras.bin").write_bytes(struct.pack("<Q", len(camera_ids)) + b"".join(records[c] for c in camera_ids))

    # images.bin: each image's kept records (x, y and the unchanged point id) gathered as 8-byte
    # words (3x faster than gathering structured records) into one small reused block, which
    # stays in cache and spares allocating (and page-faulting) the whole file's records at once.
    block = np.empty((int(per_image.max(initial=0)), 3), dtype=np.uint64)
    with open(model_dir / "images.bin", "wb") as file:
        file.write(struct.pack("<Q", len(image_indices)))
        for index in image_indices:
            start, count = int(first_of_image[index]), int(per_image[index])
            file.write(struct.pack("<I7dI", int(arrays.image_ids[index]), *arrays.quaternions_wxyz[index],
                                   *arrays.translations[index], int(arrays.camera_ids[index])))
            file.write(arrays.image_names[index].encode("utf-8") + b"\x00")
            file.write(struct.pack("<Q", count))
            # mode="clip": with mode="raise" NumPy buffers `out` (the indices are valid either way).
            file.write(np.take(arrays.obs_words, kept[start : start + count], axis=0, out=block[:count], mode="clip"))

    # points3D.bin, sorted by id like COLMAP writes it (and as read_model_arrays expects);
    # each track lists its observations in image order.
    points = np.flatnonzero(in_point)
    by_point = _stable_order(kept_point)
    track_lengths = np.bincount(kept_point, minlength=len(arrays.point_ids))[points].astype(np.int64)
    record_sizes = _POINT_HEADER_BYTES + 8 * track_lengths
    starts = 8 + np.cumsum(record_sizes) - record_sizes
    buffer = np.zeros(8 + int(record_sizes.sum()), dtype=np.uint8)
    buffer[:8] = np.frombuffer(struct.pack("<Q", len(points)), dtype=np.uint8)
    words = _shifted_words(buffer)
    xyz = arrays.xyz[points].astype("<f8", copy=False)  # written as little-endian words
    _write_point_headers(words, buffer, starts, [
        (0, arrays.point_ids[points].astype("<u8")),
        (8, xyz[:, 0].view("<u8")), (16, xyz[:, 1].view("<u8")), (24, xyz[:, 2].view("<u8")),
        (35, arrays.error[points].astype("<f8").view("<u8")),
        (43, track_lengths.astype("<u8")),
    ], arrays.rgb[points])
    # A track element is one 8-byte word: image id (u32), then the 2D point index (u32).
    elements = arrays.image_ids.astype(np.uint64)[kept_image] | (point2d_index.astype(np.uint64) << np.uint64(32))
    _write_tracks(words, elements[by_point], track_lengths)
    buffer.tofile(model_dir / "points3D.bin")
    return len(image_indices), len(points)
