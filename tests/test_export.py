"""Exports (.splat, SPZ, glTF/.glb, PLY) read back by implementations no one here wrote.

The readers are @playcanvas/splat-transform (reads .splat and .spz, writes PLY and .glb: its .glb of the same
Gaussians is what ours is compared with) and the Khronos glTF validator, both from npm (tests/js, pinned by its
package-lock.json, installed by `make test`), and plyfile and pygltflib from PyPI for the files they write.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest
from plyfile import PlyData

from damage import assert_one_line
from patchsplat.export import EXTENSIONS, FORMATS, export_splats
from patchsplat.export.spz import fractional_bits
from patchsplat.gaussians import SH_C0
from patchsplat.splat_io import read_splats_ply, write_splats_ply

JS = Path(__file__).resolve().parent / "js"
SPLAT_TRANSFORM = JS / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
GLTF_VALIDATOR = JS / "validate_gltf.cjs"
NAN_INDEX = 7
EXTENSION = "KHR_gaussian_splatting"


def _node_reader(path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the exports are checked with npm readers (apt-get install nodejs npm)")
    if not path.exists():
        pytest.skip(f"{path.relative_to(JS.parent.parent)} is missing: run `make test` (it runs `npm ci` in tests/js)")


def splat_transform(source: Path, target: Path) -> None:
    """Convert with @playcanvas/splat-transform: the format of each file is its extension."""
    _node_reader(SPLAT_TRANSFORM)
    subprocess.run(["node", str(SPLAT_TRANSFORM), "-w", str(source), str(target)], check=True, capture_output=True,
                   timeout=120)


def gaussians(count: int = 40, seed: int = 0, reach: float = 5.0) -> dict[str, np.ndarray]:
    """Gaussians inside every format's range (colours in [0, 1], |SH| < 1), SH degree 3, one with a NaN."""
    rng = np.random.default_rng(seed)
    fields = {
        "means": rng.uniform(-reach, reach, (count, 3)),
        "scales": rng.uniform(-4.0, 0.0, (count, 3)),
        "quats": rng.normal(size=(count, 4)),
        "opacities": rng.uniform(-3.0, 3.0, count),
        "sh0": rng.uniform(-1.5, 1.5, (count, 1, 3)),
        "shN": rng.uniform(-0.5, 0.5, (count, 15, 3)),
    }
    fields["opacities"][NAN_INDEX] = np.nan
    return fields


def kept(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What every export must keep: all but the NaN Gaussian."""
    keep = np.arange(len(fields["means"])) != NAN_INDEX
    return {name: value[keep] for name, value in fields.items()}


def read_ply(path: Path) -> dict[str, np.ndarray]:
    """A 3DGS PLY as plyfile reads it (splat-transform's output), in the fields of patchsplat.gaussians."""
    vertex = PlyData.read(str(path))["vertex"].data

    def columns(prefix: str, count: int) -> np.ndarray:
        return np.array([vertex[f"{prefix}{i}"] for i in range(count)], dtype=np.float64).reshape(count, len(vertex)).T

    k = sum(name.startswith("f_rest_") for name in vertex.dtype.names) // 3
    return {
        "means": np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64),
        "scales": columns("scale_", 3), "quats": columns("rot_", 4), "opacities": np.asarray(vertex["opacity"], float),
        "sh0": columns("f_dc_", 3).reshape(-1, 1, 3),
        "shN": columns("f_rest_", 3 * k).reshape(len(vertex), 3, k).transpose(0, 2, 1),  # channel-major f_rest_
    }


def same_order(expected: dict, got: dict) -> dict:
    """``got`` reordered to match ``expected`` by nearest centre (a .splat is sorted by size x opacity)."""
    distances = np.linalg.norm(expected["means"][:, None] - got["means"][None], axis=2)
    order = distances.argmin(axis=1)
    assert len(set(order)) == len(order), "two Gaussians read back at one centre"
    return {name: value[order] for name, value in got.items()}


def unit(quats: np.ndarray) -> np.ndarray:
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    return quats * np.sign(quats[:, :1] + 1e-12)  # q and -q are one rotation


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def assert_round_trip(expected: dict, got: dict, tolerance: dict[str, float], sh_degree_kept: bool) -> None:
    np.testing.assert_allclose(got["means"], expected["means"], rtol=0, atol=tolerance["means"])
    np.testing.assert_allclose(got["scales"], expected["scales"], rtol=0, atol=tolerance["scales"])
    np.testing.assert_allclose(unit(got["quats"]), unit(expected["quats"]), rtol=0, atol=tolerance["quats"])
    np.testing.assert_allclose(sigmoid(got["opacities"]), sigmoid(expected["opacities"]), rtol=0, atol=tolerance["opacity"])
    np.testing.assert_allclose(got["sh0"], expected["sh0"], rtol=0, atol=tolerance["sh0"])
    if sh_degree_kept:
        np.testing.assert_allclose(got["shN"], expected["shN"], rtol=0, atol=tolerance["shN"])


# ---------------------------------------------------------------- the formats, read back


def test_splat_round_trip_through_splat_transform(tmp_path):
    fields = gaussians()
    result = export_splats(fields, "splat", tmp_path / "scene.splat")
    assert result.dropped_indices == (NAN_INDEX,) and result.n_written == 39
    assert (tmp_path / "scene.splat").stat().st_size == 39 * 32
    splat_transform(tmp_path / "scene.splat", tmp_path / "back.ply")
    expected = kept(fields)
    got = same_order(expected, read_ply(tmp_path / "back.ply"))
    # Float32 centres and scales; 8-bit colour, opacity and quaternion components (q * 128 + 128). No higher SH.
    assert_round_trip(expected, got, {"means": 1e-5, "scales": 1e-5, "quats": 0.02, "opacity": 0.6 / 255,
                                      "sh0": 0.6 / 255 / SH_C0}, sh_degree_kept=False)
    assert got["shN"].shape[1] == 0


def test_splat_is_sorted_by_size_times_opacity(tmp_path):
    fields = kept(gaussians())
    export_splats(fields, "splat", tmp_path / "scene.splat")
    records = np.fromfile(tmp_path / "scene.splat", dtype=np.dtype([("position", "<f4", 3), ("rest", "V20")]))
    importance = np.exp(fields["scales"].sum(axis=1)) * sigmoid(fields["opacities"])
    np.testing.assert_array_equal(records["position"], fields["means"][np.argsort(-importance)].astype(np.float32))


@pytest.mark.parametrize("reach", [5.0, 5000.0], ids=["near", "beyond-2048-units"])
def test_spz_round_trip_through_splat_transform(tmp_path, reach):
    fields = gaussians(reach=reach)
    result = export_splats(fields, "spz", tmp_path / "scene.spz")
    assert result.dropped_indices == (NAN_INDEX,) and result.n_written == 39
    splat_transform(tmp_path / "scene.spz", tmp_path / "back.ply")
    expected = kept(fields)
    got = read_ply(tmp_path / "back.ply")  # SPZ keeps the order
    # SPZ's precision: positions 24-bit fixed point (2^-12 units near the origin, coarser for a far-reaching
    # scene rather than clamped), log scales in steps of 1/16, colour (sh0 * 0.15 * 255) and opacity in bytes,
    # higher SH in steps of 1/128, rotations as 'smallest three' 9-bit components.
    step = 2.0 ** -fractional_bits(expected["means"])
    assert step == (2.0 ** -12 if reach < 2048 else 2.0 ** -10)
    expected["means"] = expected["means"].astype(np.float32)  # as exported; read back into float32 again
    assert_round_trip(expected, got, {"means": step / 2 + 2 * float(np.spacing(np.float32(reach))), "scales": 1 / 32 + 1e-6, "quats": 3e-3,
                                      "opacity": 0.6 / 255, "sh0": 0.6 / (0.15 * 255), "shN": 0.6 / 128},
                      sh_degree_kept=True)


def _accessors(path: Path) -> tuple[pygltflib.GLTF2, dict[str, np.ndarray]]:
    """Each attribute of the one primitive, as pygltflib loads the .glb."""
    document = pygltflib.GLTF2().load_binary(str(path))
    blob = document.binary_blob()
    widths = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
    arrays = {}
    for name, index in vars(document.meshes[0].primitives[0].attributes).items():
        if index is None:
            continue
        accessor = document.accessors[index]
        view = document.bufferViews[accessor.bufferView]
        dtype = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_BYTE: np.uint8}[accessor.componentType]
        count = accessor.count * widths[accessor.type]
        arrays[name] = np.frombuffer(blob, dtype, count, view.byteOffset + (accessor.byteOffset or 0)).reshape(accessor.count, -1)
    return document, arrays


def test_glb_matches_splat_transforms_glb_of_the_same_gaussians(tmp_path):
    fields = gaussians()
    result = export_splats(fields, "gltf", tmp_path / "ours.glb")
    assert result.dropped_indices == (NAN_INDEX,) and result.n_written == 39
    export_splats(fields, "ply", tmp_path / "scene.ply")
    splat_transform(tmp_path / "scene.ply", tmp_path / "theirs.glb")
    document, ours = _accessors(tmp_path / "ours.glb")
    _, theirs = _accessors(tmp_path / "theirs.glb")

    assert set(ours) == set(theirs)  # POSITION, COLOR_0 and the extension's 4 + 16 SH attributes
    assert {f"{EXTENSION}:SH_DEGREE_3_COEF_6", f"{EXTENSION}:ROTATION"} <= set(ours)
    primitive = document.meshes[0].primitives[0]
    assert primitive.mode == pygltflib.POINTS and document.extensionsUsed == [EXTENSION]
    assert primitive.extensions[EXTENSION] == {"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
                                               "projection": "perspective", "sortingMethod": "cameraDistance"}
    for name in ours:
        if name.endswith(":ROTATION"):  # the spec asks for unit quaternions; splat-transform stores them as trained
            np.testing.assert_allclose(ours[name], theirs[name] / np.linalg.norm(theirs[name], axis=1, keepdims=True),
                                       rtol=0, atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(ours[name], axis=1), 1.0, atol=1e-6)
        elif name == "COLOR_0":  # glTF's colours are linear: the spec's fallback decodes the sRGB base colour
            np.testing.assert_array_equal(ours[name][:, 3], theirs[name][:, 3])
            srgb = theirs[name][:, :3] / 255.0
            linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
            np.testing.assert_allclose(ours[name][:, :3] / 255.0, linear, rtol=0, atol=0.012)
        else:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # And the values are the Gaussians' own, in the units the spec names.
    expected = kept(fields)
    np.testing.assert_allclose(ours[f"{EXTENSION}:SCALE"], np.exp(expected["scales"]), rtol=1e-6)
    np.testing.assert_allclose(ours[f"{EXTENSION}:OPACITY"][:, 0], sigmoid(expected["opacities"]), rtol=1e-6)
    # in glTF's frame: the half turn about z negates x and y, and the SH of odd order (m = -1 and 1 here)
    np.testing.assert_allclose(ours["POSITION"], expected["means"] * [-1, -1, 1], rtol=1e-6)
    np.testing.assert_allclose(ours[f"{EXTENSION}:SH_DEGREE_2_COEF_4"], expected["shN"][:, 3 + 4], rtol=1e-6)
    np.testing.assert_allclose(ours[f"{EXTENSION}:SH_DEGREE_2_COEF_3"], -expected["shN"][:, 3 + 3], rtol=1e-6)


def test_glb_passes_the_khronos_validator(tmp_path):
    _node_reader(JS / "node_modules" / "gltf-validator")
    export_splats(gaussians(), "gltf", tmp_path / "scene.glb")
    report = json.loads(subprocess.run(["node", str(GLTF_VALIDATOR), str(tmp_path / "scene.glb")], check=True,
                                       capture_output=True, text=True, timeout=120).stdout)
    # The validator predates KHR_gaussian_splatting: it reports the extension as unknown and its
    # 'KHR_gaussian_splatting:' attribute names as invalid. Nothing else may be wrong (buffers, accessors, bounds).
    problems = [m for m in report["issues"]["messages"] if m["severity"] <= 1
                and not (m["code"] == "MESH_PRIMITIVE_INVALID_ATTRIBUTE" and f"/attributes/{EXTENSION}:" in m["pointer"])]
    assert problems == []


def test_ply_export_is_the_pipelines_ply(tmp_path):
    fields = gaussians()
    result = export_splats(fields, "ply", tmp_path / "scene.ply")
    assert result.dropped_indices == (NAN_INDEX,)
    got = read_ply(tmp_path / "scene.ply")
    expected = kept(fields)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name].astype(np.float32), rtol=0, atol=0, err_msg=name)


@pytest.mark.parametrize("format", FORMATS)
def test_a_zero_length_rotation_is_dropped_alone_where_rotations_are_unit(tmp_path, format):
    fields = kept(gaussians())
    fields["quats"][3] = 0.0
    result = export_splats(fields, format, tmp_path / f"scene{EXTENSIONS[format]}")
    assert result.dropped_indices == (() if format == "ply" else (3,))


# ---------------------------------------------------------------- the command


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "workspace"
    write_splats_ply(root / "data" / "merged" / "splats.ply", **gaussians(seed=1))
    write_splats_ply(root / "data" / "trained" / "p0" / "splats.ply", **kept(gaussians(count=12, seed=2)))
    return root


def _cli(*arguments: str) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "patchsplat.cli", "export", *arguments], capture_output=True,
                          text=True, timeout=300)


def test_export_command_writes_the_merged_scene_or_one_patch(workspace, tmp_path):
    done = _cli(str(workspace), "--format", "gltf", str(tmp_path / "scene.glb"))
    assert done.returncode == 0, done.stderr
    assert "39 Gaussians as gltf" in done.stdout
    done = _cli(str(workspace), "--patch", "p0", str(tmp_path / "p0.splat"))  # the format from the extension
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p0.splat").stat().st_size == 11 * 32  # 12 less the NaN one
    # Its own .glb is replaced; a file it did not write is not, and stays as it was.
    assert _cli(str(workspace), str(tmp_path / "scene.glb")).returncode == 0
    (tmp_path / "notes.ply").write_text("mine")
    assert_one_line(_cli(str(workspace), str(tmp_path / "notes.ply")), "notes.ply", "export")
    assert (tmp_path / "notes.ply").read_text() == "mine"
    assert_one_line(_cli(str(workspace), "--patch", "p0", str(tmp_path / "p0.splat")), "p0.splat", "new path")


def test_export_command_refuses_bad_input_in_one_line(workspace, tmp_path):
    assert_one_line(_cli(str(tmp_path / "nowhere"), str(tmp_path / "a.spz")), "nowhere", "workspace")
    assert_one_line(_cli(str(workspace), "--patch", "p3", str(tmp_path / "a.spz")), "p3", "train it first")
    assert_one_line(_cli(str(workspace), "--format", "spz", str(tmp_path / "a.glb")), "a.glb", ".spz")
    assert_one_line(_cli(str(workspace), str(tmp_path / "a.txt")), "a.txt", "--format")
    (workspace / "data" / "merged" / "splats.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n")
    assert_one_line(_cli(str(workspace), str(tmp_path / "a.spz")), "splats.ply")
    assert not (tmp_path / "a.spz").exists()


# ---------------------------------------------------------------- the merge stage


def test_merge_writes_the_chosen_formats_beside_the_ply(tmp_path):
    from conftest import build_scene
    from patchsplat.config import MergeConfig, SplitConfig, ValidateConfig
    from patchsplat.merge import merge_patches
    from patchsplat.split import split_scene

    build_scene(tmp_path / "scene", num_images=8, num_points=300)
    split_scene(tmp_path / "scene", tmp_path / "patches", SplitConfig(mode="grid", rows=1, cols=2, min_cameras=1),
                ValidateConfig(), progress=False)
    for seed, patch in enumerate(("p0", "p1")):
        write_splats_ply(tmp_path / "trained" / patch / "splats.ply", **kept(gaussians(count=30, seed=seed, reach=1.0)))
    config = MergeConfig(export_formats=["spz", "gltf"])
    for _ in range(2):  # and again: the merge folder with its exports is the merge's own to replace
        summary = merge_patches(tmp_path / "patches", tmp_path / "trained", tmp_path / "merged", config)
    assert summary["exports"] == {"spz": "splats.spz", "gltf": "splats.glb"}
    assert sorted(p.name for p in (tmp_path / "merged").iterdir() if not p.name.startswith(".")) == [
        "merge.json", "splats.glb", "splats.ply", "splats.spz"]
    splat_transform(tmp_path / "merged" / "splats.spz", tmp_path / "back.ply")
    merged = read_splats_ply(tmp_path / "merged" / "splats.ply")
    back = read_ply(tmp_path / "back.ply")
    assert len(back["means"]) == summary["num_gaussians"] == len(merged["means"])
    np.testing.assert_allclose(back["means"], merged["means"].numpy(), atol=2.0 ** -13 + 1e-6)
    _, glb = _accessors(tmp_path / "merged" / "splats.glb")
    np.testing.assert_array_equal(glb["POSITION"], merged["means"].numpy() * np.float32([-1, -1, 1]))


def test_merge_export_formats_default_to_none_and_are_checked():
    from pydantic import ValidationError

    from patchsplat.config import MergeConfig, load_params

    assert MergeConfig().export_formats == [] == load_params(Path(__file__).resolve().parents[1] / "params.yaml").merge.export_formats
    with pytest.raises(ValidationError):
        MergeConfig(export_formats=["obj"])
