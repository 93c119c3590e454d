"""Where the pipeline definition lives, and ``patchsplat stage NAME``, which runs one stage's script.

The definition is the project's top-level ``dvc.yaml``, ``params.yaml``, ``.dvcignore`` and
``stages/*.py``: one source. A source checkout (``pip install -e``) uses them in place; a wheel carries
a copy made at build time (``setup.py``: ``patchsplat/pipeline/`` inside the package). Both
``dvc.yaml``s (the checkout's and an ``init`` workspace's) run ``patchsplat stage NAME [ARGS]``, so a
workspace holds no code and the checkout and a workspace run the same stage scripts.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from patchsplat.errors import InputError

DEFINITION_FILES = ("dvc.yaml", "params.yaml", ".dvcignore")
STAGES_FOLDER = "stages"
# The folder inside the package where a wheel's build puts the definition (setup.py).
PACKAGED_FOLDER = "pipeline"


def package_dir() -> Path:
    """The folder of the patchsplat package that is running (a checkout's src/patchsplat, or site-packages')."""
    import patchsplat

    return Path(patchsplat.__file__).resolve().parent


def _complete(root: Path) -> bool:
    return all((root / name).is_file() for name in DEFINITION_FILES) and (root / STAGES_FOLDER).is_dir()


def pipeline_root() -> Path:
    """The folder holding the definition: the source checkout patchsplat runs from (``src/patchsplat`` two
    levels below a folder with dvc.yaml, params.yaml, .dvcignore and stages/), else the packaged copy."""
    package = package_dir()
    checkout = package.parents[1]
    if package.parent.name == "src" and _complete(checkout):
        return checkout
    packaged = package / PACKAGED_FOLDER
    if _complete(packaged):
        return packaged
    raise InputError(
        package,
        "no pipeline definition (dvc.yaml, params.yaml, .dvcignore, stages/) in or beside the installed patchsplat: "
        "install a wheel built from the source checkout, or the checkout itself (`pip install -e <checkout>`)",
        kind="no_pipeline_definition",
    )


def stage_names(root: Path | None = None) -> list[str]:
    root = pipeline_root() if root is None else root
    return sorted(path.stem for path in (root / STAGES_FOLDER).glob("*.py"))


def stage_script(name: str, root: Path | None = None) -> Path:
    root = pipeline_root() if root is None else root
    script = root / STAGES_FOLDER / f"{name}.py"
    if not name.isidentifier() or not script.is_file():
        raise InputError(name, f"no such stage (stages: {', '.join(stage_names(root))})", kind="bad_argument")
    return script


def run_stage(name: str, arguments: list[str]) -> None:
    """Run ``stages/NAME.py`` of the pipeline definition as ``python stages/NAME.py ARGS`` would (its own
    ``guarded(main)`` reports errors and sets the exit status)."""
    script = stage_script(name)
    sys.argv = [str(script), *arguments]
    runpy.run_path(str(script), run_name="__main__")
