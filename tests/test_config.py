"""params.yaml: one typed section per stage, validated once, with one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from patchsplat.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def _keys(value, prefix=""):
    if isinstance(value, dict):
        keys = set()
        for key, item in value.items():
            keys |= _keys(item, f"{prefix}.{key}" if prefix else key)
        return keys
    return {prefix}


def test_the_project_params_validate_and_list_every_setting():
    params = load_params(ROOT / "params.yaml")
    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Params().model_dump(mode="json", by_alias=True)
    defaults.pop("patch_overrides")
    written_keys = _keys({k: v for k, v in written.items() if k != "patch_overrides"})
    # Ladders are lists of partial rungs in the file; compare the sections above them.
    expected = {key for key in _keys(defaults) if ".recovery." not in key} | {
        key for key in written_keys if ".recovery." in key}
    assert written_keys == expected, f"missing from params.yaml: {sorted(expected - written_keys)}"
    assert list(params.patch_overrides) == [f"p{i}" for i in range(params.split.rows * params.split.cols)]


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("scene:\n  demo:\n    widht: 100\n", "scene.demo.widht: unknown key"),
        ("scene:\n  demo:\n    width: wide\n", "scene.demo.width"),
        ("split:\n  overlap: -1\n", "split.overlap"),
        ("train:\n  strategy:\n    kind: magic\n", "train.strategy.kind"),
        ("patch_overrides:\n  p0: {init_scael: 0.3}\n", "patch_overrides.p0.init_scael: unknown key"),
        ("patch_overrides:\n  tile7: {}\n", "patch_overrides.tile7"),
        ("bogus_section: {}\n", "bogus_section: unknown key"),
        ("scene: [1, 2\n", "not valid YAML"),
        ("scene:\n  source: colmap\n", "colmap_path is not set"),
    ],
)
def test_bad_params_give_one_line_naming_the_key(tmp_path, content, named):
    params = tmp_path / "params.yaml"
    params.write_text(content)
    completed = subprocess.run([sys.executable, "-m", "patchsplat.cli", "config", "--params", str(params)],
                               capture_output=True, text=True)
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0] and str(params) in lines[0], completed.stderr
    assert "Traceback" not in completed.stderr


def test_yaml_is_loaded_safely(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("scene: !!python/object/apply:os.system ['echo unsafe']\n")
    completed = subprocess.run([sys.executable, "-m", "patchsplat.cli", "config", "--params", str(params)],
                               capture_output=True, text=True)
    assert completed.returncode == 1 and "not valid YAML" in completed.stderr and "unsafe" not in completed.stdout


def test_every_command_has_help():
    from typer.testing import CliRunner

    from patchsplat.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    commands = [command.name for command in app.registered_commands]
    assert {"demo-scene", "validate", "split", "train", "merge", "repro", "config", "summary"} <= set(commands)
    for command in commands:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command
