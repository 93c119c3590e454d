"""The typed records between prepare, training and their readers: what they write, and one-line errors for bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import trained_metrics
from patchsplat.errors import InputError
from patchsplat.prepare import INIT_FILE, PREPARED_FIELDS, SUMMARY_FILE, CanonicalFrame, PreparedPatch
from patchsplat.train.records import Attempt, AttemptsRecord, TrainedMetrics


def prepared_patch(count: int = 5) -> PreparedPatch:
    rng = np.random.default_rng(0)
    return PreparedPatch(
        patch_id="p0", frame=CanonicalFrame(0.5, np.array([1.0, 2.0, 3.0])), num_cameras=4,
        settings={"init_scale": 1.0, "init_opacity": 0.1, "knn_neighbours": 3, "max_initial_points": 0},
        gaussians={"means": rng.random((count, 3), dtype=np.float32), "scales": np.full((count, 3), -2.0, np.float32),
                   "opacities": np.zeros(count, np.float32), "sh0": rng.random((count, 1, 3), dtype=np.float32)},
        point_ids=np.arange(count, dtype=np.int64),
    )


def test_a_prepared_patch_is_read_back_as_written(tmp_path):
    written = prepared_patch()
    written.save(tmp_path / "prepared")
    read = PreparedPatch.load(tmp_path / "prepared")
    assert read.patch_id == "p0" and read.num_cameras == 4 and read.init_scale == 1.0
    assert read.frame.scale == 0.5 and read.frame.centre.tolist() == [1.0, 2.0, 3.0]
    for name in PREPARED_FIELDS:
        assert np.array_equal(read.gaussians[name], written.gaussians[name]) and read.gaussians[name].dtype == np.float32
    assert np.array_equal(read.point_ids, written.point_ids)
    with np.load(tmp_path / "prepared" / INIT_FILE, allow_pickle=False) as archive:
        assert archive.files == ["point_ids", "means", "scales", "opacities", "sh0"]
    summary = json.loads((tmp_path / "prepared" / SUMMARY_FILE).read_text())
    assert list(summary) == ["patch", "canonical_frame", "settings", "num_gaussians", "num_cameras",
                             "initial_scale_canonical", "initial_scale_world"]
    assert summary["num_gaussians"] == 5 and summary["initial_scale_world"]["median"] == pytest.approx(np.exp(-2.0) / 0.5)


def test_a_damaged_prepared_patch_is_one_line_naming_the_file_and_key(tmp_path):
    prepared_patch().save(tmp_path / "prepared")
    summary_file, init_file = tmp_path / "prepared" / SUMMARY_FILE, tmp_path / "prepared" / INIT_FILE
    summary = json.loads(summary_file.read_text())

    def problem() -> InputError:
        with pytest.raises(InputError) as error:
            PreparedPatch.load(tmp_path / "prepared")
        assert error.value.kind == "corrupt_file"
        return error.value

    summary_file.write_text(json.dumps({**summary, "settings": {"init_opacity": 0.1}}))
    assert problem().where == str(summary_file) and "'init_scale'" in str(problem())
    summary_file.write_text(json.dumps({**summary, "canonical_frame": {"scale": -1, "centre": [0, 0, 0]}}))
    assert problem().where == str(summary_file) and "canonical_frame" in str(problem())
    summary_file.write_text(json.dumps(summary))
    np.savez(init_file, point_ids=np.arange(2), means=np.zeros((2, 3)), scales=np.zeros((2, 3)), opacities=np.zeros(2))
    assert problem().where == str(init_file) and "'sh0'" in str(problem())
    init_file.write_bytes(b"PK\x03\x04 cut short")
    assert problem().where == str(init_file)


def test_metrics_json_has_the_fields_in_order_and_bad_values_are_named(tmp_path):
    path = tmp_path / "metrics.json"
    trained_metrics(resolution_factor=2).save(path)
    content = json.loads(path.read_text())
    assert list(content) == list(TrainedMetrics.model_fields) and content["resolution_factor"] == 2
    assert TrainedMetrics.load(path) == trained_metrics(resolution_factor=2)
    for changed, named in (({"heldout_psnr": None}, "heldout_psnr"), ({"recovered": 1}, "recovered"),
                           ({"resolution_factor": True}, "resolution_factor")):
        path.write_text(json.dumps({**content, **changed}))
        with pytest.raises(InputError, match=f"metrics.json: {named}: expected") as error:
            TrainedMetrics.load(path)
        assert error.value.where == str(path)
    path.write_text(json.dumps({key: value for key, value in content.items() if key != "steps"}))
    with pytest.raises(InputError, match="lacks the key 'steps'"):
        TrainedMetrics.load(path)


def test_the_attempts_record_is_read_back_and_a_bad_entry_is_named(tmp_path):
    path = tmp_path / "p0.failed.json"
    record = AttemptsRecord([Attempt(1, {"lr_factor": 1.0}, 0, "failed", "nonfinite", "NaN", 35, {"lr_factor": 0.5}),
                             Attempt(2, {"lr_factor": 0.5}, 31, resumed_at_steps=[40])])
    record.save(path)
    assert AttemptsRecord.load(path) == record
    content = json.loads(path.read_text())
    content[1]["number"] = "two"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=r"\[1\]\.number: expected a valid integer") as error:
        AttemptsRecord.load(path)
    assert error.value.where == str(path)
