"""Find the parts of a COLMAP scene folder: the images and the sparse model to use.

A scene folder holds ``images/`` and a sparse model, either directly in ``sparse/``
(what ``colmap image_undistorter`` writes) or in numbered sub-folders ``sparse/0``,
``sparse/1``, ... (what the mapper writes; several of them mean COLMAP split the
scene into disconnected models). ``sparse/0`` is the model used; the others are
reported so the validator can warn about them.

This module only looks at names in folders; it never opens a model file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from patchsplat.errors import InputError

ModelFormat = Literal["bin", "txt"]

# The three files every COLMAP model has; rigs and frames (COLMAP >= 3.12) are optional.
MODEL_STEMS = ("cameras", "images", "points3D")
OPTIONAL_STEMS = ("rigs", "frames")
IMAGES_FOLDER = "images"
SPARSE_FOLDER = "sparse"
DEFAULT_MODEL = "0"


@dataclass(frozen=True)
class SceneLayout:
    """Where a scene's parts are. Paths are built from ``root`` as given (not resolved)."""

    root: Path
    images_dir: Path
    model_dir: Path
    model_format: ModelFormat
    # Other models beside the chosen one (sparse/1, sparse/2, ...), sorted by number.
    other_models: tuple[Path, ...] = ()

    def model_file(self, stem: str) -> Path:
        """The path of model file ``stem`` ('cameras', 'images', ...) in the chosen format (it may not exist)."""
        return self.model_dir / f"{stem}.{self.model_format}"


def model_format_of(folder: Path) -> ModelFormat | None:
    """The format of the model files in ``folder``, or None if it holds none.

    Mirrors pycolmap: binary when all three .bin files exist, else text when all
    three .txt files exist. When neither set is complete, the format with more
    files present wins (binary on a tie), so that the validator can name the
    missing file of the model the user most likely meant.
    """
    if not folder.is_dir():
        return None
    present = {ext: sum((folder / f"{stem}.{ext}").exists() for stem in MODEL_STEMS) for ext in ("bin", "txt")}
    if present["bin"] == 0 and present["txt"] == 0:
        return None
    if present["bin"] == len(MODEL_STEMS):
        return "bin"
    if present["txt"] == len(MODEL_STEMS):
        return "txt"
    return "bin" if present["bin"] >= present["txt"] else "txt"


def _numbered_models(sparse: Path) -> list[Path]:
    """Sub-folders of ``sparse`` named by a number that hold model files, sorted by number."""
    candidates = [p for p in sparse.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted((p for p in candidates if model_format_of(p) is not None), key=lambda p: int(p.name))


def locate_scene(root: str | Path) -> SceneLayout:
    """Locate ``images/`` and the sparse model of the scene in ``root``.

    Raises :class:`InputError` naming the folder when ``root``, ``images/``, ``sparse/``
    or the model in it is missing. Individual missing model files are not checked
    here (the validator names them).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "scene folder not found (expected a folder holding images/ and sparse/)", kind="missing_folder")
    images_dir = root / IMAGES_FOLDER
    if not images_dir.is_dir():
        raise InputError(images_dir, "images folder not found (a COLMAP scene holds images/ beside sparse/)", kind="missing_images_folder")
    sparse = root / SPARSE_FOLDER
    if not sparse.is_dir():
        raise InputError(sparse, "sparse model folder not found (expected sparse/0 or sparse/ holding cameras, images and points3D)", kind="missing_model")

    numbered = _numbered_models(sparse)
    direct_format = model_format_of(sparse)
    if direct_format is not None:
        return SceneLayout(root, images_dir, sparse, direct_format, tuple(numbered))

    chosen = sparse / DEFAULT_MODEL
    chosen_format = model_format_of(chosen)
    if chosen_format is None:
        found = ", ".join(p.name for p in numbered)
        hint = f" (found models in: {found})" if found else ""
        raise InputError(chosen, f"no COLMAP model here: expected cameras, images and points3D (.bin or .txt){hint}", kind="missing_model")
    others = tuple(p for p in numbered if p.name != DEFAULT_MODEL)
    return SceneLayout(root, images_dir, chosen, chosen_format, others)
