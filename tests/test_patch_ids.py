"""Re-syncing patch ids with the split removes exactly the outputs of patches that no longer exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchsplat.patch_ids import sync_patch_ids
from patchsplat.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
PER_PATCH = ("data/prepared/{}", "data/trained/{}", "data/checkpoints/{}")


@pytest.fixture
def workspace(tmp_path) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    for patch_id in ("p0", "p1", "p2", "p3"):
        for template in PER_PATCH:
            (tmp_path / template.format(patch_id)).mkdir(parents=True)
            (tmp_path / template.format(patch_id) / "file").write_text("x")
    (tmp_path / "data/trained/p1.failed.json").write_text("[]")
    (tmp_path / "data/trained/p3.failed.json").write_text("[]")
    return tmp_path


def _left(workspace: Path) -> list[str]:
    return sorted(path.relative_to(workspace).as_posix() for folder in ("prepared", "trained", "checkpoints")
                  for path in (workspace / "data" / folder).iterdir())


@pytest.mark.parametrize("relative", [False, True])
def test_unchanged_ids_remove_nothing(workspace, monkeypatch, relative):
    before = _left(workspace)
    if relative:  # how `patchsplat repro` calls it: Path(".") in the workspace
        monkeypatch.chdir(workspace)
    result = sync_patch_ids(["p0", "p1", "p2", "p3"], Workspace(Path(".") if relative else workspace))
    assert not result.changed and result.removed_outputs == []
    assert _left(workspace) == before


@pytest.mark.parametrize("relative", [False, True])
def test_fewer_ids_remove_only_the_dropped_patches_outputs(workspace, monkeypatch, relative):
    if relative:
        monkeypatch.chdir(workspace)
    result = sync_patch_ids(["p0", "p1", "p2"], Workspace(Path(".") if relative else workspace))
    assert sorted(result.removed_outputs) == ["data/checkpoints/p3", "data/prepared/p3", "data/trained/p3",
                                              "data/trained/p3.failed.json"]
    assert "data/trained/p1.failed.json" in _left(workspace) and "data/trained/p0" in _left(workspace)
    assert "p3" not in (workspace / "params.yaml").read_text().split("patch_overrides:")[1]
