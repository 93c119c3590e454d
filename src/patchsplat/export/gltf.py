"""glTF 2.0 binary (.glb) with the KHR_gaussian_splatting extension, written with pygltflib.

One mesh of one ``POINTS`` primitive whose extension object is ``{"kernel": "ellipse", "colorSpace":
"srgb_rec709_display", "projection": "perspective", "sortingMethod": "cameraDistance"}`` (3DGS trains on
sRGB photographs and renders display-referred colours), with the attributes the extension defines
(KhronosGroup/glTF, extensions/2.0/Khronos/KHR_gaussian_splatting), every one a float accessor:

    POSITION                                     VEC3    the centre
    KHR_gaussian_splatting:ROTATION              VEC4    unit quaternion, glTF's x, y, z, w order
    KHR_gaussian_splatting:SCALE                 VEC3    linear standard deviations (exp of the log scales)
    KHR_gaussian_splatting:OPACITY               SCALAR  linear, sigmoid of the logit
    KHR_gaussian_splatting:SH_DEGREE_0_COEF_0    VEC3    sh0 as trained
    KHR_gaussian_splatting:SH_DEGREE_l_COEF_n    VEC3    shN, per degree l = 1..3 and order n (m = n - l)

plus ``COLOR_0`` (normalised unsigned bytes), the fallback a viewer without the extension draws points
with: the base colour decoded from sRGB to linear, as glTF's colours are, and the opacity.

glTF is y-up; 3DGS scenes in COLMAP's frame are by convention y-down (a camera's +y points down its image).
The Gaussians are turned half a turn about z, as @playcanvas/splat-transform turns a PLY it writes as .glb
(and SuperSplat shows a PLY): x and y negated, each rotation composed with that turn, and the SH coefficients
of odd order m negated (their azimuthal factor changes sign under the turn). A viewer then shows the .glb as
those tools show the PLY.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from patchsplat.atomic import atomic_file
from patchsplat.export.common import Kept, base_colour, kept_gaussians, sigmoid, unit_quaternions

EXTENSION = "KHR_gaussian_splatting"
GENERATOR = "patchsplat export"  # asset.generator: how `patchsplat export` knows a .glb it may replace
SPLAT_PROPERTIES = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
                    "projection": "perspective", "sortingMethod": "cameraDistance"}


def _sh_coefficients(degree: int) -> list[tuple[int, int, int]]:
    """(index into shN's K, degree l, order index n) for the degrees 1..``degree``, in shN's order."""
    out, index = [], 0
    for l in range(1, degree + 1):
        for n in range(2 * l + 1):
            out.append((index, l, n))
            index += 1
    return out


def to_gltf_frame(kept: Kept) -> dict[str, np.ndarray]:
    """Centres, unit w-x-y-z quaternions and shN after the half turn about z (see the module docstring)."""
    fields = kept.fields
    means = fields["means"].astype(np.float64) * np.array([-1.0, -1.0, 1.0])
    w, x, y, z = unit_quaternions(fields["quats"]).T
    turned = np.stack([-z, -y, x, w], axis=1)  # (0, 0, 0, 1) * (w, x, y, z): the turn, then the Gaussian's rotation
    parity = np.array([(-1.0) ** abs(n - l) for _, l, n in _sh_coefficients(kept.sh_degree)]).reshape(1, -1, 1)
    return {"means": means, "quats": turned, "shN": fields["shN"].astype(np.float64) * parity}


def _srgb_to_linear(colour: np.ndarray) -> np.ndarray:
    return np.where(colour <= 0.04045, colour / 12.92, ((colour + 0.055) / 1.055) ** 2.4)


def attribute_arrays(kept: Kept) -> dict[str, np.ndarray]:
    """Each attribute's values in glTF's frame, in the order they are written."""
    fields = kept.fields
    turned = to_gltf_frame(kept)
    opacity = sigmoid(fields["opacities"])
    colour = np.concatenate([_srgb_to_linear(base_colour(fields["sh0"])), opacity[:, None]], axis=1)
    arrays = {
        "POSITION": turned["means"].astype(np.float32),
        "COLOR_0": np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8),
        f"{EXTENSION}:ROTATION": turned["quats"][:, [1, 2, 3, 0]].astype(np.float32),  # wxyz -> xyzw
        f"{EXTENSION}:SCALE": np.exp(fields["scales"].astype(np.float64)).astype(np.float32),
        f"{EXTENSION}:OPACITY": opacity.astype(np.float32),
        f"{EXTENSION}:SH_DEGREE_0_COEF_0": fields["sh0"].reshape(-1, 3),
    }
    for index, l, n in _sh_coefficients(kept.sh_degree):
        arrays[f"{EXTENSION}:SH_DEGREE_{l}_COEF_{n}"] = turned["shN"][:, index].astype(np.float32)
    return arrays


def _document(arrays: dict[str, np.ndarray]):
    """The glTF document and its binary buffer: one buffer view and accessor per attribute."""
    import pygltflib

    blob, views, accessors = bytearray(), [], []
    for name, values in arrays.items():
        data = np.ascontiguousarray(values).tobytes()
        views.append(pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data),
                                          target=pygltflib.ARRAY_BUFFER))
        blob += data + b"\0" * (-len(data) % 4)  # every view starts 4-byte aligned
        count, width = values.shape[0], (values.shape[1] if values.ndim == 2 else 1)
        accessor = pygltflib.Accessor(
            bufferView=len(views) - 1, count=count, type={1: "SCALAR", 3: "VEC3", 4: "VEC4"}[width],
            componentType=pygltflib.UNSIGNED_BYTE if values.dtype == np.uint8 else pygltflib.FLOAT,
            normalized=True if values.dtype == np.uint8 else None)
        if name == "POSITION" and count:  # glTF requires the bounds of positions
            accessor.min, accessor.max = values.min(axis=0).tolist(), values.max(axis=0).tolist()
        accessors.append(accessor)
    primitive = pygltflib.Primitive(attributes=pygltflib.Attributes(**{name: i for i, name in enumerate(arrays)}),
                                    mode=pygltflib.POINTS, extensions={EXTENSION: dict(SPLAT_PROPERTIES)})
    document = pygltflib.GLTF2(
        asset=pygltflib.Asset(version="2.0", generator=GENERATOR), extensionsUsed=[EXTENSION],
        scene=0, scenes=[pygltflib.Scene(nodes=[0])], nodes=[pygltflib.Node(mesh=0)],
        meshes=[pygltflib.Mesh(primitives=[primitive])], accessors=accessors, bufferViews=views,
        buffers=[pygltflib.Buffer(byteLength=len(blob))])
    document.set_binary_blob(bytes(blob))
    return document


def write_glb(gaussians: Mapping[str, Any], out: Path) -> np.ndarray:
    """Write ``out``; returns the indices of the Gaussians dropped."""
    kept = kept_gaussians(gaussians, unit_rotations=True)
    document = _document(attribute_arrays(kept))
    with atomic_file(out, suffix=".glb") as tmp:
        document.save_binary(str(tmp))
    return kept.dropped


def is_own_glb(path: Path) -> bool:
    """A .glb whose asset.generator says `patchsplat export` wrote it."""
    import pygltflib

    try:
        return pygltflib.GLTF2().load_binary(str(path)).asset.generator == GENERATOR
    except Exception:  # noqa: BLE001 - pygltflib raises many types for a file that is not a .glb
        return False
