"""The workspace layout has one source: what dvc.yaml lists is what `Workspace` names, and no module
spells a stage's path out itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from patchsplat.errors import InputError
from patchsplat.headline import HEADLINES
from patchsplat.workspace import Workspace, patch_ids_in, patch_number

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = "${key}"


def _named_by_workspace() -> set[str]:
    """Every path the Workspace of a relative root names, per-patch ones with DVC's ``${key}``."""
    workspace = Workspace()
    names = {str(getattr(workspace, attribute)) for attribute in dir(workspace)
             if not attribute.startswith("_") and isinstance(getattr(workspace, attribute), Path)}
    names |= {str(workspace.stage_metrics(headline.stage)) for headline in HEADLINES}
    patch = workspace.patch("p0")
    names |= {str(value).replace("p0", KEY) for value in vars(patch).values() if isinstance(value, Path)}
    return names


def _dvc_paths(entries: list) -> list[str]:
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []]


def test_every_data_path_in_dvc_yaml_is_one_the_workspace_names():
    named = _named_by_workspace()
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    unnamed = []
    for stage, definition in stages.items():
        body = definition.get("do", definition)
        paths = [path for path in _dvc_paths(body.get("deps")) if not path.startswith(("src/", "stages/"))]
        paths += [path for key in ("outs", "metrics", "plots") for path in _dvc_paths(body.get(key))]
        # A file inside a per-patch folder (data/trained/${key}/splats.ply) is named by that folder.
        unnamed += [f"{stage}: {path}" for path in paths if path not in named and str(Path(path).parent) not in named]
    assert not unnamed, unnamed


def _path_literals(source: Path) -> list[str]:
    """String constants in ``source`` that are bare workspace paths ("data/trained", "reports/x.json")."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value
            and node.value.startswith(("data/", "reports/", "metrics/"))]


def test_no_module_spells_out_a_workspace_path():
    sources = [*(REPO_ROOT / "src" / "patchsplat").rglob("*.py"), *(REPO_ROOT / "stages").glob("*.py"),
               *(REPO_ROOT / "flows").glob("*.py")]
    spelled = {str(source.relative_to(REPO_ROOT)): literals for source in sources
               if source.name != "workspace.py" and (literals := _path_literals(source))}
    assert not spelled, f"use patchsplat.workspace.Workspace instead: {spelled}"


def test_patch_ids_sort_as_numbers_and_ignore_other_folders(tmp_path):
    for name in ("p10", "p2", "p0", ".p1.123-ab.tmp", "notes", "p3x"):
        (tmp_path / name).mkdir()
    (tmp_path / "p7").write_text("a file, not a patch")
    assert patch_ids_in(tmp_path) == ["p0", "p2", "p10"]
    assert patch_ids_in(tmp_path / "absent") == []
    assert sorted(["p10", "p9"], key=patch_number) == ["p9", "p10"]


def test_a_bad_patch_id_is_a_one_line_input_error():
    with pytest.raises(InputError, match="'../p0' is not a patch id"):
        Workspace().patch("../p0")


def test_paths_keep_the_root_as_given():
    assert Workspace().patch("p3").trained_dir == Path("data/trained/p3")
    assert Workspace(Path("/w")).patch("p3").failed_record == Path("/w/data/trained/p3.failed.json")
    assert Workspace().evaluation_report == Path("reports/evaluation.json")
