"""Write an undistorted copy of a scene, with PINHOLE cameras, for trainers that only render pinhole.

``pycolmap.undistort_images`` does the work (it resamples every image and writes a
model with PINHOLE cameras). Its output is rearranged into the layout the rest of the
pipeline reads, ``OUT/images`` and ``OUT/sparse/0``, and its multi-view-stereo extras
(``stereo/``, ``run-colmap-*.sh``) are dropped. Everything is written to a temporary
sibling of ``OUT`` and renamed into place only when complete and verified.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from patchsplat.atomic import atomic_dir
from patchsplat.errors import InputError
from patchsplat.output_folder import UNDISTORT
from patchsplat.scene_layout import IMAGES_FOLDER, SPARSE_FOLDER, SceneLayout
from patchsplat.validate.checks import PINHOLE_MODELS
from patchsplat.validate.model_io import quiet_colmap

# What undistortion keeps of pycolmap's output (and all an unmarked earlier output may hold: patchsplat.output_folder).
_OUTPUT_ENTRIES = {IMAGES_FOLDER, SPARSE_FOLDER}


def _rearrange(output: Path) -> None:
    """pycolmap writes sparse/*.bin, stereo/ and scripts; keep images/ and move the model to sparse/0."""
    sparse = output / SPARSE_FOLDER
    model = sparse / "0"
    model.mkdir()
    for entry in list(sparse.iterdir()):
        if entry.is_file():
            entry.rename(model / entry.name)
    for entry in list(output.iterdir()):
        if entry.name in _OUTPUT_ENTRIES:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _verify(output: Path, layout: SceneLayout) -> None:
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()

    reconstruction = pycolmap.Reconstruction(str(output / SPARSE_FOLDER / "0"))
    models = sorted({camera.model.name for camera in reconstruction.cameras.values()})
    if any(model not in PINHOLE_MODELS for model in models):
        raise InputError(
            layout.model_file("cameras"), f"undistortion left cameras of model(s) {', '.join(models)}; training needs PINHOLE",
            kind="unsupported_camera_model",
        )
    missing = [image.name for image in reconstruction.images.values() if not (output / IMAGES_FOLDER / image.name).is_file()]
    if missing:
        raise InputError(
            layout.images_dir / missing[0],
            f"undistortion did not produce {len(missing)} image(s) (missing or unreadable input?), e.g. {missing[0]}",
            kind="missing_image",
        )


def undistort_scene(layout: SceneLayout, out_dir: str | Path) -> Path:
    """Write ``out_dir/images`` and ``out_dir/sparse/0`` (PINHOLE cameras) from the scene of ``layout``.

    Atomic: ``out_dir`` is either the complete new copy or left as it was. An existing
    ``out_dir`` is replaced only if it is an earlier output of this command (see
    :mod:`patchsplat.output_folder`); anything else is refused with :class:`InputError`.
    """
    from patchsplat.colmap_library import pycolmap as _pycolmap

    pycolmap = _pycolmap()

    out_dir = Path(out_dir)
    # Which folders may be replaced: patchsplat.output_folder (the scene itself never).
    with atomic_dir(out_dir, UNDISTORT, (layout.root, layout.images_dir, layout.model_dir)) as tmp:
        with quiet_colmap():
            try:
                pycolmap.undistort_images(str(tmp), str(layout.model_dir), str(layout.images_dir))
            except Exception as error:  # pycolmap raises ValueError/RuntimeError on unreadable input
                detail = " ".join(str(error).split()) or type(error).__name__
                raise InputError(layout.model_dir, f"undistortion failed: {detail}", kind="undistort_failed") from None
            _rearrange(tmp)
            _verify(tmp, layout)
    return out_dir
