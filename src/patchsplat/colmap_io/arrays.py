"""A COLMAP model as flat numpy arrays, for the stages that work on every point at once.

pycolmap reads and writes models; but walking ``rec.points3D`` from Python costs
~2 us per point (2 s for a million points), more than the read itself. This module
parses the binary files pycolmap (or COLMAP) wrote with vectorised numpy instead:
``images.bin`` per image (images are few), ``points3D.bin`` in one pass, using the
fact that COLMAP writes points sorted by id and that every point's track length is
the number of image observations that reference it. Both assumptions are verified;
if either fails (a hand-edited file), the points are taken from the validator's
bounded record walk instead.

Every read is guarded like the validation stage (:mod:`patchsplat.validate.model_guard`):
the cameras and images files are walked record by record first (:mod:`.binary`, the
validator's walk), so a damaged file is a one-line :class:`InputError` naming it, never a
traceback or an allocation sized by a garbage count. Both read the layouts of :mod:`.layout`.

Text models are read by pycolmap (errors mapped to file and line as the validator
does) and converted to binary in a temporary folder, so the result does not depend
on the model's format.

:func:`write_model_subset` writes a sub-model (some images, some points) the same way,
vectorised: pycolmap's only bulk way to cut a model (``crop`` + de-registering frames)
copies every image of the whole model for each cut, which made a 12-patch split of a
million-point model cost ~5x reading it. Every written model is read back by pycolmap
in the tests.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from patchsplat.colmap_io.layout import (
    COUNT,
    IMAGE_HEAD,
    INVALID_POINT3D_ID,
    POINT2D,
    POINT2D_BYTES,
    POINT_ERROR_AT,
    POINT_HEAD_BYTES,
    POINT_ID_AT,
    POINT_RGB_AT,
    POINT_TRACK_LENGTH_AT,
    POINT_XYZ_AT,
    TRACK_ELEMENT,
    TRACK_ELEMENT_BYTES,
    CameraRecord,
)
from patchsplat.errors import InputError

# Track elements are read and written as one little-endian 8-byte word: the image id is its low 4 bytes.
assert TRACK_ELEMENT.fields["image_id"][1] == 0 and TRACK_ELEMENT_BYTES == 8


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
    obs_records: np.ndarray        # (K,) the images.bin records (layout.POINT2D: x, y, point3D_id) of the observations
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

    def observed_fractions(self, group_of_point: np.ndarray, groups: int) -> np.ndarray:
        """(images, groups): the fraction of each image's observations whose point is in each group
        (``group_of_point`` per point, -1 for none: counted in the image's total, in no group). An image
        without observations has a row of zeros."""
        group = np.asarray(group_of_point)[self.obs_point]
        image = self.obs_image
        kept = group >= 0
        if not kept.all():  # points in no group: leave their observations out (copies of 9M entries, rarely needed)
            image, group = image[kept], group[kept]
        # Multiplying by an int64 scalar widens in the same pass (no separate int64 copy of the image indices).
        counts = np.bincount(image * np.int64(groups) + group,
                             minlength=len(self.image_names) * groups).reshape(len(self.image_names), groups)
        totals = np.bincount(self.obs_image, minlength=len(self.image_names))
        return counts / np.maximum(totals, 1)[:, None]


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


def _observations(images_file: Path, walk) -> tuple[np.ndarray, np.ndarray]:
    """Every 2D point's (x, y, point3D id) record and the index of its image, from the walked ``images.bin``.

    The walk (:func:`.binary.walk_images`) has checked every count against
    the file's length; the 2D-point blocks are copied out as one byte array and viewed as records
    (a structured concatenate is ~5x slower).
    """
    buffer = np.fromfile(images_file, dtype=np.uint8)
    blocks = [buffer[at : at + POINT2D_BYTES * count] for at, count in zip(walk.points2D_at, walk.num_points2D)]
    records = np.concatenate(blocks) if blocks else np.zeros(0, np.uint8)
    owners = np.repeat(np.arange(len(blocks), dtype=np.int32), np.asarray(walk.num_points2D, dtype=np.int64))
    return records.view(POINT2D), owners


def _shifted_words(buffer: np.ndarray) -> list[np.ndarray]:
    """The buffer as 8-byte words starting at each byte offset 0..7: an unaligned 8-byte value at
    byte offset o is word (o - o % 8) // 8 of view o % 8, so a vectorised read or write of such
    values is one gather or scatter instead of 8 byte-wise ones."""
    return [buffer[shift : shift + 8 * ((len(buffer) - shift) // 8)].view("<u8") for shift in range(8)]


def _gather_field(words: list[np.ndarray], starts: np.ndarray, field_offset: int) -> np.ndarray:
    """The 8-byte field at ``field_offset`` of each points3D.bin record starting at ``starts``, as uint64.

    ``words`` are the file's buffer as 8-byte words at each byte alignment (:func:`_shifted_words`),
    so an unaligned value is one element gather, not 8 byte gathers. Record i starts at
    8 + 51 i + 8 t (t: the track elements before it), so its alignment is (8 + 51 i) % 8 = (3 i) % 8: records
    i = r, r + 8, ... share one, and each such group is read from strided views, without
    grouping the records by alignment first.
    """
    out = np.empty(len(starts), dtype=np.uint64)
    for remainder in range(min(8, len(starts))):
        group_starts = starts[remainder::8]
        shift = int(group_starts[0] + field_offset) % 8
        out[remainder::8] = words[shift][(group_starts + (field_offset - shift)) // 8]
    return out


def _parse_points_sorted(buffer: np.ndarray, point_ids: np.ndarray, track_lengths: np.ndarray):
    """Vectorised parse of points3D.bin, assuming records sorted by id; None if the file says otherwise.

    The file's length must equal what the images' observations imply, and every record's id and
    track length must sit where they say: then the whole record chain is proven, without a walk.
    """
    record_sizes = POINT_HEAD_BYTES + TRACK_ELEMENT_BYTES * track_lengths.astype(np.int64)
    expected_size = COUNT.size + int(record_sizes.sum())
    if len(buffer) != expected_size or len(buffer) < COUNT.size or int(buffer[: COUNT.size].view("<u8")[0]) != len(point_ids):
        return None
    starts = np.empty(len(record_sizes), dtype=np.int64)
    starts[0:1] = COUNT.size
    np.cumsum(record_sizes[:-1], out=starts[1:])
    starts[1:] += COUNT.size
    words = _shifted_words(buffer)
    if not np.array_equal(_gather_field(words, starts, POINT_ID_AT), point_ids.astype(np.uint64)):
        return None
    if not np.array_equal(_gather_field(words, starts, POINT_TRACK_LENGTH_AT), track_lengths.astype(np.uint64)):
        return None
    xyz = np.stack([_gather_field(words, starts, POINT_XYZ_AT + 8 * axis).view("<f8") for axis in range(3)], axis=1).reshape(-1, 3)
    rgb = buffer[starts[:, None] + POINT_RGB_AT + np.arange(3)]
    error = _gather_field(words, starts, POINT_ERROR_AT).view("<f8")
    return xyz, rgb, error, starts


def _parse_points_walked(points_file: Path, shown: Path, buffer: np.ndarray, point_ids: np.ndarray, track_lengths: np.ndarray):
    """Points of a file that is not sorted by id (hand-edited): walked by the validator's bounded walk,
    then matched with the points the images observe."""
    from patchsplat.colmap_io.binary import read_points
    from patchsplat.validate.model_guard import one_line_errors

    with one_line_errors():
        walked = read_points(points_file)
    order = np.argsort(walked.point_ids, kind="stable")
    file_ids = walked.point_ids[order]
    if len(file_ids) > 1 and (file_ids[1:] == file_ids[:-1]).any():
        raise InputError(shown, "a 3D point id appears twice (corrupt file)", kind="corrupt_file")
    position = np.minimum(np.searchsorted(file_ids, point_ids), max(len(file_ids) - 1, 0))
    found = file_ids[position] == point_ids if len(file_ids) else np.zeros(len(point_ids), bool)
    if not found.all():
        missing = ", ".join(map(str, point_ids[~found][:10].tolist()))
        raise InputError(shown, f"the images refer to 3D point ids ({missing}) that this file does not hold: points are "
                         "missing from it or the model was edited", kind="inconsistent_model")
    rows = order[position]
    if not np.array_equal(walked.track_lengths[rows], track_lengths.astype(np.uint64)):
        raise InputError(shown, f"the images refer to 3D points {int(track_lengths.sum())} times but the tracks of the points "
                         f"hold {walked.total_track_length} observations: the model was edited", kind="inconsistent_model")
    starts = walked.starts[rows]
    rgb = buffer[starts[:, None] + POINT_RGB_AT + np.arange(3)]
    error = np.ascontiguousarray(buffer[starts[:, None] + POINT_ERROR_AT + np.arange(8)]).view("<f8").ravel()
    return walked.xyz[rows], rgb, error, starts


def _check_track_images(buffer: np.ndarray, starts: np.ndarray, track_lengths: np.ndarray, image_ids: np.ndarray, shown: Path) -> None:
    """Every track element names an image of the model: pycolmap refuses a model whose tracks do not,
    and the arrays (built from the images' side) would silently disagree with the file.

    An element is 8 bytes, its image id the low 4. Elements of one point share an alignment,
    (start + 51) % 4, so each alignment's ids are one gather from a 4-byte view of the buffer
    shifted to it; ids are looked up in a table of the model's image ids (no sort). This reads
    every track (memory-bound, ~0.05 s per million elements), the price of knowing they resolve.
    """
    known = _image_id_table(image_ids)
    first_element = starts + POINT_HEAD_BYTES
    alignment = first_element % 4
    # Indices fit in int32 for files under 8 GiB: half the memory traffic of int64.
    index_type = np.int32 if len(buffer) < 4 * 2**31 else np.int64
    for shift in range(4):
        points = np.flatnonzero(alignment == shift)
        if len(points) == 0:
            continue
        ids = buffer[shift : shift + 4 * ((len(buffer) - shift) // 4)].view("<u4")
        lengths = track_lengths[points]
        # Element k of a point is 4-byte word (first - shift) / 4 + 2 k of this view.
        local_first = 2 * (np.cumsum(lengths) - lengths)
        base = ((first_element[points] - shift) // 4 - local_first).astype(index_type)
        word = np.repeat(base, lengths)
        word += np.arange(0, 2 * len(word), 2, dtype=index_type)
        element_images = ids[word]
        if known is not None and int(element_images.max()) < len(known) and known[element_images].all():
            continue  # the common case: two passes, no temporary masks
        unknown = _unknown(element_images, known, image_ids)
        if unknown.any():
            listed = ", ".join(map(str, np.unique(element_images[unknown])[:10].tolist()))
            raise InputError(shown, f"tracks refer to image ids {listed} that the images file does not define", kind="corrupt_file")


def _unknown(ids: np.ndarray, known: np.ndarray | None, image_ids: np.ndarray) -> np.ndarray:
    """Which ``ids`` are not image ids: a table lookup (its last entry is False and catches larger ids)."""
    if known is None:
        return ~np.isin(ids, image_ids)
    return ~known[np.minimum(ids, len(known) - 1)]


def _image_id_table(image_ids: np.ndarray) -> np.ndarray | None:
    """Boolean table indexed by image id, True for the model's images; None if the ids are too sparse for one."""
    largest = int(image_ids.max(initial=0))
    if largest > 16 * len(image_ids) + 1_000_000:
        return None
    table = np.zeros(largest + 2, dtype=bool)
    table[image_ids] = True
    return table


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


def read_model_arrays(model_dir: str | Path) -> ModelArrays:
    """Read the model in ``model_dir`` (binary or text) into :class:`ModelArrays`.

    Guarded like the validation stage (:mod:`patchsplat.validate.model_guard`): a damaged,
    inconsistent or unusable model is an :class:`InputError` naming the file, raised before any
    vectorised read (or, for a text model, any unguarded pycolmap call).
    """
    from patchsplat.validate import model_guard

    layout = model_guard.model_layout(Path(model_dir))
    files = model_guard.checked_files(layout)
    if layout.model_format == "bin":
        return _read_binary_model(files, shown=files)
    # A text model is read by pycolmap (its errors mapped to file and line) and written as binary,
    # so the result does not depend on the format; errors still name the text files.
    with tempfile.TemporaryDirectory(prefix="patchsplat-model-") as tmp:
        model_guard.text_model_as_binary(layout, files, Path(tmp))
        binary = {stem: Path(tmp) / f"{stem}.bin" for stem in files if (Path(tmp) / f"{stem}.bin").exists()}
        return _read_binary_model(binary, shown=files)


def _read_binary_model(files: dict[str, Path], shown: dict[str, Path]) -> ModelArrays:
    """Read binary ``files`` (stem -> path); ``shown`` are the paths errors name."""
    from patchsplat.validate import model_guard

    cameras, images = model_guard.walk_binary(files)
    model_guard.check_cameras(cameras, shown["cameras"])
    model_guard.check_images(images, cameras, shown["images"], shown["cameras"])
    observations, owners = _observations(files["images"], images)
    valid = observations["point3D_id"] != np.uint64(INVALID_POINT3D_ID)
    if not valid.all():  # keypoints without a 3D point: drop them (a copy, avoided when all are valid)
        observations, owners = observations[valid], owners[valid]
    # (K, 3) float64 view of the (x, y, id) records: x and y without a copy.
    obs_xy = observations.view("<f8").reshape(-1, 3)[:, :2]
    obs_point_id = observations["point3D_id"].view(np.int64)
    point_ids, obs_point, track_lengths = _count_ids(obs_point_id)
    buffer = np.fromfile(files["points3D"], dtype=np.uint8)  # bounded by the file's size
    parsed = _parse_points_sorted(buffer, point_ids, track_lengths)
    if parsed is None:
        parsed = _parse_points_walked(files["points3D"], shown["points3D"], buffer, point_ids, track_lengths)
    xyz, rgb, error, starts = parsed
    image_ids = np.array(images.image_ids, dtype=np.int64)
    _check_track_images(buffer, starts, track_lengths, image_ids, shown["points3D"])
    model_guard.check_points(xyz, point_ids, shown["points3D"])
    return ModelArrays(
        image_ids=image_ids,
        image_names=images.names,
        camera_ids=np.array(images.camera_ids, dtype=np.int64),
        quaternions_wxyz=np.array([pose[:4] for pose in images.poses], dtype=np.float64).reshape(-1, 4),
        translations=np.array([pose[4:] for pose in images.poses], dtype=np.float64).reshape(-1, 3),
        point_ids=point_ids,
        xyz=xyz,
        rgb=rgb,
        error=error,
        obs_image=owners,
        obs_point=obs_point.astype(np.int32),
        obs_xy=obs_xy,
        obs_records=observations,
        cameras_bin=files["cameras"].read_bytes(),
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
    """Write the 51-byte record headers (:data:`.layout.POINT_HEAD`) of points3D.bin at byte offsets ``starts``.

    As in :func:`_gather_field`, records i = r, r + 8, ... share an alignment, and each field
    is written for them from strided views, with no per-record grouping or gathering.
    """
    for remainder in range(min(8, len(starts))):
        group_starts = starts[remainder::8]
        for field_offset, values in fields:
            shift = int(group_starts[0] + field_offset) % 8
            words[shift][(group_starts + (field_offset - shift)) // 8] = values[remainder::8]
    for channel in range(3):
        buffer[starts + POINT_RGB_AT + channel] = rgb[:, channel]


def _write_tracks(words: list[np.ndarray], elements: np.ndarray, track_lengths: np.ndarray) -> None:
    """Write the track elements (8 bytes each, sorted by point) after the headers of points3D.bin.

    Element e of the file, of point i, sits at byte 8 + 51 (i + 1) + 8 e: its alignment is
    (3 + 3 i) % 8, shared by the points i = r, r + 8, ... (see :func:`_gather_field`).
    """
    first_track_byte = COUNT.size + POINT_HEAD_BYTES  # of point 0 (59): point i's is 51 i later
    num_points = len(track_lengths)
    first_element = np.cumsum(track_lengths) - track_lengths
    for remainder in range(min(8, num_points)):
        lengths = track_lengths[remainder::8]
        points = np.arange(remainder, num_points, 8, dtype=np.int64)
        shift = (first_track_byte + POINT_HEAD_BYTES * remainder) % 8
        # Element indices of these points, point by point: first_element[i] + (0 .. length - 1).
        local_first = np.cumsum(lengths) - lengths
        element = np.repeat(first_element[remainder::8] - local_first, lengths) + np.arange(int(lengths.sum()))
        word = element + np.repeat((first_track_byte + POINT_HEAD_BYTES * points - shift) // 8, lengths)
        words[shift][word] = elements[element]


def parse_cameras(cameras_bin: bytes) -> dict[int, CameraRecord]:
    """camera id -> its record, from the bytes of cameras.bin (walked by the validator's walk)."""
    from patchsplat.colmap_io.binary import walk_camera_bytes
    from patchsplat.validate.model_guard import one_line_errors

    with one_line_errors():
        return walk_camera_bytes(cameras_bin, Path("cameras.bin"))


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

    # cameras.bin: the records of the cameras the kept images use, unchanged (re-encoded byte for byte).
    cameras = parse_cameras(arrays.cameras_bin)
    camera_ids = sorted({int(arrays.camera_ids[i]) for i in image_indices})
    (model_dir / "cameras.bin").write_bytes(COUNT.pack(len(camera_ids)) + b"".join(cameras[c].to_bytes() for c in camera_ids))

    # images.bin: each image's kept records (x, y and the unchanged point id) gathered as 8-byte
    # words (3x faster than gathering structured records) into one small reused block, which
    # stays in cache and spares allocating (and page-faulting) the whole file's records at once.
    block = np.empty((int(per_image.max(initial=0)), 3), dtype=np.uint64)
    with open(model_dir / "images.bin", "wb") as file:
        file.write(COUNT.pack(len(image_indices)))
        for index in image_indices:
            start, count = int(first_of_image[index]), int(per_image[index])
            file.write(IMAGE_HEAD.pack(int(arrays.image_ids[index]), *arrays.quaternions_wxyz[index],
                                       *arrays.translations[index], int(arrays.camera_ids[index])))
            file.write(arrays.image_names[index].encode("utf-8") + b"\x00")
            file.write(COUNT.pack(count))
            # mode="clip": with mode="raise" NumPy buffers `out` (the indices are valid either way).
            file.write(np.take(arrays.obs_words, kept[start : start + count], axis=0, out=block[:count], mode="clip"))

    # points3D.bin, sorted by id like COLMAP writes it (and as read_model_arrays expects);
    # each track lists its observations in image order.
    points = np.flatnonzero(in_point)
    by_point = _stable_order(kept_point)
    track_lengths = np.bincount(kept_point, minlength=len(arrays.point_ids))[points].astype(np.int64)
    record_sizes = POINT_HEAD_BYTES + TRACK_ELEMENT_BYTES * track_lengths
    starts = COUNT.size + np.cumsum(record_sizes) - record_sizes
    buffer = np.zeros(COUNT.size + int(record_sizes.sum()), dtype=np.uint8)
    buffer[: COUNT.size] = np.frombuffer(COUNT.pack(len(points)), dtype=np.uint8)
    words = _shifted_words(buffer)
    xyz = arrays.xyz[points].astype("<f8", copy=False)  # written as little-endian words
    _write_point_headers(words, buffer, starts, [
        (POINT_ID_AT, arrays.point_ids[points].astype("<u8")),
        *((POINT_XYZ_AT + 8 * axis, xyz[:, axis].view("<u8")) for axis in range(3)),
        (POINT_ERROR_AT, arrays.error[points].astype("<f8").view("<u8")),
        (POINT_TRACK_LENGTH_AT, track_lengths.astype("<u8")),
    ], arrays.rgb[points])
    # A track element is one 8-byte word: image id (u32), then the 2D point index (u32).
    elements = arrays.image_ids.astype(np.uint64)[kept_image] | (point2d_index.astype(np.uint64) << np.uint64(32))
    _write_tracks(words, elements[by_point], track_lengths)
    buffer.tofile(model_dir / "points3D.bin")
    return len(image_indices), len(points)
