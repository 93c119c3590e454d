"""Code dependencies that cannot go stale (issue 12).

What a user relies on: dvc.yaml lists, for each stage, exactly the code it runs (its script and every
patchsplat module the script imports, found statically), so changing a library module makes
`dvc status` report the stages that import it and only those, in the source checkout and in an
`init` workspace (whose code is the installed patchsplat, reached through .patchsplat/ links).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from conftest import project_copy
from patchsplat.pipeline_definition import package_dir, pipeline_root
from patchsplat.pipeline_deps import (
    WORKSPACE_FOLDER,
    checkout_dvc_yaml,
    module_closure,
    sync_workspace,
    workspace_dvc_yaml_text,
)

ROOT = Path(__file__).resolve().parents[1]


def _stages(text: str) -> dict:
    return YAML(typ="safe").load(text)["stages"]


def test_dvc_yaml_code_deps_are_the_generated_import_closure():
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8") == checkout_dvc_yaml(ROOT), (
        "dvc.yaml's code dependencies differ from the stages' imports: run `python -m patchsplat.pipeline_deps --write`")


def test_every_stage_runs_patchsplat_stage_and_lists_its_script():
    for name, stage in _stages((ROOT / "dvc.yaml").read_text(encoding="utf-8")).items():
        body = stage.get("do", stage)
        script = body["cmd"].split()[2]
        assert body["cmd"].startswith(f"patchsplat stage {script}") and (ROOT / "stages" / f"{script}.py").is_file(), name
        assert body["deps"][0] == f"stages/{script}.py" and "src/patchsplat/__init__.py" in body["deps"], name


def test_closure_follows_lazy_relative_and_package_imports(tmp_path):
    package = tmp_path / "patchsplat"
    for relative, text in {
        "__init__.py": "",
        "a.py": "def f():\n    from patchsplat.sub import b  # lazy, inside a function\n",
        "sub/__init__.py": "from .c import g\n",
        "sub/b.py": "",
        "sub/c.py": "import patchsplat.d as d\n",
        "d.py": "",
        "unused.py": "",
    }.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    script = tmp_path / "stage.py"
    script.write_text("import json\nfrom patchsplat.a import f\n")
    assert module_closure(script, package) == {"__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "sub/c.py", "d.py"}


def test_prepare_depends_on_the_train_keys_it_reads():
    from patchsplat.prepare import PREPARE_SETTINGS

    params = _stages((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["prepare"]["do"]["params"]
    assert params == [f"train.{key}" for key in PREPARE_SETTINGS] + ["patch_overrides.${key}"]


def test_workspace_dvc_yaml_lists_the_same_code_through_the_links():
    template = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    checkout, workspace = _stages(template), _stages(workspace_dvc_yaml_text(template))
    for name, stage in checkout.items():
        body, new = stage.get("do", stage), workspace[name].get("do", workspace[name])
        expected = [dep.replace("src/patchsplat/", f"{WORKSPACE_FOLDER}/code/", 1).replace("stages/", f"{WORKSPACE_FOLDER}/pipeline/stages/", 1)
                    for dep in body["deps"]]
        assert new["deps"] == expected, name


# ---------------------------------------------------------------- dvc status after a code change


def _environment(pythonpath: Path) -> dict:
    env = dict(os.environ)
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1",
                "PYTHONPATH": str(pythonpath)})
    return env


def _dvc(workspace: Path, *args: str, pythonpath: Path) -> str:
    completed = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, env=_environment(pythonpath),
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 0, f"dvc {' '.join(args)}: {completed.stdout}\n{completed.stderr}"
    return completed.stdout


def _fake_outputs(workspace: Path) -> None:
    """A file (or a folder holding one) for every output, so `dvc commit` records the stages without running them."""
    params = YAML(typ="safe").load((workspace / "params.yaml").read_text(encoding="utf-8"))
    for name, stage in _stages((workspace / "dvc.yaml").read_text(encoding="utf-8")).items():
        keys = list(params["patch_overrides"]) if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for key in keys:
            for kind in ("outs", "metrics", "plots"):
                for entry in body.get(kind, []):
                    path = workspace / (entry if isinstance(entry, str) else next(iter(entry))).replace("${key}", str(key))
                    if path.suffix:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(f"{name} {key}\n")
                    else:
                        path.mkdir(parents=True, exist_ok=True)
                        (path / "made-up").write_text(f"{name} {key}\n")
    for stage in _stages((workspace / "dvc.yaml").read_text(encoding="utf-8")).values():
        for key in list(params["patch_overrides"]) if "foreach" in stage else [None]:
            for dep in stage.get("do", stage).get("deps", []):  # parts of another stage's output (data/patches/${key})
                path = workspace / dep.replace("${key}", str(key))
                if not path.exists():
                    path.mkdir(parents=True)


def _stages_reported(workspace: Path, pythonpath: Path) -> set[str]:
    import json

    return set(json.loads(_dvc(workspace, "status", "--json", pythonpath=pythonpath) or "{}"))


def _python_files(folder: Path) -> list[str]:
    return [os.path.join(where, name) for where, _, names in os.walk(folder) for name in names if name.endswith(".py")]


def _append_comment(path: Path) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n# edited by a test\n")


@pytest.mark.slow
def test_checkout_a_library_change_reruns_exactly_the_stages_that_import_it(tmp_path):
    workspace = project_copy(tmp_path / "project")
    _fake_outputs(workspace)
    _dvc(workspace, "commit", "-f", pythonpath=workspace / "src")
    assert _stages_reported(workspace, workspace / "src") == set()
    _append_comment(workspace / "src" / "patchsplat" / "mesh" / "tsdf.py")
    assert _stages_reported(workspace, workspace / "src") == {"mesh"}
    _append_comment(workspace / "src" / "patchsplat" / "evaluate" / "__init__.py")
    assert _stages_reported(workspace, workspace / "src") == {"mesh", "evaluate"}


@pytest.mark.slow
def test_init_workspace_a_library_change_reruns_exactly_the_stages_that_import_it(tmp_path, make_scene):
    from patchsplat.workspace_init import init_workspace

    workspace = init_workspace(tmp_path / "ws", make_scene(num_images=16, num_points=300)).workspace
    assert _python_files(workspace) == []  # no code in the workspace (os.walk does not enter the links)
    # The installed patchsplat, as a copy this test may edit: the links point at it.
    installed = tmp_path / "site-packages"
    shutil.copytree(package_dir(), installed / "patchsplat", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(pipeline_root() / "stages", installed / "definition" / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name, target in (("code", installed / "patchsplat"), ("pipeline", installed / "definition")):
        link = workspace / WORKSPACE_FOLDER / name
        link.unlink()
        link.symlink_to(target, target_is_directory=True)
    _fake_outputs(workspace)
    _dvc(workspace, "commit", "-f", pythonpath=ROOT / "src")
    assert _stages_reported(workspace, ROOT / "src") == set()
    _append_comment(installed / "patchsplat" / "mesh" / "tsdf.py")
    assert _stages_reported(workspace, ROOT / "src") == {"mesh"}
    _append_comment(installed / "definition" / "stages" / "merge.py")
    assert _stages_reported(workspace, ROOT / "src") == {"mesh", "merge"}


def test_sync_workspace_repoints_the_links_and_updates_the_lists(tmp_path, make_scene):
    from patchsplat.workspace_init import init_workspace

    workspace = init_workspace(tmp_path / "ws", make_scene(), git=False).workspace
    assert os.readlink(workspace / WORKSPACE_FOLDER / "code") == str(package_dir())
    assert os.readlink(workspace / WORKSPACE_FOLDER / "pipeline") == str(pipeline_root())
    assert sync_workspace(workspace) == []  # nothing to do right after init
    written = (workspace / "dvc.yaml").read_text(encoding="utf-8")

    # An older patchsplat in another venv: the links point elsewhere and a module is missing from the lists.
    (workspace / WORKSPACE_FOLDER / "code").unlink()
    (workspace / WORKSPACE_FOLDER / "code").symlink_to(tmp_path / "old-venv", target_is_directory=True)
    (workspace / "dvc.yaml").write_text(written.replace("      - .patchsplat/code/mesh/tsdf.py\n", ""), encoding="utf-8")
    messages = sync_workspace(workspace)
    assert messages == [f"re-pointed {WORKSPACE_FOLDER}/code -> {package_dir()}",
                        "dvc.yaml: code dependencies updated to those of patchsplat 0.1.0"], messages
    assert os.readlink(workspace / WORKSPACE_FOLDER / "code") == str(package_dir())
    assert (workspace / "dvc.yaml").read_text(encoding="utf-8") == written
    assert sync_workspace(ROOT) == []  # the source checkout is left alone
