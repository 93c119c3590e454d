"""Training profiles: settings left null follow the machine and the patch; written ones always win."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from patchsplat import profiles
from patchsplat.config import TrainConfig, parse_params
from patchsplat.profiles import FULL, PREVIEW, PatchFacts, resolve_train

ROOT = Path(__file__).resolve().parents[1]
# A user's object orbit like cup77: 67 training images of 800 x 600, 9,262 SfM points.
ORBIT = PatchFacts(train_images=67, width=800, height=600, initial_points=9262, mean_track_length=6.2)


def test_preview_fits_a_capture_to_a_cpu():
    resolved = resolve_train(TrainConfig(), ORBIT, profile="preview")
    config = resolved.config
    assert resolved.profile == "preview"
    assert config.resolution_factor == 2                  # 800 x 600 -> 400 x 300: long side <= 400
    assert config.steps == round(PREVIEW.steps_per_image * 67, -2)
    assert config.strategy.refine_stop_iter < config.steps and config.sh_degree_interval < config.steps
    # The Gaussian count grows well beyond the sparse points (the 5,363-Gaussian result was the failure) ...
    assert config.strategy.cap_max >= PREVIEW.initial_growth * ORBIT.initial_points
    # ... and reaches the cap by 60 % of the steps at this growth rate.
    refinements = (PREVIEW.grown_by * config.steps - config.strategy.refine_start_iter) // config.strategy.refine_every
    assert ORBIT.initial_points * (1 + config.strategy.growth_rate) ** refinements >= 0.99 * config.strategy.cap_max
    assert resolved.origins["steps"].startswith("profile preview: ")


@pytest.mark.parametrize(("images", "steps"), [(10, PREVIEW.min_steps), (1000, PREVIEW.max_steps)])
def test_preview_steps_stay_in_their_range(images, steps):
    facts = PatchFacts(images, 160, 120, 5000, 5.0)
    assert resolve_train(TrainConfig(), facts, profile="preview").config.steps == steps


def test_full_is_gsplats_recipe_scaled_with_the_images():
    small = resolve_train(TrainConfig(), ORBIT, profile="full").config
    assert (small.steps, small.strategy.refine_start_iter, small.strategy.refine_stop_iter, small.strategy.refine_every,
            small.sh_degree_interval) == (30_000, 500, 25_000, 100, 1_000)
    assert (small.scales_lr, small.opacities_lr, small.lr_scale, small.strategy.cap_max, small.resolution_factor) == (5e-3, 5e-2, 1.0, 1_000_000, 1)
    large = resolve_train(TrainConfig(), PatchFacts(1200, 4000, 3000, 10**6, 5.0), profile="full").config
    assert large.steps == 120_000 and large.strategy.refine_stop_iter == 100_000   # 1200 images / 300 = 4x
    assert large.resolution_factor == 3                                             # 4000 px -> 1333 <= 1600


def test_written_settings_win_and_derived_ones_follow_them():
    params = parse_params({"train": {"steps": 5000, "strategy": {"cap_max": 7000}},
                           "patch_overrides": {"p0": {}, "p1": {"steps": 800, "init_scale": 0.3}}})
    p0 = resolve_train(params.train, ORBIT, params.patch_overrides["p0"], "p0", profile="preview")
    assert p0.config.steps == 5000 and p0.origins["steps"] == "params.yaml"
    assert p0.config.strategy.cap_max == 7000 and p0.origins["strategy.cap_max"] == "params.yaml"
    assert p0.config.strategy.refine_stop_iter == round(PREVIEW.refine_stop * 5000)   # the schedule follows steps
    assert p0.origins["init_scale"] == "default" and p0.origins["strategy.refine_stop_iter"].startswith("profile preview")
    p1 = resolve_train(params.train, ORBIT, params.patch_overrides["p1"], "p1", profile="preview")
    assert (p1.config.steps, p1.config.init_scale) == (800, 0.3)
    assert p1.origins["steps"] == p1.origins["init_scale"] == "patch_overrides.p1"
    assert p1.config.eval_every == 800 // PREVIEW.evaluations


def test_auto_is_full_on_a_gpu_machine_and_preview_on_a_cpu(monkeypatch):
    monkeypatch.setattr(profiles, "machine_profile", lambda: "full")
    assert resolve_train(TrainConfig(), ORBIT).profile == "full"
    monkeypatch.setattr(profiles, "machine_profile", lambda: "preview")
    assert resolve_train(TrainConfig(), ORBIT).profile == "preview"
    assert resolve_train(TrainConfig(profile="full"), ORBIT).profile == "full"


def test_every_profile_setting_is_filled_and_valid():
    for name in profiles.PROFILE_NAMES:
        for kind in ("mcmc", "default"):
            config = resolve_train(TrainConfig.model_validate({"strategy": {"kind": kind}}), ORBIT, profile=name).config
            assert profiles.is_resolved(config), (name, kind)


def _readme_profile_table() -> dict[str, tuple[str, str]]:
    """README's table of the profiles: setting -> (preview, full) as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("<!-- profiles-table -->"):text.index("<!-- /profiles-table -->")]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("setting", "") and not set(cells[0]) <= {"-", ":"}:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_the_documented_profile_values_are_the_ones_that_run():
    """README's profile table, params.yaml's values and config.py's defaults agree with the code."""
    rows = _readme_profile_table()
    numbers = lambda text: [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", text)]
    expected = {
        "max_image_size": ([PREVIEW.max_image_size], [FULL.max_image_size]),
        "steps": ([PREVIEW.steps_per_image, PREVIEW.min_steps, PREVIEW.max_steps], [FULL.steps, 1, FULL.images_per_scale]),
        "scales_lr": ([PREVIEW.scales_lr], [FULL.scales_lr]),
        "opacities_lr": ([PREVIEW.opacities_lr], [FULL.opacities_lr]),
        "lr_scale": ([PREVIEW.lr_reference_steps, 1, PREVIEW.max_lr_scale], [FULL.lr_scale]),
        "strategy.opacity_reg": ([PREVIEW.opacity_reg], [FULL.opacity_reg]),
        "strategy.cap_max": ([PREVIEW.gaussians_per_kilopixel, PREVIEW.initial_growth, PREVIEW.min_cap, PREVIEW.max_cap],
                             [FULL.cap_max]),
        "split.megapixels_per_patch": ([PREVIEW.megapixels_per_patch], [FULL.megapixels_per_patch]),
    }
    for key, (preview, full) in expected.items():
        assert key in rows, f"README's profile table has no row {key}"
        assert numbers(rows[key][0]) == pytest.approx(preview), (key, rows[key][0])
        assert numbers(rows[key][1]) == pytest.approx(full), (key, rows[key][1])
    # params.yaml leaves the profile's settings null and writes the code's defaults for the others.
    import yaml

    written = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["train"]
    defaults = TrainConfig().model_dump(mode="json")
    for key, value in defaults.items():
        if key not in ("recovery",):
            assert written[key] == value, f"params.yaml train.{key} is {written[key]!r}, config.py's default {value!r}"


def test_config_command_says_where_every_training_setting_came_from(tmp_path):
    from patchsplat.demo import generate_demo_scene, with_overrides
    from patchsplat.config import SplitConfig, ValidateConfig
    from patchsplat.split import split_scene

    generate_demo_scene(with_overrides(None, num_cameras=16, width=48, height=36, num_points=2000), tmp_path / "scene", progress=False)
    split_scene(tmp_path / "scene", tmp_path / "data" / "patches", SplitConfig(mode="grid", rows=1, cols=2, min_cameras=1),
                ValidateConfig(), progress=False)
    (tmp_path / "params.yaml").write_text("train:\n  profile: preview\n  init_scale: 0.5\n"
                                          "patch_overrides:\n  p0: {}\n  p1: {steps: 321}\n")
    completed = subprocess.run([sys.executable, "-m", "patchsplat.cli", "config", "--patch", "p1"], cwd=tmp_path,
                               capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "200"})
    assert completed.returncode == 0, completed.stderr
    rows = {line.split("│")[1].strip(): line for line in completed.stdout.splitlines() if line.count("│") >= 3}
    assert "321" in rows["steps"] and "patch_overrides.p1" in rows["steps"]
    assert "0.5" in rows["init_scale"] and "params.yaml" in rows["init_scale"]
    assert "profile preview" in rows["strategy.cap_max"] and "default" in rows["ssim_lambda"]


@pytest.mark.parametrize(("written_steps", "scale"), [(60, 2.0), (250, 2.0), (500, 1.414), (1000, 1.0), (1500, 1.0)])
def test_preview_rates_grow_as_the_run_shortens(written_steps, scale):
    """A short run takes larger steps (measured: bench/RESULTS.md); written steps carry the rates with them."""
    from patchsplat.train.model import learning_rates

    config = resolve_train(TrainConfig(steps=written_steps), ORBIT, profile="preview").config
    assert config.lr_scale == pytest.approx(scale, abs=1e-3)
    rates = learning_rates(config, 1.0)
    assert rates["means"] == pytest.approx(config.means_lr * scale, rel=1e-3)
    assert rates["opacities"] == pytest.approx(PREVIEW.opacities_lr * scale, rel=1e-3)
    assert rates["appearance"] == config.appearance.lr   # not a Gaussian rate


def test_a_written_rate_scale_wins_and_full_keeps_gsplats_rates():
    assert resolve_train(TrainConfig(steps=250, lr_scale=1.0), ORBIT, profile="preview").config.lr_scale == 1.0
    assert resolve_train(TrainConfig(steps=250), ORBIT, profile="full").config.lr_scale == 1.0
