"""The headline metrics files: numbers only, few, rounded, and no key in two files (so DVC's tables stay narrow)."""

from __future__ import annotations

import json

import pytest

from patchsplat.errors import InputError
from patchsplat.headline import HEADLINES, EvaluateHeadline, MergeHeadline, SplitHeadline, ValidateHeadline
from patchsplat.train.records import TrainedMetrics


def _trained(psnr: float, attempts: int) -> TrainedMetrics:
    return TrainedMetrics(train_loss=0.02, heldout_psnr=psnr, heldout_ssim=0.9, heldout_views=3, steps=500,
                          steps_per_second=2.5, gaussians=1000, gaussians_dropped_non_finite=0, peak_memory_mb=100.0,
                          memory_estimate_mb=90.0, memory_plan="memory plan: fits", resolution_factor=1, backend="torch",
                          device="cpu", attempts=attempts, recovered=attempts > 1, resumed=False)


def test_no_key_is_in_two_headline_files():
    """`dvc exp show` heads a key found in two files with the file's path: a 30-character column each."""
    keys = [key for headline in HEADLINES for key in headline.model_fields]
    assert len(keys) == len(set(keys)), keys


def test_evaluate_headline_keeps_numbers_rounded_and_leaves_out_what_was_not_measured(tmp_path):
    report = {"psnr": 29.238229115804035, "ssim": 0.9075933049122492, "lpips": None,
              "lpips_status": "unavailable: the lpips package cannot be imported", "chamfer": 0.13731346698568891,
              "fscore": 0.810910317437431, "resolution": "160x120 (full resolution)", "num_views": 12}
    path = tmp_path / "metrics" / "evaluate.json"
    EvaluateHeadline.from_report(report).save(path)
    assert json.loads(path.read_text()) == {"psnr": 29.24, "ssim": 0.9076, "chamfer": 0.1373, "fscore": 0.8109}
    assert EvaluateHeadline.load(path).psnr == 29.24


def test_merge_headline_sums_up_the_patches():
    headline = MergeHeadline.from_patches(72800, [_trained(27.37, 1), _trained(26.77, 3), _trained(28.96, 1)])
    assert headline.numbers() == {"gaussians": 72800, "attempts": 5, "patch_psnr": 26.77}


def test_validate_and_split_headlines_come_from_their_reports():
    assert ValidateHeadline.from_report({"num_warnings": 2, "num_images": 96, "scene_dir": "data/scene"}).numbers() == {"warnings": 2}
    assert SplitHeadline.from_report({"num_patches": 4, "decision": "grid mode: 4 patches"}).numbers() == {"patches": 4}


def test_a_damaged_headline_file_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "evaluate.json"
    path.write_text('{"psnr": "good"}')
    with pytest.raises(InputError, match="evaluate.json") as raised:
        EvaluateHeadline.load(path)
    assert "\n" not in raised.value.one_line()
