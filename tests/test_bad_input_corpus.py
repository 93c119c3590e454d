"""The bad-input corpus across every command: one harness, one parametrized list of cases.

Every case starts from one good workspace, built once for the module (a small COLMAP scene, its
validation report, its split into one patch, that patch trained for a few steps, the merged splats,
the ``scene`` stage's pointer and a params.yaml for all of it), copied afresh per case. Each case
damages one thing a user can really damage (a model file, an image, a report, params.yaml, an output
folder chosen on the command line...) and runs one command on it: a ``patchsplat`` command in this
process through typer's CliRunner (the code path of the console script), or a DVC stage script's
``main`` under ``patchsplat.console.guarded`` as ``python stages/X.py`` runs it. For every case:

1. the exit status is non-zero;
2. stderr is exactly one line, starting with ``error: ``, and nothing looks like a traceback
   (nor like an unexpected error: those are bugs, not answers to bad input);
3. the line names the file, folder or params key at fault (every fragment of the case);
4. nothing is created: the whole workspace (every path and every file's content) is the same
   after the command as before it (no output folder, no ``.NAME.*.tmp``, no report);
5. nothing of the user's changed: the same snapshot covers the earlier results already there.

A few representative cases also run as real processes (``python -m patchsplat.cli``, ``python stages/X.py``).
"""

from __future__ import annotations

import io
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import prefect.main  # noqa: F401  (see below)
import pytest
import yaml
from PIL import Image

# Prefect configures its log handlers once, on its first import, with the sys.stderr of that moment. It is
# imported above, at collection (pytest's session-long capture), not first inside a CliRunner invoke of
# `patchsplat run` here, whose stream is closed afterwards: later tests' in-process flows would log into it.
from conftest import build_scene, snapshot
from damage import (IMAGE, POINT, assert_one_line, edit_text_line, garbage, garbage_bytes, model_file, patched,
                    truncate)

REPO_ROOT = Path(__file__).resolve().parents[1]

GOOD_PARAMS = {
    "scene": {"source": "colmap", "colmap_path": "scene"},
    "split": {"mode": "grid", "rows": 1, "cols": 1, "min_cameras": 1, "min_points": 10},
    "train": {"steps": 4, "eval_every": 4, "checkpoint_every": 4, "backend": "torch"},
    "tracking": {"enabled": False},
}
THESIS = "my thesis, not a patchsplat output\n"

# Every command that reads user input, and every stage script: each must have cases (see the last test).
COMMANDS = ["validate", "config", "split", "demo-scene", "train", "merge", "summary", "init", "run", "repro", "sweep",
            "serve", "compare",
            "stages/scene.py", "stages/validate.py", "stages/split.py", "stages/prepare.py", "stages/train.py",
            "stages/merge.py", "stages/mesh.py", "stages/evaluate.py"]


# ---------------------------------------------------------------- mutations of the workspace


def nothing(workspace: Path) -> None:
    pass


def on_scene(mutation: Callable[[Path], None]) -> Callable[[Path], None]:
    """A damage to the COLMAP scene (``workspace/scene``)."""
    return lambda workspace: mutation(workspace / "scene")


def setting(dotted: str, value) -> Callable[[Path], None]:
    """params.yaml with one setting (``section.key``, created if need be) set to ``value``."""

    def mutate(workspace: Path) -> None:
        path = workspace / "params.yaml"
        params = yaml.safe_load(path.read_text())
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    return mutate


def params_text(text: str | bytes) -> Callable[[Path], None]:
    """params.yaml replaced by ``text``."""

    def mutate(workspace: Path) -> None:
        (workspace / "params.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())

    return mutate


def appended(relative: str, text: str) -> Callable[[Path], None]:
    def mutate(workspace: Path) -> None:
        with open(workspace / relative, "a", encoding="utf-8") as handle:
            handle.write(text)

    return mutate


def written(relative: str, content: str | bytes) -> Callable[[Path], None]:
    """The file ``relative`` (created, with its folders, if need be) holds ``content``."""

    def mutate(workspace: Path) -> None:
        path = workspace / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return mutate


def removed(relative: str) -> Callable[[Path], None]:
    def mutate(workspace: Path) -> None:
        path = workspace / relative
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    return mutate


def cut_short(relative: str, keep_fraction: float = 0.5) -> Callable[[Path], None]:
    def mutate(workspace: Path) -> None:
        path = workspace / relative
        os.truncate(path, int(path.stat().st_size * keep_fraction))

    return mutate


def without_key(relative: str, key: str) -> Callable[[Path], None]:
    """The JSON object in ``relative`` without ``key``: a file of another version, or a hand edit."""

    def mutate(workspace: Path) -> None:
        path = workspace / relative
        content = json.loads(path.read_text())
        del content[key]
        path.write_text(json.dumps(content))

    return mutate


def folder_instead(relative: str) -> Callable[[Path], None]:
    """The file ``relative`` replaced by an empty folder of the same name."""

    def mutate(workspace: Path) -> None:
        (workspace / relative).unlink()
        (workspace / relative).mkdir()

    return mutate


def users_folder(relative: str) -> Callable[[Path], None]:
    """A folder of the user's (a thesis in it) where a command might be told to write."""
    return written(f"{relative}/thesis.tex", THESIS)


def both(*mutations: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(workspace: Path) -> None:
        for mutation in mutations:
            mutation(workspace)

    return mutate


def text_model(scene: Path) -> None:
    """The scene's model rewritten as COLMAP text files (cameras.txt, images.txt, points3D.txt)."""
    import pycolmap

    model = model_file(scene, "")
    reconstruction = pycolmap.Reconstruction(str(model))
    for path in model.iterdir():
        path.unlink()
    reconstruction.write_text(str(model))


def renamed_image(image_id: int, name: str) -> Callable[[Path], None]:
    """Image ``image_id`` of the scene's model renamed to ``name`` (the model rewritten by pycolmap)."""

    def mutate(scene: Path) -> None:
        import pycolmap

        model = model_file(scene, "")
        reconstruction = pycolmap.Reconstruction(str(model))
        reconstruction.images[image_id].name = name
        reconstruction.write_binary(str(model))

    return mutate


def truncated_image(name: str, keep_fraction: float = 0.5) -> Callable[[Path], None]:
    return on_scene(lambda scene: os.truncate(scene / "images" / name, int((scene / "images" / name).stat().st_size * keep_fraction)))


def alias_bomb() -> str:
    """Nine levels of nine aliases: 9**9 values once expanded."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        previous, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\ntrain:\n  steps: *j\n"


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    id: str
    command: tuple[str, ...]                  # patchsplat's arguments, or stages/X.py and its arguments
    names: tuple[str, ...]                    # every one must be in the error line: the file, folder or key at fault
    mutate: Callable[[Path], None] = nothing  # the one damage, to the good workspace

    @property
    def program(self) -> str:
        return self.command[0]


def case(id: str, command: str, names: str | tuple[str, ...], mutate: Callable[[Path], None] = nothing) -> Case:
    return Case(id, tuple(shlex.split(command)), (names,) if isinstance(names, str) else names, mutate)


VALIDATE = "validate scene --out reports/new-validation.json"
SPLIT = "split scene data/new-patches"
TRAIN = "train data/patches/p0 --out data/new-trained"
MERGE = "merge data/patches data/trained data/new-merged"

CASES = [
    # --- validate: the model files, the images, the scene's layout, its settings, its output
    case("validate_truncated_cameras_bin", VALIDATE, "cameras.bin", on_scene(truncate("cameras.bin", drop=5))),
    case("validate_zero_byte_images_bin", VALIDATE, "images.bin", on_scene(truncate("images.bin", 0.0))),
    case("validate_garbage_points_bin", VALIDATE, "points3D.bin", on_scene(garbage("points3D.bin"))),
    case("validate_image_with_missing_camera", VALIDATE, "images.bin", on_scene(patched("images.bin", IMAGE + 60, "<I", 7))),
    case("validate_nan_point", VALIDATE, "points3D.bin", on_scene(patched("points3D.bin", POINT + 8, "<d", float("nan")))),
    case("validate_no_points", VALIDATE, "points3D.bin", on_scene(lambda s: model_file(s, "points3D.bin").write_bytes(bytes(8)))),
    case("validate_truncated_png", VALIDATE, "img003.png", truncated_image("img003.png")),
    case("validate_zero_byte_png", VALIDATE, "img002.png", truncated_image("img002.png", 0.0)),
    case("validate_missing_images_folder", VALIDATE, "scene/images:", on_scene(lambda s: shutil.rmtree(s / "images"))),
    case("validate_report_into_the_scene", "validate scene --out scene/validation.json", "scene/validation.json"),
    case("validate_bad_setting", VALIDATE, ("params.yaml", "validate.robust_percentile"), setting("validate.robust_percentile", "lots")),
    case("validate_params_is_a_folder", VALIDATE + " --params settings", "settings", lambda ws: (ws / "settings").mkdir()),
    # --- config: params.yaml as a user can break it
    case("config_params_not_utf8", "config", ("params.yaml", "UTF-8"), params_text(b"train:\n  steps: \xff\xfe\n")),
    case("config_params_is_a_folder", "config --params my-params.yaml", "my-params.yaml", lambda ws: (ws / "my-params.yaml").mkdir()),
    case("config_params_missing", "config --params my-params.yaml", "my-params.yaml"),
    case("config_duplicate_section", "config", ("params.yaml", "duplicate key 'train'"), appended("params.yaml", "train:\n  seed: 3\n")),
    case("config_steps_true", "config", ("params.yaml", "train.steps"), setting("train.steps", True)),
    case("config_steps_negative", "config", ("params.yaml", "train.steps"), setting("train.steps", -1)),
    case("config_unknown_key", "config", ("params.yaml", "train.stepz"), setting("train.stepz", 10)),
    case("config_unknown_section", "config", ("params.yaml", "trian:"), setting("trian.steps", 10)),
    case("config_infinite_memory_budget", "config", ("params.yaml", "mesh.memory_budget_gb"), setting("mesh.memory_budget_gb", float("inf"))),
    case("config_alias_bomb", "config", ("params.yaml", "aliases"), params_text(alias_bomb())),
    case("config_bad_split_mode", "config", ("params.yaml", "split.mode"), setting("split.mode", "hexagons")),
    case("config_bad_backend", "config", ("params.yaml", "train.backend"), setting("train.backend", "cuda-magic")),
    case("config_yaml_syntax_error", "config", "params.yaml", appended("params.yaml", "split: [1, 2\n")),
    case("config_params_a_list", "config", "params.yaml", params_text("- train\n- split\n")),
    case("config_section_a_number", "config", ("params.yaml", "train:"), setting("train", 5)),
    case("config_unknown_patch", "config --patch p9", ("--patch", "p9")),
    case("config_bad_patch_override", "config", ("params.yaml", "patch_overrides.p0"), setting("patch_overrides", {"p0": {"stepz": 3}})),
    # --- split
    case("split_into_the_scene", "split scene scene", "error: scene:"),
    case("split_into_a_users_folder", "split scene my-documents", "my-documents", users_folder("my-documents")),
    case("split_over_trained_patches", "split scene data/trained", "data/trained"),
    case("split_rows_zero", SPLIT + " --rows 0", "split.rows"),
    case("split_bad_mode_option", SPLIT + " --mode hexagons", "split.mode"),
    case("split_negative_overlap", SPLIT + " --overlap -1", "split.overlap"),
    case("split_bad_setting", SPLIT, ("params.yaml", "split.min_cameras"), setting("split.min_cameras", "eight")),
    case("split_truncated_points_bin", SPLIT, "points3D.bin", on_scene(truncate("points3D.bin", 0.5))),
    case("split_image_named_etc_passwd", SPLIT, "images.bin", on_scene(renamed_image(2, "../../etc/passwd"))),
    case("split_malformed_images_txt", SPLIT, "images.txt",
         on_scene(both(text_model, edit_text_line("images.txt", 2, lambda line: line.replace(" ", " oops ", 1))))),
    case("split_missing_scene", "split my-scene data/new-patches", "my-scene"),
    # --- demo-scene
    case("demo_into_a_users_folder", "demo-scene my-documents --no-images", "my-documents", users_folder("my-documents")),
    case("demo_over_the_users_scene", "demo-scene scene --no-images", "error: scene:"),
    case("demo_over_the_patches", "demo-scene data/patches --no-images", "data/patches"),
    case("demo_zero_cameras", "demo-scene new-demo --num-cameras 0 --no-images", "scene.demo.num_cameras"),
    case("demo_negative_width", "demo-scene new-demo --width -5 --no-images", "scene.demo.width"),
    case("demo_bad_setting", "demo-scene new-demo --no-images", ("params.yaml", "scene.demo.num_points"),
         setting("scene.demo.num_points", "many")),
    case("demo_under_a_file", "demo-scene notes.txt/demo --no-images", ("notes.txt", "is a file, not a folder"),
         written("notes.txt", "my notes\n")),
    # --- train
    case("train_onto_the_patches", "train data/patches/p0 --out data/patches", "data/patches"),
    case("train_onto_the_scene", "train data/patches/p0 --out scene", "error: scene:"),
    case("train_into_a_users_folder", "train data/patches/p0 --out my-documents", "my-documents", users_folder("my-documents")),
    case("train_missing_patch_json", TRAIN, ("data/patches/p0:", "patch.json"), removed("data/patches/p0/patch.json")),
    case("train_corrupt_patch_json", TRAIN, "patch.json", cut_short("data/patches/p0/patch.json")),
    case("train_truncated_patch_points", TRAIN, "points3D.bin", cut_short("data/patches/p0/sparse/0/points3D.bin")),
    case("train_patch_json_a_list", TRAIN, ("patch.json", "JSON object expected"), written("data/patches/p0/patch.json", "[1]\n")),
    case("train_patch_json_without_images_dir", TRAIN, ("patch.json", "'images_dir'"),
         without_key("data/patches/p0/patch.json", "images_dir")),
    case("train_patch_json_without_heldout", TRAIN, ("patch.json", "'heldout_image_names'"),
         without_key("data/patches/p0/patch.json", "heldout_image_names")),
    case("train_missing_image", TRAIN, "img002.png", on_scene(lambda scene: (scene / "images" / "img002.png").unlink())),
    case("train_image_of_another_size", TRAIN, ("img001.png", "is 9x7"),
         on_scene(lambda scene: Image.new("RGB", (9, 7)).save(scene / "images" / "img001.png"))),
    case("train_missing_patch", "train data/patches/p7 --out data/new-trained", "data/patches/p7:"),
    case("train_steps_zero", TRAIN + " --steps 0", "train.steps"),
    case("train_bad_backend", TRAIN + " --backend cuda-magic", "train.backend"),
    case("train_bad_profile", TRAIN + " --profile turbo", "train.profile"),
    case("train_bad_patch_override", TRAIN + " --patch-id p0", ("params.yaml", "patch_overrides.p0"),
         setting("patch_overrides", {"p0": {"init_scale": -1}})),
    # --- merge
    case("merge_missing_splats", MERGE, "splats.ply", removed("data/trained/p0/splats.ply")),
    case("merge_truncated_splats", MERGE, "splats.ply", cut_short("data/trained/p0/splats.ply")),
    case("merge_garbage_splats", MERGE, "splats.ply", written("data/trained/p0/splats.ply", garbage_bytes(4000))),
    case("merge_corrupt_patch_json", MERGE, "patch.json", cut_short("data/patches/p0/patch.json")),
    case("merge_missing_patch_json", MERGE, ("data/patches/p0:", "patch.json"), removed("data/patches/p0/patch.json")),
    case("merge_patch_json_without_core_cell", MERGE, ("patch.json", "'core_cell'"),
         without_key("data/patches/p0/patch.json", "core_cell")),
    case("merge_patch_json_without_frame", MERGE, ("patch.json", "'world_to_aligned'"),
         without_key("data/patches/p0/patch.json", "world_to_aligned")),
    case("merge_patch_json_a_list", MERGE, ("patch.json", "JSON object expected"), written("data/patches/p0/patch.json", "[]\n")),
    case("merge_onto_the_patches", "merge data/patches data/trained data/patches", "data/patches"),
    case("merge_into_a_users_folder", "merge data/patches data/trained my-documents", "my-documents", users_folder("my-documents")),
    case("merge_bad_setting", MERGE, ("params.yaml", "merge.min_opacity"), setting("merge.min_opacity", 2.0)),
    # --- summary
    case("summary_corrupt_split_report", "summary", "split.json", cut_short("reports/split.json")),
    case("summary_validation_not_utf8", "summary", "validation.json", written("reports/validation.json", b'{"stats": "\xff"}')),
    case("summary_merge_report_a_list", "summary", "merge.json", written("data/merged/merge.json", "[1, 2]\n")),
    case("summary_corrupt_metrics", "summary", "metrics.json", cut_short("data/trained/p0/metrics.json")),
    case("summary_report_is_a_folder", "summary", "evaluation.json", lambda ws: (ws / "reports" / "evaluation.json").mkdir()),
    # --- init
    case("init_missing_colmap", "init new-workspace --colmap my-scene", "my-scene"),
    case("init_colmap_is_a_file", "init new-workspace --colmap notes.txt", "workspace/notes.txt:", written("notes.txt", "my notes\n")),
    case("init_truncated_cameras_bin", "init new-workspace --colmap scene", "cameras.bin", on_scene(truncate("cameras.bin", 0.5))),
    case("init_scene_without_model", "init new-workspace --colmap scene", "scene/sparse:", removed("scene/sparse")),
    case("init_into_a_users_folder", "init my-documents --colmap scene", "my-documents", users_folder("my-documents")),
    # --- run, repro, sweep, serve (params are checked before Prefect or DVC start), compare (before MLflow is read)
    case("run_bad_setting", "run", ("params.yaml", "train.steps"), setting("train.steps", True)),
    case("run_params_not_utf8", "run", ("params.yaml", "UTF-8"), params_text(b"scene:\n  source: \xff\n")),
    case("repro_bad_setting", "repro", ("params.yaml", "train.steps"), setting("train.steps", True)),
    case("repro_params_missing", "repro", "params.yaml", removed("params.yaml")),
    case("sweep_unknown_setting", "sweep train.stepz 4,5", "train.stepz"),
    case("sweep_bad_value", "sweep train.steps four,5", ("train.steps", "four")),
    case("sweep_unknown_patch", "sweep train.steps 4 --patch p9", ("--patch", "p9")),
    case("serve_bad_cron", "serve --cron 'every night'", "--cron"),
    case("serve_not_a_workspace", "serve --cron '0 2 * * *' --workspace my-documents", "my-documents", users_folder("my-documents")),
    case("serve_bad_setting", "serve --cron '0 2 * * *'", ("params.yaml", "train.steps"),
         both(written("dvc.yaml", "stages: {}\n"), setting("train.steps", True))),
    case("compare_bad_tracking_setting", "compare", ("params.yaml", "tracking.enabled"), setting("tracking.enabled", "sometimes")),
    # --- the DVC stage scripts, as `python stages/X.py` runs them in a workspace
    case("stage_scene_missing_colmap_path", "stages/scene.py", ("my-scene", "scene.colmap_path"), setting("scene.colmap_path", "my-scene")),
    case("stage_scene_bad_source", "stages/scene.py", ("params.yaml", "scene.source"), setting("scene.source", "camera")),
    case("stage_validate_corrupt_pointer", "stages/validate.py", "data/scene/scene.json", cut_short("data/scene/scene.json")),
    case("stage_validate_truncated_images_bin", "stages/validate.py", "images.bin", on_scene(truncate("images.bin", 0.5))),
    case("stage_split_bad_setting", "stages/split.py", ("params.yaml", "split.overlap"), setting("split.overlap", "wide")),
    case("stage_prepare_without_patch_id", "stages/prepare.py", "stages/prepare.py"),
    case("stage_prepare_unknown_patch", "stages/prepare.py p7", "data/patches/p7:"),
    case("stage_prepare_corrupt_patch_json", "stages/prepare.py p0", "patch.json", cut_short("data/patches/p0/patch.json")),
    case("stage_train_without_patch_id", "stages/train.py", "stages/train.py"),
    case("stage_train_bad_setting", "stages/train.py p0", ("params.yaml", "train.eval_every"), setting("train.eval_every", -3)),
    case("stage_merge_missing_splats", "stages/merge.py", "splats.ply", removed("data/trained/p0/splats.ply")),
    case("stage_mesh_truncated_splats", "stages/mesh.py", "splats.ply", cut_short("data/trained/p0/splats.ply")),
    case("stage_mesh_corrupt_metrics", "stages/mesh.py", "metrics.json", cut_short("data/trained/p0/metrics.json")),
    case("stage_evaluate_missing_merged_splats", "stages/evaluate.py", "data/merged/splats.ply", removed("data/merged/splats.ply")),
    case("stage_evaluate_truncated_merged_splats", "stages/evaluate.py", "splats.ply", cut_short("data/merged/splats.ply")),
]

# Run again as real processes: the console script and a stage script, from the command line.
SUBPROCESS_CASES = ["split_image_named_etc_passwd", "train_corrupt_patch_json", "config_duplicate_section",
                    "stage_mesh_truncated_splats"]


# ---------------------------------------------------------------- the starting point and the harness


def _invoke(command: tuple[str, ...]) -> SimpleNamespace:
    """Run ``command`` in this process, in the current folder: the exit status, stdout and stderr."""
    if command[0].startswith("stages/"):
        from patchsplat.console import guarded

        main = runpy.run_path(str(REPO_ROOT / command[0]), run_name="patchsplat_stage")["main"]
        out, err = io.StringIO(), io.StringIO()
        argv = sys.argv
        sys.argv = list(command)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                guarded(main)
            status = 0
        except SystemExit as exit_:
            status = exit_.code
        finally:
            sys.argv = argv
        return SimpleNamespace(returncode=status, stdout=out.getvalue(), stderr=err.getvalue())
    from typer.testing import CliRunner

    from patchsplat import cli

    result = CliRunner().invoke(cli.app, list(command))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


@pytest.fixture(scope="module")
def good_workspace(tmp_path_factory) -> Path:
    """The good starting point of every case: scene/, params.yaml, reports/, data/{scene,patches,trained,prepared,
    checkpoints,merged}, as the pipeline leaves them (in-process, a few seconds)."""
    workspace = tmp_path_factory.mktemp("corpus") / "workspace"
    workspace.mkdir()
    build_scene(workspace / "scene", num_images=8, num_points=300)
    (workspace / "params.yaml").write_text(yaml.safe_dump(GOOD_PARAMS, sort_keys=False))
    previous = Path.cwd()
    environment = {"PATCHSPLAT_TRACKING": os.environ.get("PATCHSPLAT_TRACKING")}
    os.environ["PATCHSPLAT_TRACKING"] = "0"
    os.chdir(workspace)
    try:
        for command in ("validate scene --out reports/validation.json", "split scene data/patches",
                        "train data/patches/p0 --out data/trained/p0", "merge data/patches data/trained data/merged",
                        "stages/scene.py"):
            ran = _invoke(tuple(shlex.split(command)))
            assert ran.returncode == 0, f"{command}: {ran.stderr}"
        shutil.copyfile("data/patches/split.json", "reports/split.json")
        (workspace / "data" / "prepared").mkdir()
        (workspace / "data" / "checkpoints").mkdir()
        os.replace("data/trained/p0.prepared", "data/prepared/p0")
        os.replace("data/trained/p0.checkpoints", "data/checkpoints/p0")
    finally:
        os.chdir(previous)
        for name, value in environment.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return workspace


def _workspace_for(case: Case, good_workspace: Path, tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    shutil.copytree(good_workspace, workspace, symlinks=True)
    pointer = workspace / "data" / "scene" / "scene.json"  # the scene stage's pointer names the scene's absolute path
    pointer.write_text(pointer.read_text().replace(str(good_workspace), str(workspace)))
    case.mutate(workspace)
    return workspace


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("PATCHSPLAT_TRACKING", "0")
    monkeypatch.delenv("PATCHSPLAT_DEBUG", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)


@pytest.mark.timeout(120)  # a refusal takes a second: a command that starts working instead (serve!) must not hang
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, good_workspace, tmp_path, monkeypatch, quiet):
    workspace = _workspace_for(case, good_workspace, tmp_path)
    monkeypatch.chdir(workspace)
    before = snapshot(tmp_path)  # the workspace and anything beside it the command might create
    line = assert_one_line(_invoke(case.command), *case.names)
    assert "error: unexpected" not in line, line
    assert snapshot(tmp_path) == before, "the command created, changed or removed something"


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=lambda c: c.id)
def test_bad_input_in_a_real_process(case: Case, good_workspace, tmp_path):
    workspace = _workspace_for(case, good_workspace, tmp_path)
    before = snapshot(tmp_path)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "PATCHSPLAT_TRACKING": "0", "OMP_NUM_THREADS": "1",
                   "COLUMNS": "200"}
    environment.pop("PATCHSPLAT_DEBUG", None)
    program = [str(REPO_ROOT / case.program)] if case.program.startswith("stages/") else ["-m", "patchsplat.cli", case.program]
    completed = subprocess.run([sys.executable, *program, *case.command[1:]], cwd=workspace, env=environment,
                               capture_output=True, text=True, timeout=300, check=False)
    line = assert_one_line(completed, *case.names)
    assert "error: unexpected" not in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", [VALIDATE, SPLIT, MERGE, "config", "summary", "stages/validate.py"])
def test_the_good_workspace_passes(command, good_workspace, tmp_path, monkeypatch, quiet):
    """The control: undamaged, the same commands succeed, so each case fails because of its one damage."""
    workspace = _workspace_for(case("control", command, ()), good_workspace, tmp_path)
    monkeypatch.chdir(workspace)
    ran = _invoke(tuple(shlex.split(command)))
    assert ran.returncode == 0, ran.stderr
    assert "error" not in ran.stderr


def test_the_corpus_is_large_distinct_and_covers_every_command():
    ids = [case.id for case in CASES]
    assert len(CASES) >= 60
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    covered = {case.program for case in CASES}
    assert covered <= set(COMMANDS), covered - set(COMMANDS)
    assert {command: sum(case.program == command for case in CASES) for command in COMMANDS if command not in covered} == {}
    assert set(SUBPROCESS_CASES) <= set(ids)
