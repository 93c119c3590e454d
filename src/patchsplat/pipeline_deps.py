"""The code dependencies of each DVC stage, generated from what its script imports.

A stage's code is its script (``stages/NAME.py``) and every patchsplat module it imports,
transitively, found statically with :mod:`ast`: every ``import`` / ``from ... import`` anywhere in a
file (also inside functions and ``if TYPE_CHECKING:``), restricted to the patchsplat package, with the
``__init__.py`` of every package on the way (``patchsplat/__init__.py``, holding ``__version__``, is in
every stage's list). A package folder stands for its files when the stage imports all of them.

* Source checkout: dvc.yaml lists them as ``stages/NAME.py`` and ``src/patchsplat/...``.
  ``python -m patchsplat.pipeline_deps --write`` rewrites those lists in place (comments kept);
  ``--check`` (and a test) fails when dvc.yaml differs from what it would write.
* ``init`` workspace: it holds no code; ``.patchsplat/code`` is a symlink to the installed patchsplat
  package and ``.patchsplat/pipeline`` one to its pipeline definition, and dvc.yaml lists the same files
  through them. ``patchsplat run`` / ``repro`` re-point the links when the installed patchsplat moved and
  rewrite the lists when the installed version's differ (:func:`sync_workspace`).

Either way, a change to the code a stage runs makes ``dvc status`` report that stage, and only the
stages whose code it is.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from patchsplat.import_closure import PACKAGE, module_closure

CHECKOUT_CODE_PREFIX = "src/patchsplat/"
CHECKOUT_STAGE_PREFIX = "stages/"
WORKSPACE_FOLDER = ".patchsplat"
WORKSPACE_CODE_PREFIX = f"{WORKSPACE_FOLDER}/code/"
WORKSPACE_STAGE_PREFIX = f"{WORKSPACE_FOLDER}/pipeline/stages/"
CODE_PREFIXES = (CHECKOUT_CODE_PREFIX, CHECKOUT_STAGE_PREFIX, WORKSPACE_FOLDER + "/")
# dvc.yaml commands naming their stage script: `patchsplat stage train ${key}`.
STAGE_COMMAND = re.compile(r"^\s*patchsplat\s+stage\s+([A-Za-z_]\w*)")


def _collapse(files: set[str], package: Path) -> list[str]:
    """``files`` with each subpackage folder whose every module is in it written as the folder (outermost first)."""
    result = set(files)
    folders: list[str] = []
    inits = (p for p in package.rglob("__init__.py") if p.parent != package and "__pycache__" not in p.parts)
    for init in sorted(inits, key=lambda p: len(p.parts)):
        prefix = init.parent.relative_to(package).as_posix()
        if any(prefix.startswith(f"{folder}/") for folder in folders):
            continue
        modules = {p.relative_to(package).as_posix() for p in init.parent.rglob("*.py") if "__pycache__" not in p.parts}
        if modules <= files:
            folders.append(prefix)
            result = {entry for entry in result if not entry.startswith(prefix + "/")} | {prefix}
    return sorted(result)


def stage_code(stage: str, stages_dir: Path, package: Path) -> list[str]:
    """The code entries of stage script ``stage`` relative to the package, collapsed (``stages/...`` not included)."""
    return _collapse(module_closure(stages_dir / f"{stage}.py", package), package)


def checkout_deps(stage: str, stages_dir: Path, package: Path) -> list[str]:
    return [f"{CHECKOUT_STAGE_PREFIX}{stage}.py"] + [CHECKOUT_CODE_PREFIX + entry for entry in stage_code(stage, stages_dir, package)]


def workspace_deps(stage: str, stages_dir: Path, package: Path) -> list[str]:
    return [f"{WORKSPACE_STAGE_PREFIX}{stage}.py"] + [WORKSPACE_CODE_PREFIX + entry for entry in stage_code(stage, stages_dir, package)]


# ---------------------------------------------------------------- dvc.yaml


def _is_code_dep(entry) -> bool:
    return isinstance(entry, str) and entry.startswith(CODE_PREFIXES)


def rewrite_code_deps(dvc_yaml_text: str, deps_of) -> str:
    """``dvc_yaml_text`` with each ``patchsplat stage NAME`` stage's code dependencies replaced by
    ``deps_of(NAME)`` (first in its deps, in that order); everything else (comments, data deps) kept."""
    from ruamel.yaml.comments import CommentedSeq

    from patchsplat.workspace_init import _dump, _yaml

    yaml = _yaml()
    document = yaml.load(dvc_yaml_text)
    for stage in (document.get("stages") or {}).values():
        body = stage.get("do", stage) if isinstance(stage, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
            continue
        match = STAGE_COMMAND.match(body["cmd"])
        if match is None:
            continue
        old = body.get("deps")
        if old is None:
            old = body["deps"] = CommentedSeq()
        wanted = deps_of(match.group(1))
        kept = [(index, entry) for index, entry in enumerate(old) if not _is_code_dep(entry)]
        if [entry for entry in old if _is_code_dep(entry)] == wanted:
            continue
        # Rebuild the list so that the comments of the data deps stay on their lines.
        comments = {index: old.ca.items.get(index) for index, _ in kept}
        old.ca.items.clear()
        del old[:]
        old.extend(wanted)
        for index, entry in kept:
            old.append(entry)
            if comments.get(index) is not None:
                old.ca.items[len(old) - 1] = comments[index]
    return _dump(yaml, document)


def checkout_dvc_yaml(root: Path) -> str:
    """What the checkout ``root``'s dvc.yaml should be: its code deps generated."""
    package = root / "src" / PACKAGE
    return rewrite_code_deps((root / "dvc.yaml").read_text(encoding="utf-8"),
                             lambda stage: checkout_deps(stage, root / "stages", package))


# ---------------------------------------------------------------- an init workspace


def link_targets() -> dict[str, Path]:
    """``.patchsplat/<name>`` -> what it points at: the running patchsplat's package and its pipeline definition."""
    from patchsplat.pipeline_definition import package_dir, pipeline_root

    return {"code": package_dir(), "pipeline": pipeline_root()}


def point_links(workspace: Path) -> list[str]:
    """Make ``.patchsplat/code`` and ``.patchsplat/pipeline`` point at the running patchsplat; what changed."""
    from patchsplat.errors import FileError

    folder = workspace / WORKSPACE_FOLDER
    folder.mkdir(exist_ok=True)
    changed = []
    for name, target in link_targets().items():
        link = folder / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        temporary = folder / f".{name}.{os.getpid()}.tmp"
        try:
            if temporary.is_symlink():
                temporary.unlink()
            os.symlink(target, temporary, target_is_directory=True)
            os.replace(temporary, link)
        except OSError as error:
            raise FileError(link, f"cannot make the symbolic link to {target} ({error.strerror or error}): "
                             "a workspace needs symbolic links (Linux, macOS)", kind="write_failed") from None
        changed.append(f"{WORKSPACE_FOLDER}/{name} -> {target}")
    return changed


def workspace_dvc_yaml_text(text: str) -> str:
    """``text`` (a dvc.yaml) with the running patchsplat's code deps, as a workspace lists them."""
    from patchsplat.pipeline_definition import STAGES_FOLDER, package_dir, pipeline_root

    package, stages_dir = package_dir(), pipeline_root() / STAGES_FOLDER
    return rewrite_code_deps(text, lambda stage: workspace_deps(stage, stages_dir, package))


def is_workspace(workspace: Path) -> bool:
    return (workspace / WORKSPACE_FOLDER).is_dir() and (workspace / "dvc.yaml").is_file()


def sync_workspace(workspace: Path) -> list[str]:
    """Before DVC runs in an ``init`` workspace: the code links point at the running patchsplat and dvc.yaml
    lists its code (a newer patchsplat may import other modules). One line per change; nothing elsewhere."""
    workspace = Path(workspace)
    if not is_workspace(workspace):
        return []
    messages = [f"re-pointed {change}" for change in point_links(workspace)]
    path = workspace / "dvc.yaml"
    text = path.read_text(encoding="utf-8")
    updated = workspace_dvc_yaml_text(text)
    if updated != text:
        from patchsplat import __version__
        from patchsplat.atomic import atomic_file

        with atomic_file(path) as temporary:
            Path(temporary).write_text(updated, encoding="utf-8")
        messages.append(f"dvc.yaml: code dependencies updated to those of patchsplat {__version__}")
    return messages


# ---------------------------------------------------------------- python -m patchsplat.pipeline_deps


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments not in (["--write"], ["--check"]):
        print("usage: python -m patchsplat.pipeline_deps --write | --check  (in the source checkout)", file=sys.stderr)
        return 2
    from patchsplat.pipeline_definition import package_dir

    root = package_dir().parents[1]
    path = root / "dvc.yaml"
    current = path.read_text(encoding="utf-8")
    generated = checkout_dvc_yaml(root)
    if generated == current:
        print(f"{path}: code dependencies up to date")
        return 0
    if arguments == ["--check"]:
        print(f"{path}: code dependencies differ from the imports: run `python -m patchsplat.pipeline_deps --write`",
              file=sys.stderr)
        return 1
    path.write_text(generated, encoding="utf-8")
    print(f"{path}: code dependencies rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
