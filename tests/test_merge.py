"""Merging: every Gaussian from exactly one patch's core cell, and no seam where patches meet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from patchsplat import metrics
from patchsplat.colmap_io.arrays import read_model_arrays
from patchsplat.config import MergeConfig, SplitConfig, TrainConfig, ValidateConfig, deep_merge
from patchsplat.demo import generate_demo_scene, with_overrides
from patchsplat.errors import InputError
from patchsplat.merge import merge_patches
from patchsplat.prepare import prepare_patch
from patchsplat.scene_views import SceneCameras, load_image, render_world
from patchsplat.splat_io import read_splats_ply, write_splats_ply
from patchsplat.split import split_scene
from patchsplat.split.partition import Cell
from patchsplat.train.loop import train_patch


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small demo split into 1 x 2 patches, each trained briefly."""
    root = tmp_path_factory.mktemp("merge")
    generate_demo_scene(with_overrides(None, num_cameras=40, width=64, height=48, num_points=6000), root / "scene", progress=False)
    split_scene(root / "scene", root / "patches", SplitConfig(mode="grid", rows=1, cols=2, min_cameras=1), ValidateConfig(), progress=False)
    config = TrainConfig.model_validate(deep_merge(TrainConfig().model_dump(), {
        "steps": 300, "scales_lr": 0.02, "opacities_lr": 0.2, "eval_every": 300, "checkpoint_every": 300, "backend": "torch",
        "strategy": {"refine_start_iter": 100, "refine_stop_iter": 250, "refine_every": 50},
    }))
    for patch in ("p0", "p1"):
        prepare_patch(root / "patches" / patch, root / "prepared" / patch, config)
        train_patch(root / "patches" / patch, root / "prepared" / patch, root / "trained" / patch, config,
                    progress=False, log=lambda message: None)
    return root


def _fake_splats(means: np.ndarray) -> dict:
    count = len(means)
    return {"means": torch.tensor(means, dtype=torch.float32), "scales": torch.full((count, 3), -3.0),
            "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(count, 1), "opacities": torch.zeros(count),
            "sh0": torch.zeros((count, 1, 3)), "shN": torch.zeros((count, 15, 3))}


def test_every_gaussian_comes_from_exactly_one_core_cell(trained, tmp_path):
    split = json.loads((trained / "patches" / "split.json").read_text())
    rotation = np.asarray(split["world_to_aligned"])
    rng = np.random.default_rng(0)
    # Both patches' splats scattered over the whole scene and beyond, including far outside every finite cell edge.
    positions = {patch["id"]: rng.uniform(-40, 40, (500, 3)) for patch in split["patches"]}
    for patch_id, means in positions.items():
        write_splats_ply(tmp_path / "trained" / patch_id / "splats.ply", **_fake_splats(means))
    summary = merge_patches(trained / "patches", tmp_path / "trained", tmp_path / "merged", MergeConfig())
    merged = read_splats_ply(tmp_path / "merged" / "splats.ply")
    xy = (merged["means"].double().numpy() @ rotation.T)[:, :2]
    owners = np.stack([Cell.from_list(p["core_cell"]).contains(xy) for p in split["patches"]]).sum(axis=0)
    assert np.all(owners == 1), "a merged Gaussian lies in no core cell, or in two"
    # Each patch's own Gaussians were kept exactly when inside its core cell, none twice.
    expected = sum(int(Cell.from_list(p["core_cell"]).contains((positions[p["id"]] @ rotation.T)[:, :2]).sum()) for p in split["patches"])
    assert summary["num_gaussians"] == expected == len(merged["means"])
    assert sum(row["kept"] + row["outside_core"] for row in summary["patches"]) == 1000
    assert len(np.unique(merged["means"].numpy(), axis=0)) == len(merged["means"])


def test_a_missing_patch_is_a_one_line_error_and_nothing_is_written(trained, tmp_path):
    write_splats_ply(tmp_path / "trained" / "p0" / "splats.ply", **_fake_splats(np.zeros((3, 3))))
    with pytest.raises(InputError) as error:
        merge_patches(trained / "patches", tmp_path / "trained", tmp_path / "merged", MergeConfig())
    assert "p1" in str(error.value) and "splats.ply" in str(error.value)
    assert not (tmp_path / "merged").exists()


def test_views_straddling_two_patches_show_no_seam(trained, tmp_path):
    merge_patches(trained / "patches", trained / "trained", tmp_path / "merged", MergeConfig())
    merged = read_splats_ply(tmp_path / "merged" / "splats.ply")
    split = json.loads((trained / "patches" / "split.json").read_text())
    rotation = np.asarray(split["world_to_aligned"])
    scene = read_model_arrays(trained / "scene" / "sparse" / "0")
    cameras = SceneCameras(trained / "scene" / "sparse" / "0", trained / "scene" / "images", scene)
    cores = [Cell.from_list(p["core_cell"]) for p in split["patches"]]
    point_owner = np.argmax(np.stack([core.contains((scene.xyz @ rotation.T)[:, :2]) for core in cores]), axis=0)
    index_of = {name: i for i, name in enumerate(scene.image_names)}
    straddling = []
    for camera in cameras.heldout:
        seen = point_owner[scene.obs_point[scene.obs_image == index_of[camera.name]]]
        shares = np.bincount(seen, minlength=2) / max(len(seen), 1)
        if shares.min() >= 0.2:
            straddling.append(camera)
    assert straddling, "the demo's oblique views should see both cells"
    patches = {p["id"]: (read_splats_ply(trained / "trained" / p["id"] / "splats.ply"), set(
        json.loads((trained / "patches" / p["id"] / "patch.json").read_text())["image_names"])) for p in split["patches"]}
    for camera in straddling:
        truth = torch.from_numpy(load_image(camera)).permute(2, 0, 1)[None]

        def psnr_of(splats) -> float:
            colour, _, _ = render_world(splats, camera, cameras.frame, backend="torch")
            return float(metrics.psnr(torch.from_numpy(colour).permute(2, 0, 1)[None], truth)[0])

        # Each patch renders the view as well as it learnt its side of it; a seam would make the merged
        # scene worse than the patches it is made of.
        own = [psnr_of(splats) for splats, names in patches.values() if camera.name in names]
        merged_psnr = psnr_of(merged)
        assert merged_psnr >= float(np.mean(own)) - 0.5, f"{camera.name}: merged {merged_psnr:.2f} dB vs the patches' {own}"
