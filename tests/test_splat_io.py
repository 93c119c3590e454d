"""The INRIA 3DGS PLY: exact round trip, property order, agreement with gsplat's exporter, NaN handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plyfile import PlyData

from patchsplat.errors import InputError
from patchsplat.gaussians import GAUSSIAN_FIELDS
from patchsplat.splat_io import (
    inria_property_names,
    inverse_transform_splats,
    read_splats_ply,
    transform_splats,
    write_splats_ply,
)

# The property list of a degree-3 INRIA 3DGS point_cloud.ply, written out by hand.
INRIA_DEGREE3_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def random_splats(n: int = 50, num_rest: int = 15, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "means": randn(n, 3) * 3,
        "scales": randn(n, 3) - 4,
        "quats": randn(n, 4),
        "opacities": randn(n),
        "sh0": randn(n, 1, 3),
        "shN": randn(n, num_rest, 3) * 0.1,
    }


def test_round_trip_is_exact(tmp_path):
    splats = random_splats()
    report = write_splats_ply(tmp_path / "splats.ply", **splats)
    assert report == {"path": str(tmp_path / "splats.ply"), "n_written": 50, "n_dropped": 0, "dropped_indices": []}
    loaded = read_splats_ply(tmp_path / "splats.ply")
    assert set(loaded) == set(GAUSSIAN_FIELDS)
    for key in GAUSSIAN_FIELDS:
        assert loaded[key].dtype == torch.float32
        assert loaded[key].shape == splats[key].shape, key
        assert torch.equal(loaded[key], splats[key]), key


def test_round_trip_without_higher_sh_and_from_numpy_and_gpu_style_inputs(tmp_path):
    splats = random_splats(n=7, num_rest=0)
    as_numpy = {key: value.numpy().astype(np.float64) for key, value in splats.items()}
    as_numpy["opacities"] = as_numpy["opacities"][:, None]  # [N, 1] is tolerated
    write_splats_ply(tmp_path / "a.ply", **as_numpy)
    loaded = read_splats_ply(tmp_path / "a.ply")
    assert loaded["shN"].shape == (7, 0, 3)
    for key in GAUSSIAN_FIELDS:
        assert torch.equal(loaded[key], splats[key]), key
    params = {key: torch.nn.Parameter(value.clone()) for key, value in splats.items()}
    write_splats_ply(tmp_path / "b.ply", **params)  # parameters that require grad are fine
    assert torch.equal(read_splats_ply(tmp_path / "b.ply")["means"], splats["means"])


def test_header_matches_the_inria_layout_exactly(tmp_path):
    write_splats_ply(tmp_path / "s.ply", **random_splats(n=4, num_rest=15))
    assert inria_property_names(15) == INRIA_DEGREE3_PROPERTIES
    ply = PlyData.read(str(tmp_path / "s.ply"))
    assert [element.name for element in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    assert [prop.name for prop in vertex.properties] == INRIA_DEGREE3_PROPERTIES
    assert all(prop.val_dtype in ("f4", "float32", "float") for prop in vertex.properties)
    assert vertex.count == 4
    header = (tmp_path / "s.ply").read_bytes().split(b"end_header\n")[0].decode()
    assert header.splitlines()[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 4"]
    assert all(line.startswith("property float ") for line in header.splitlines()[3:])
    # The normals INRIA writes are zeros.
    for name in ("nx", "ny", "nz"):
        assert np.all(vertex[name] == 0)
    # Binary payload: 4 splats x 62 float32.
    size = (tmp_path / "s.ply").stat().st_size
    assert size - len(header) - len("end_header\n") == 4 * 62 * 4


def test_f_rest_is_channel_major_like_inria():
    # f_rest_{c*K + k} = shN[:, k, c]: all of R, then G, then B.
    splats = random_splats(n=3, num_rest=15)
    from patchsplat.splat_io import _flat_columns

    columns, num_rest = _flat_columns(**splats)
    names = inria_property_names(num_rest)
    for channel in range(3):
        for k in range(num_rest):
            column = names.index(f"f_rest_{channel * num_rest + k}")
            assert torch.equal(torch.from_numpy(columns[:, column]), splats["shN"][:, k, channel])


def read_gsplat_export(tmp_path, splats: dict[str, torch.Tensor]):
    """Write ``splats`` with gsplat 1.5.3's own exporter and read it back with plyfile."""
    from gsplat import export_splats

    export_splats(
        means=splats["means"],
        scales=splats["scales"],
        quats=splats["quats"],
        opacities=splats["opacities"],
        sh0=splats["sh0"],
        shN=splats["shN"],
        format="ply",
        save_to=str(tmp_path / "gsplat.ply"),
    )
    return PlyData.read(str(tmp_path / "gsplat.ply"))["vertex"]


def test_every_property_matches_gsplats_export(tmp_path):
    splats = random_splats(n=20, num_rest=15, seed=4)
    ours = write_splats_ply(tmp_path / "ours.ply", **splats)
    assert ours["n_written"] == 20
    ours_vertex = PlyData.read(str(tmp_path / "ours.ply"))["vertex"]
    gsplat_vertex = read_gsplat_export(tmp_path, splats)
    gsplat_names = [prop.name for prop in gsplat_vertex.properties]
    # gsplat omits the (zero) normals and is otherwise in the same order.
    assert gsplat_names == [name for name in INRIA_DEGREE3_PROPERTIES if name not in ("nx", "ny", "nz")]
    for name in gsplat_names:
        np.testing.assert_array_equal(ours_vertex[name], gsplat_vertex[name], err_msg=name)
    # And gsplat's file reads back through our reader as the same parameters.
    loaded = read_splats_ply(tmp_path / "gsplat.ply")
    for key in GAUSSIAN_FIELDS:
        assert torch.equal(loaded[key], splats[key]), key


def test_a_nan_opacity_drops_only_that_gaussian(tmp_path):
    splats = random_splats(n=10)
    splats["opacities"][3] = float("nan")
    splats["shN"][7, 2, 1] = float("inf")
    splats["means"] = splats["means"].double()
    splats["means"][8, 0] = 1e39  # finite in float64, beyond float32: would be written as inf
    report = write_splats_ply(tmp_path / "s.ply", **splats)
    assert report["n_written"] == 7
    assert report["n_dropped"] == 3
    assert report["dropped_indices"] == [3, 7, 8]
    loaded = read_splats_ply(tmp_path / "s.ply")
    keep = [i for i in range(10) if i not in (3, 7, 8)]
    for key in GAUSSIAN_FIELDS:
        assert torch.equal(loaded[key], splats[key][keep].float()), key
    # The upstream bug this avoids: gsplat 1.5.3 drops every splat for one NaN opacity.
    only_nan_opacity = random_splats(n=10)
    only_nan_opacity["opacities"][3] = float("nan")
    assert read_gsplat_export(tmp_path, only_nan_opacity).count == 0
    assert write_splats_ply(tmp_path / "t.ply", **only_nan_opacity)["n_written"] == 9


def test_written_file_loads_in_plyfile_with_the_expected_count(tmp_path):
    write_splats_ply(tmp_path / "deep" / "dir" / "s.ply", **random_splats(n=33, num_rest=3))
    ply = PlyData.read(str(tmp_path / "deep" / "dir" / "s.ply"))
    assert ply["vertex"].count == 33
    assert len(ply["vertex"].properties) == 6 + 3 + 9 + 1 + 3 + 4
    # Atomic write: no temporary siblings left behind.
    assert [p.name for p in (tmp_path / "deep" / "dir").iterdir()] == ["s.ply"]


def test_writing_zero_splats_gives_a_valid_empty_file(tmp_path):
    splats = random_splats(n=2)
    splats["means"][:] = float("nan")
    report = write_splats_ply(tmp_path / "s.ply", **splats)
    assert report["n_written"] == 0 and report["dropped_indices"] == [0, 1]
    assert read_splats_ply(tmp_path / "s.ply")["means"].shape == (0, 3)


@pytest.mark.parametrize(
    ("key", "bad", "pattern"),
    [
        ("means", torch.zeros(5, 2), r"means must have shape \[N, 3\] with N=5, got \(5, 2\)"),
        ("quats", torch.zeros(5, 3), r"quats must have shape \[N, 4\]"),
        ("opacities", torch.zeros(4), r"opacities must have shape \[N\] with N=5, got \(4,\)"),
        ("sh0", torch.zeros(5, 3), r"sh0 must have shape \[N, 1, 3\]"),
        ("shN", torch.zeros(5, 3, 15), r"shN must have shape \[N, K, 3\]"),
    ],
)
def test_wrong_shapes_are_rejected(tmp_path, key, bad, pattern):
    splats = random_splats(n=5)
    splats[key] = bad
    with pytest.raises(ValueError, match=pattern):
        write_splats_ply(tmp_path / "s.ply", **splats)
    assert not (tmp_path / "s.ply").exists()


def test_reader_rejects_files_that_are_not_splats(tmp_path):
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(InputError, match="cannot be read as a PLY"):
        read_splats_ply(tmp_path / "junk.ply")
    points = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    from plyfile import PlyElement

    PlyData([PlyElement.describe(points, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(InputError, match=r"missing the vertex properties \['f_dc_0'"):
        read_splats_ply(tmp_path / "points.ply")


def test_transform_maps_canonical_to_world_and_back():
    splats = random_splats(n=6)
    scale, centre = 0.25, [10.0, -2.0, 3.5]
    world = transform_splats(splats, scale, centre)
    assert torch.allclose(world["means"], splats["means"] * 4 + torch.tensor(centre))
    assert torch.allclose(world["scales"], splats["scales"] + math.log(4))
    # Actual sizes scale like the positions: exp(log s - log(scale)) = s / scale.
    assert torch.allclose(world["scales"].exp(), splats["scales"].exp() / scale)
    for key in ("quats", "opacities", "sh0", "shN"):
        assert world[key] is splats[key]
    back = inverse_transform_splats(world, scale, centre)
    for key in GAUSSIAN_FIELDS:
        assert torch.allclose(back[key], splats[key], atol=1e-5), key
    # The inverse is itself a transform_splats with (1/scale, -centre*scale).
    again = transform_splats(world, 1 / scale, [-c * scale for c in centre])
    assert torch.allclose(again["means"], splats["means"], atol=1e-5)
    with pytest.raises(ValueError, match="scale must be a finite positive"):
        transform_splats(splats, 0.0, centre)
    with pytest.raises(ValueError, match="translation must be 3 finite numbers"):
        transform_splats(splats, 1.0, [1.0, 2.0])


def test_transformed_splats_round_trip_through_the_file(tmp_path):
    splats = transform_splats(random_splats(n=9), 2.0, [1.0, 2.0, 3.0])
    write_splats_ply(tmp_path / "w.ply", **splats)
    loaded = read_splats_ply(tmp_path / "w.ply")
    for key in GAUSSIAN_FIELDS:
        assert torch.equal(loaded[key], splats[key]), key
