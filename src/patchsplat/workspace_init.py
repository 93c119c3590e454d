"""``patchsplat init DIR --colmap PATH``: a ready-to-run pipeline workspace for a user's own scene.

The workspace is made from the pipeline definition of the installed patchsplat
(:func:`patchsplat.pipeline_definition.pipeline_root`: the source checkout's ``dvc.yaml``,
``params.yaml``, ``.dvcignore`` and ``stages/``, or the copy a wheel carries). It holds no code:
its stages run ``patchsplat stage NAME`` of the installed patchsplat.

What is written to DIR:

* ``dvc.yaml``: the project's, whose code dependencies are the installed patchsplat's files, reached
  through ``.patchsplat/code`` (a symbolic link to the package) and ``.patchsplat/pipeline`` (one to its
  pipeline definition, for the stage scripts): changing or upgrading patchsplat reruns the stages whose
  code changed (:mod:`patchsplat.pipeline_deps`). A header comment records the version and source.
* ``.patchsplat/``: those two links (ignored by git; ``patchsplat run``/``repro`` re-point them when the
  installed patchsplat moved).
* ``params.yaml``: the project's, with ``scene.source: colmap`` and ``scene.colmap_path`` the absolute
  path of PATH, without the demo scene's generator settings, ``split.mode: auto`` (the demo's own
  2 x 2 grid is not a capture's), training settings left to the profile as in the project's file,
  and ``patch_overrides`` keyed by the patch ids the split will make of this scene (so a plain
  ``dvc repro`` works straight away).
* ``.gitignore`` (the pipeline's outputs, MLflow's store, a venv, ``.patchsplat/``), ``.dvcignore``, a
  git repository with DVC initialised and one commit (``dvc exp run`` needs a commit).

PATH is validated first; the workspace is built in a hidden folder beside DIR and renamed to DIR
only when complete, so a failure leaves nothing behind. DIR may exist only as an empty folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from patchsplat.errors import InputError, ToolFailed
from patchsplat.pipeline_definition import pipeline_root
from patchsplat.workspace import Workspace

GITIGNORE = """\
# Written by `patchsplat init`. Pipeline outputs are DVC's, not git's (DVC may add its own entries).
/data/*
/reports/*
# ... except the small files DVC keeps out of its cache (cache: false; so is metrics/): git holds
# those, so `dvc exp run` commits them with each experiment and `dvc exp show` lists the metrics.
!/data/trained/
/data/trained/*
!/data/trained/p*/
/data/trained/p*/*
!/data/trained/p*/metrics.json
!/data/trained/p*/curve.csv
!/reports/*.json
# MLflow's default store (params.yaml: tracking)
/mlflow.db
/mlartifacts/
/mlruns/
# The links to the installed patchsplat's code (`patchsplat init`; re-pointed by `patchsplat run`/`repro`)
/.patchsplat/
# A virtual environment, byte code
/.venv/
__pycache__/
*.pyc
"""

FALLBACK_IDENTITY = {"user.name": "patchsplat init", "user.email": "patchsplat-init@localhost"}


@dataclass(frozen=True)
class InitResult:
    workspace: Path
    colmap_path: Path
    patch_ids: list[str]
    source: str          # "patchsplat 0.1.0, source /path at commit abc1234 (...)"
    split_decision: str  # what the split will make of the scene and why, in one line


def source_description(root: Path) -> str:
    """patchsplat's version and the git commit of ``root`` (with a note when it has uncommitted changes)."""
    import patchsplat

    from patchsplat.pipeline_definition import PACKAGED_FOLDER, package_dir

    if root == package_dir() / PACKAGED_FOLDER:  # a wheel's copy: no source checkout to name
        return f"patchsplat {patchsplat.__version__}, installed in {root.parent}"
    text = f"patchsplat {patchsplat.__version__}, source {root}"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30, check=False)
        if commit.returncode != 0:
            return text + " (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return text + " (commit unknown: git not available)"
    text += f" at commit {commit.stdout.strip()}"
    return text + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _check_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise InputError(target, "exists and is not a folder: give a new (or empty) folder for the workspace", kind="target_exists")
    if target.is_dir() and any(target.iterdir()):
        raise InputError(target, "exists and is not empty: give a new (or empty) folder for the workspace", kind="target_exists")


def _check_scene(colmap: Path, target: Path) -> Path:
    """The absolute scene folder, checked to hold images/ and a readable sparse model."""
    from patchsplat.colmap_io.arrays import read_model_arrays
    from patchsplat.scene_layout import locate_scene

    source = Path(colmap).expanduser().resolve()
    layout = locate_scene(source)  # one-line InputError naming the missing part
    if source == target or source.is_relative_to(target):
        raise InputError(colmap, "is inside the workspace folder: give a workspace folder outside the scene", kind="target_inside_scene")
    if target.is_relative_to(source):
        raise InputError(target, f"is inside the scene folder {source}: put the workspace elsewhere", kind="target_inside_scene")
    try:
        arrays = read_model_arrays(layout.model_dir)
    except (OSError, ValueError) as error:  # unreadable, or a model the reader's own checks missed
        raise InputError(layout.model_dir, f"cannot read the COLMAP model ({type(error).__name__}: {error})", kind="corrupt_file") from None
    if len(arrays.image_names) == 0:
        raise InputError(layout.model_dir, "the model has no registered images", kind="missing_images")
    return source


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's layout
    # Write back what the templates say: `[{a: 1}]` (not `[a: 1]`) and `null` (not an empty value).
    yaml.brace_single_entry_mapping_in_flow_sequence = True
    yaml.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _dump(yaml, document) -> str:
    import io

    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return buffer.getvalue()


def workspace_dvc_yaml(template: str, source: str) -> str:
    """The project's dvc.yaml text with the installed patchsplat's code deps (through ``.patchsplat/``), with a header."""
    from patchsplat.pipeline_deps import workspace_dvc_yaml_text

    header = (
        "# Written by `patchsplat init` from " + source + ".\n"
        "# The stages run `patchsplat stage NAME` of the patchsplat on PATH. Their code dependencies are that\n"
        "# patchsplat's files, through .patchsplat/code and .patchsplat/pipeline (links to the installed package,\n"
        "# re-pointed by `patchsplat run` / `patchsplat repro`, which also update these lists for a newer\n"
        "# patchsplat): changing or upgrading patchsplat reruns the stages whose code changed.\n"
    )
    body = workspace_dvc_yaml_text(template)
    if body.startswith("#"):  # the project's own header describes the checkout
        lines = body.splitlines(keepends=True)
        while lines and lines[0].startswith("#"):
            lines.pop(0)
        body = "".join(lines)
    return header + body


def workspace_params_yaml(template: str, colmap_path: Path, patch_ids: list[str] | None = None) -> str:
    """The project's params.yaml text with the scene switched to the user's COLMAP folder (comments kept).

    With ``patch_ids``, ``patch_overrides`` gets exactly those keys (the overrides of ids the template
    already has are kept, new ids get ``{}``), as ``patchsplat repro`` would sync them.
    """
    from ruamel.yaml.comments import CommentedMap

    yaml = _yaml()
    document = yaml.load(template)
    scene = document["scene"]
    scene["source"] = "colmap"
    scene["colmap_path"] = str(colmap_path)
    # The demo's own choices are not a capture's: its scene generator goes, and the split decides
    # from the capture (split.mode auto); training settings left null follow the profile either way.
    if scene.pop("demo", None) is not None and "validate" in document:
        document.yaml_set_comment_before_after_key("validate", before="\n")  # the blank line went with the demo block
    split = document.get("split")
    if split is not None:
        split["mode"] = "auto"
        split.yaml_add_eol_comment("# auto (one patch for an object or a forward-facing scene, else cells by content) | grid | max_cameras", "mode")
    overrides = document.get("patch_overrides") or CommentedMap()
    if patch_ids is not None and list(overrides) != list(patch_ids):
        synced = CommentedMap()
        for patch_id in patch_ids:
            synced[patch_id] = overrides.get(patch_id) or CommentedMap()
            if not synced[patch_id]:
                synced[patch_id].fa.set_flow_style()
        document["patch_overrides"] = synced
    return _dump(yaml, document)


def planned_ids(workspace: Path, colmap_path: Path) -> tuple[list[str], str]:
    """The patch ids the split stage will make of ``colmap_path`` with the workspace's params, and why."""
    from patchsplat.colmap_io.arrays import read_model_arrays
    from patchsplat.config import load_params
    from patchsplat.scene_layout import locate_scene
    from patchsplat.split import plan_split

    params = load_params(Workspace(workspace).params_file)
    layout = locate_scene(colmap_path)
    from patchsplat.profiles import split_budget

    plan = plan_split(read_model_arrays(layout.model_dir), params.split, params.validate_.robust_percentile, str(layout.model_dir),
                      split_budget(params.train, params.split.megapixels_per_patch))
    return [patch.patch_id for patch in plan.patches], plan.decision or f"{len(plan.patches)} patches"


def _run(command: list[str], cwd: Path, what: str) -> str:
    environment = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        completed = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, check=False)
    except OSError as error:
        raise ToolFailed(what, f"could not run ({error.strerror or error})", kind="tool_failed") from None
    if completed.returncode != 0:
        detail = " ".join((completed.stderr or completed.stdout).split())[-300:]
        raise ToolFailed(what, f"failed with exit status {completed.returncode}: {detail}", kind="tool_failed")
    return completed.stdout


def _git_and_dvc_init(workspace: Path) -> None:
    _run(["git", "init", "-q"], workspace, "git init")
    for key, value in FALLBACK_IDENTITY.items():
        configured = subprocess.run(["git", "config", key], cwd=workspace, capture_output=True, text=True, check=False)
        if configured.returncode != 0 or not configured.stdout.strip():
            _run(["git", "config", key, value], workspace, f"git config {key}")
    _run([sys.executable, "-m", "dvc", "init", "-q"], workspace, "dvc init")
    _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], workspace, "dvc config core.analytics false")


def _commit(workspace: Path, files: list[str]) -> None:
    _run(["git", "add", "--", *files], workspace, "git add")
    _run(["git", "commit", "-q", "--no-verify", "-m", "patchsplat init: pipeline for this scene"], workspace, "git commit")


def init_workspace(target: Path, colmap: Path, git: bool = True) -> InitResult:
    """Create the workspace ``target`` for the COLMAP folder ``colmap``; see the module docstring.

    Raises :class:`InputError` (one line) for a bad scene, a non-empty ``target``, no pipeline
    definition or a failing git/dvc, leaving ``target`` as it was.
    """
    target = Path(target).expanduser().absolute()
    target = target.parent.resolve() / target.name
    _check_target(target)
    colmap_path = _check_scene(Path(colmap), target)
    root = pipeline_root()
    source = source_description(root)

    created_parents = [parent for parent in reversed(target.parents) if not parent.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.init-", dir=target.parent))
    try:
        from patchsplat.pipeline_deps import point_links

        point_links(building)
        workspace, definition = Workspace(building), Workspace(root)
        workspace.dvc_yaml.write_text(
            workspace_dvc_yaml(definition.dvc_yaml.read_text(encoding="utf-8"), source), encoding="utf-8")
        params_template = definition.params_file.read_text(encoding="utf-8")
        params_path = workspace.params_file
        params_path.write_text(workspace_params_yaml(params_template, colmap_path), encoding="utf-8")
        # The ids the split will make (the split settings are the template's): a plain `dvc repro` works.
        patch_ids, decision = planned_ids(building, colmap_path)
        params_path.write_text(workspace_params_yaml(params_template, colmap_path, patch_ids), encoding="utf-8")
        from patchsplat.config import load_params
        from patchsplat.patch_ids import params_patch_ids

        load_params(params_path)  # what the stages will read must validate
        if params_patch_ids(params_path) != patch_ids:
            raise InputError(params_path, f"patch_overrides does not list the planned patch ids {patch_ids}", kind="patch_ids_out_of_sync")
        (building / ".gitignore").write_text(GITIGNORE, encoding="utf-8")

        if git:
            _git_and_dvc_init(building)
        # After `dvc init`, which writes a .dvcignore of its own: the project's keeps byte code out of
        # the hashes of the stage scripts.
        shutil.copyfile(root / ".dvcignore", building / ".dvcignore")
        if git:
            _commit(building, [".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore", "dvc.yaml", "params.yaml"])
        building.chmod(0o777 & ~_umask())
        os.rename(building, target)  # replaces an empty folder; fails if one filled it meanwhile
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        for parent in reversed(created_parents):
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    return InitResult(target, colmap_path, patch_ids, source, decision)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
