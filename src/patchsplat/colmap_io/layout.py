"""The binary layout of a COLMAP model, defined once for the record walk and the vectorised reader/writer.

Layouts (little-endian, packed) follow COLMAP's ``reconstruction_io_binary.cc``. Every file starts
with its number of records (:data:`COUNT`), then the records:

- ``cameras.bin``: :data:`CAMERA_HEAD`, then the model's parameters (doubles; how many depends on
  the model, :func:`camera_models`);
- ``images.bin``: :data:`IMAGE_HEAD`, the name (UTF-8, NUL-terminated), the number of 2D points
  (:data:`COUNT`), then that many :data:`POINT2D` records;
- ``points3D.bin``: :data:`POINT_HEAD` (its last field is the track length), then that many
  :data:`TRACK_ELEMENT` records;
- ``rigs.bin`` (COLMAP >= 3.12): :data:`RIG_HEAD`, then per sensor :data:`SENSOR` and, for every
  sensor but the reference one, a has-pose byte and, if set, :data:`RIG_SENSOR_POSE_BYTES`;
- ``frames.bin`` (COLMAP >= 3.12): :data:`FRAME_HEAD`, then that many :data:`DATA_ID` records.

Per-record reads use the ``struct`` formats; vectorised reads and writes use the numpy record types
and the field offsets derived from them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache

import numpy as np

COUNT = struct.Struct("<Q")                    # the record count a file starts with; every other u64 count
CAMERA_HEAD = struct.Struct("<IiQQ")           # camera_id, model_id, width, height
CAMERA_PARAM_BYTES = 8                         # each parameter a double
IMAGE_HEAD = struct.Struct("<I7dI")            # image_id, qw qx qy qz, tx ty tz (cam_from_world), camera_id
POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("point3D_id", "<u8")])
INVALID_POINT3D_ID = 2**64 - 1                 # the point3D_id of a 2D point without a 3D point
POINT_HEAD = np.dtype([
    ("point3D_id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("track_length", "<u8"),
])                                             # packed: 51 bytes
TRACK_ELEMENT = np.dtype([("image_id", "<u4"), ("point2D_idx", "<u4")])
RIG_HEAD = struct.Struct("<II")                # rig_id, num_sensors
SENSOR = struct.Struct("<iI")                  # sensor type, sensor id
RIG_SENSOR_POSE_BYTES = 7 * 8                  # sensor_from_rig: quaternion and translation
FRAME_HEAD = struct.Struct("<II7dI")           # frame_id, rig_id, rig_from_world (7 doubles), num_data_ids
DATA_ID = struct.Struct("<iIQ")                # sensor type, sensor id, data id
SENSOR_TYPES = frozenset({0, 1})               # CAMERA, IMU (pycolmap.SensorType)

POINT_HEAD_BYTES = POINT_HEAD.itemsize
POINT_ID_AT = POINT_HEAD.fields["point3D_id"][1]
POINT_XYZ_AT = POINT_HEAD.fields["xyz"][1]
POINT_RGB_AT = POINT_HEAD.fields["rgb"][1]
POINT_ERROR_AT = POINT_HEAD.fields["error"][1]
POINT_TRACK_LENGTH_AT = POINT_HEAD.fields["track_length"][1]
TRACK_ELEMENT_BYTES = TRACK_ELEMENT.itemsize
POINT2D_BYTES = POINT2D.itemsize


@dataclass(frozen=True)
class CameraModel:
    model_id: int
    name: str
    num_params: int


@dataclass(frozen=True)
class CameraModels:
    by_id: dict[int, CameraModel]
    by_name: dict[str, CameraModel]


@cache
def camera_models() -> CameraModels:
    """COLMAP's camera models (id, name, number of parameters), taken from pycolmap itself."""
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()

    models = []
    for model in pycolmap.CameraModelId.__members__.values():
        if model.value < 0:  # INVALID
            continue
        camera = pycolmap.Camera.create_from_model_id(1, model, 1.0, 2, 2)
        models.append(CameraModel(int(model.value), model.name, len(camera.params)))
    return CameraModels({model.model_id: model for model in models}, {model.name: model for model in models})


@dataclass(frozen=True)
class CameraRecord:
    """One camera of a model, whichever file (``cameras.bin``, ``cameras.txt``) or reader it came from."""

    camera_id: int
    model: str                   # COLMAP's name for it: "PINHOLE", "SIMPLE_RADIAL", ...
    width: int
    height: int
    params: tuple[float, ...]

    def to_bytes(self) -> bytes:
        """The camera's ``cameras.bin`` record (what :func:`.binary.walk_camera_bytes` read, byte for byte)."""
        model = camera_models().by_name[self.model]
        head = CAMERA_HEAD.pack(self.camera_id, model.model_id, self.width, self.height)
        return head + struct.pack(f"<{model.num_params}d", *self.params)
