"""The standard 3D Gaussian Splatting PLY (the INRIA layout), written and read back.

Layout (one ``vertex`` element, binary little endian, every property ``float``)::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3K-1}  opacity  scale_0..2  rot_0..3

Values are raw, pre-activation parameters, exactly as trained (see :mod:`patchsplat.gaussians`):

* ``scale_i`` are log-scales (``exp`` gives the standard deviations),
* ``opacity`` is the logit (``sigmoid`` gives the opacity),
* ``rot_0..3`` is the quaternion in w, x, y, z order, not necessarily normalised,
* ``f_dc_*`` is the degree-0 SH coefficient per colour channel (``sh0[:, 0, c]``),
* ``f_rest_*`` are the higher SH coefficients ordered channel-major: all K coefficients
  of R, then of G, then of B, i.e. ``f_rest_{c*K + k} = shN[:, k, c]``. This is INRIA's
  ``features_rest.transpose(1, 2).flatten(1)`` and gsplat 1.5.3's
  ``shN.permute(0, 2, 1).reshape(N, -1)``.
* ``nx ny nz`` are zeros (INRIA writes them; viewers ignore them; gsplat omits them).

A Gaussian with any non-finite value is dropped on its own (gsplat 1.5.3's
``export_splats`` drops *every* splat when a single opacity is NaN, because it reduces the
1-D opacity tensor with ``.any(dim=0)``); the writer reports how many and which.

The writer's arguments and the reader's dict are named by :data:`patchsplat.gaussians.GAUSSIAN_FIELDS`
(``means``, ``scales``, ``quats``, ``opacities``, ``sh0``, ``shN``; what each holds is documented there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from patchsplat.atomic import atomic_file
from patchsplat.errors import InputError


def inria_property_names(num_rest_coefficients: int) -> list[str]:
    """The vertex property names, in file order, for ``K`` = ``num_rest_coefficients`` per channel."""
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(3 * num_rest_coefficients)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - report what could not be converted
        raise ValueError(f"{name} must be a tensor or array, got {type(value).__name__}") from error


def _check_shape(array: np.ndarray, name: str, expected: tuple, n: int) -> None:
    """``expected`` uses ``'N'`` for the splat count and ``None`` for any size."""
    ok = array.ndim == len(expected) and all(
        (size == n if want == "N" else want is None or size == want) for size, want in zip(array.shape, expected)
    )
    if not ok:
        shown = "[" + ", ".join("N" if w == "N" else ("K" if w is None else str(w)) for w in expected) + "]"
        raise ValueError(f"{name} must have shape {shown} with N={n}, got {tuple(array.shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")


def _flat_columns(
    means, scales, quats, opacities, sh0, shN
) -> tuple[np.ndarray, int]:
    """Validate the parameters and lay them out as ``[N, P]`` float32 columns in INRIA order (with nx ny nz)."""
    means_np = _as_numpy(means, "means")
    n = means_np.shape[0] if means_np.ndim >= 1 else -1
    opacities_np = _as_numpy(opacities, "opacities")
    if opacities_np.ndim == 2 and opacities_np.shape[1] == 1:  # tolerate [N, 1]
        opacities_np = opacities_np[:, 0]
    arrays = {
        "means": (means_np, ("N", 3)),
        "scales": (_as_numpy(scales, "scales"), ("N", 3)),
        "quats": (_as_numpy(quats, "quats"), ("N", 4)),
        "opacities": (opacities_np, ("N",)),
        "sh0": (_as_numpy(sh0, "sh0"), ("N", 1, 3)),
        "shN": (_as_numpy(shN, "shN"), ("N", None, 3)),
    }
    for name, (array, expected) in arrays.items():
        _check_shape(array, name, expected, n)
    shn_np = arrays["shN"][0]
    num_rest = shn_np.shape[1]
    def f32(array: np.ndarray) -> np.ndarray:
        # Casting straight to float32 keeps memory at one float32 copy; values beyond float32's
        # range become inf here and the Gaussian is dropped by the finiteness test.
        with np.errstate(over="ignore", invalid="ignore"):
            return array.astype(np.float32, copy=False)

    columns = np.concatenate(
        [
            f32(means_np),
            np.zeros((n, 3), dtype=np.float32),  # nx ny nz
            f32(arrays["sh0"][0].reshape(n, 3)),
            # channel-major: [N, K, 3] -> [N, 3, K] -> [N, 3K]
            f32(shn_np.transpose(0, 2, 1).reshape(n, 3 * num_rest)),
            f32(opacities_np.reshape(n, 1)),
            f32(arrays["scales"][0]),
            f32(arrays["quats"][0]),
        ],
        axis=1,
    )
    return columns, num_rest


def finite_splats(means, scales, quats, opacities, sh0, shN) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The Gaussians validated as :func:`write_splats_ply` does, as float32 numpy arrays named by
    :data:`~patchsplat.gaussians.GAUSSIAN_FIELDS` (``opacities`` [N]), and the [N] mask of those whose every
    value is finite in float32 (the ones the PLY writer keeps). Raises ``ValueError`` on wrong shapes."""
    columns, num_rest = _flat_columns(means, scales, quats, opacities, sh0, shN)
    n = columns.shape[0]
    rest = columns[:, 9 : 9 + 3 * num_rest].reshape(n, 3, num_rest).transpose(0, 2, 1)
    after_rest = 9 + 3 * num_rest
    fields = {
        "means": columns[:, 0:3],
        "scales": columns[:, after_rest + 1 : after_rest + 4],
        "quats": columns[:, after_rest + 4 : after_rest + 8],
        "opacities": columns[:, after_rest],
        "sh0": columns[:, 6:9].reshape(n, 1, 3),
        "shN": rest,
    }
    return {name: np.ascontiguousarray(value) for name, value in fields.items()}, np.isfinite(columns).all(axis=1)


def write_splats_ply(
    path: str | Path,
    means: Tensor,
    scales: Tensor,
    quats: Tensor,
    opacities: Tensor,
    sh0: Tensor,
    shN: Tensor,
    comments: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write splats as an INRIA-layout binary PLY at ``path``, atomically (``comments`` go into its header).

    Arguments are raw parameters (see :mod:`patchsplat.gaussians`), as torch tensors (any device,
    gradients ignored) or numpy arrays: ``means [N,3]``, ``scales [N,3]``,
    ``quats [N,4]``, ``opacities [N]`` (``[N,1]`` accepted), ``sh0 [N,1,3]``,
    ``shN [N,K,3]``. Values are stored as float32; a Gaussian with any value that is not
    finite in float32 (NaN, Inf, or beyond float32's range) is dropped, alone.

    Returns ``{"path", "n_written", "n_dropped", "dropped_indices"}`` (indices into the
    input, a sorted list of ints). Raises ``ValueError`` on wrong shapes.
    """
    columns, num_rest = _flat_columns(means, scales, quats, opacities, sh0, shN)
    finite_rows = np.isfinite(columns).all(axis=1)
    dropped = np.flatnonzero(~finite_rows)
    kept = columns[finite_rows]

    names = inria_property_names(num_rest)
    record = np.empty(kept.shape[0], dtype=[(name, "<f4") for name in names])
    for index, name in enumerate(names):
        record[name] = kept[:, index]
    element = PlyElement.describe(record, "vertex")
    path = Path(path)
    with atomic_file(path, suffix=".ply") as tmp:
        PlyData([element], text=False, byte_order="<", comments=list(comments)).write(str(tmp))
    return {
        "path": str(path),
        "n_written": int(kept.shape[0]),
        "n_dropped": int(dropped.size),
        "dropped_indices": [int(i) for i in dropped],
    }


def _numbered(names: list[str], prefix: str) -> list[str]:
    """Property names ``prefix<i>`` sorted by the integer ``i`` (so f_rest_10 follows f_rest_9)."""
    found = [name for name in names if name.startswith(prefix) and name[len(prefix) :].isdigit()]
    return sorted(found, key=lambda name: int(name[len(prefix) :]))


def read_splats_ply(path: str | Path) -> dict[str, Tensor]:
    """Read a 3DGS PLY (INRIA layout, or gsplat's, which lacks nx/ny/nz) into float32 CPU tensors.

    Returns the keys of :data:`~patchsplat.gaussians.GAUSSIAN_FIELDS` with shapes ``means [N,3]``, ``scales [N,3]``,
    ``quats [N,4]``, ``opacities [N]``, ``sh0 [N,1,3]``, ``shN [N,K,3]``.
    Properties are looked up by name, extra properties are ignored. Raises
    :class:`~patchsplat.errors.InputError` (kind ``corrupt_file``) for an unreadable file,
    a missing ``vertex`` element or property, or an ``f_rest`` count not divisible by 3.
    """
    path = Path(path)
    try:
        ply = PlyData.read(str(path))
    except Exception as error:  # noqa: BLE001 - plyfile raises many types for bad files
        raise InputError(path, f"cannot be read as a PLY file: {error}", kind="corrupt_file") from error
    if "vertex" not in [element.name for element in ply.elements]:
        raise InputError(path, "has no 'vertex' element; not a Gaussian-splat PLY", kind="corrupt_file")
    data = ply["vertex"].data
    names = list(data.dtype.names or ())
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [
        f"rot_{i}" for i in range(4)
    ]
    missing = [name for name in required if name not in names]
    if missing:
        raise InputError(path, f"is missing the vertex properties {missing}; not a 3DGS PLY", kind="corrupt_file")
    rest_names = _numbered(names, "f_rest_")
    if len(rest_names) % 3 != 0 or rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]:
        raise InputError(
            path, f"has {len(rest_names)} f_rest_* properties, expected f_rest_0..f_rest_(3K-1)", kind="corrupt_file"
        )
    num_rest = len(rest_names) // 3
    n = len(data)

    def stack(columns: list[str]) -> np.ndarray:
        if not columns:
            return np.zeros((n, 0), dtype=np.float32)
        return np.stack([np.asarray(data[name], dtype=np.float32) for name in columns], axis=1)

    rest = stack(rest_names).reshape(n, 3, num_rest).transpose(0, 2, 1)  # channel-major -> [N, K, 3]
    arrays = {
        "means": stack(["x", "y", "z"]),
        "scales": stack([f"scale_{i}" for i in range(3)]),
        "quats": stack([f"rot_{i}" for i in range(4)]),
        "opacities": np.asarray(data["opacity"], dtype=np.float32),
        "sh0": stack([f"f_dc_{i}" for i in range(3)]).reshape(n, 1, 3),
        "shN": np.ascontiguousarray(rest),
    }
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}


def _check_similarity(scale: float, translation) -> tuple[float, Tensor]:
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale}")
    translation_t = torch.as_tensor(translation, dtype=torch.float64).reshape(-1)
    if translation_t.shape != (3,) or not torch.isfinite(translation_t).all():
        raise ValueError(f"translation must be 3 finite numbers, got {translation}")
    return scale, translation_t


def transform_splats(splats: dict[str, Tensor], scale: float, translation) -> dict[str, Tensor]:
    """Map splats from patchsplat's canonical frame to the world: ``world = canonical / scale + translation``.

    ``scale`` (> 0) and ``translation`` ([3], the patch centre) are those of the canonical
    frame (canonical = (world - centre) * scale). Means become ``means / scale + translation``,
    the log standard deviations ``scales`` become ``scales - log(scale)``; quaternions, opacities and SH are returned
    unchanged (the mapping has no rotation). Returns a new dict (inputs are not modified);
    keys other than those transformed are passed through.
    """
    scale, translation_t = _check_similarity(scale, translation)
    means = splats["means"]
    out = dict(splats)
    out["means"] = means / scale + translation_t.to(dtype=means.dtype, device=means.device)
    out["scales"] = splats["scales"] - math.log(scale)
    return out


def inverse_transform_splats(splats: dict[str, Tensor], scale: float, translation) -> dict[str, Tensor]:
    """The inverse of :func:`transform_splats`: ``canonical = (world - translation) * scale``."""
    scale, translation_t = _check_similarity(scale, translation)
    means = splats["means"]
    out = dict(splats)
    out["means"] = (means - translation_t.to(dtype=means.dtype, device=means.device)) * scale
    out["scales"] = splats["scales"] + math.log(scale)
    return out
