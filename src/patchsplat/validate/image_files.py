"""Checks of the registered images' names and files.

Names are checked first, as text: a name that is absolute or climbs out with ``..``
would make later stages read (or an undistortion write) outside ``images/``, so such an
image is never opened. With image checks on, every other image is then resolved
(a symbolic link pointing out of ``images/`` is also an escape), tested for presence,
fully decoded (``PIL`` ``load()``, which catches truncated files) and compared with its
camera's size. Decoding runs in a thread pool: Pillow releases the GIL while decoding.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from patchsplat.config import ValidateConfig
from patchsplat.errors import InputError
from patchsplat.validate.findings import Finding, finding_for_items
from patchsplat.validate.model_io import ImageRecord, SceneModel


def name_escapes(name: str) -> bool:
    """True if image ``name`` is absolute or has a '..' component (POSIX or Windows spelling)."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or name.startswith(("/", "\\")):
        return True
    if PureWindowsPath(name).drive:
        return True
    parts = name.replace("\\", "/").split("/")
    return ".." in parts


def safe_image_path(images_dir: Path, name: str) -> Path:
    """``images_dir / name``, refusing names that would leave the folder: the name rule above
    (absolute, drive letters, any '..') plus symbolic links that resolve outside it."""
    candidate = (images_dir / name).resolve()
    root = images_dir.resolve()
    if name_escapes(name) or not candidate.is_relative_to(root):
        raise InputError(images_dir / name, "image name escapes the images folder", kind="path_escape")
    return candidate


def check_image_names(model: SceneModel, config: ValidateConfig) -> tuple[list[Finding], list[ImageRecord]]:
    """Findings about names, and the images whose names are safe to open."""
    images_file = str(model.files["images"])
    empty = [image.image_id for image in model.images if not image.name]
    escaping = [image.name for image in model.images if image.name and name_escapes(image.name)]
    findings = []
    if empty:
        findings.append(finding_for_items(
            "error", "bad_image_name", f"{len(empty)} registered image(s) have an empty name; image ids", empty,
            config.max_listed_ids, images_file,
        ))
    if escaping:
        findings.append(finding_for_items(
            "error", "path_escape",
            f"{len(escaping)} image name(s) point outside {model.layout.images_dir} (absolute or '..'); not opened",
            escaping, config.max_listed_ids, images_file,
        ))
    repeated = sorted(name for name, count in Counter(image.name for image in model.images).items() if count > 1 and name)
    if repeated:
        findings.append(finding_for_items(
            "warning", "duplicate_image_name", f"{len(repeated)} image name(s) are used by several registered images",
            repeated, config.max_listed_ids, images_file,
        ))
    safe = [image for image in model.images if image.name and not name_escapes(image.name)]
    return findings, safe


@dataclass(frozen=True)
class _Inspection:
    name: str
    path: Path
    problem: str | None      # None: fine
    kind: str | None
    detail: str = ""


def _inspect(path: Path, name: str, images_root: str, expected: tuple[int, int], decode: bool) -> _Inspection:
    from PIL import Image

    # realpath follows symbolic links: a link out of images/ is an escape even if the name is clean.
    real = os.path.realpath(path)
    if os.path.commonpath([real, images_root]) != images_root:
        return _Inspection(name, path, "escape", "path_escape", "a symbolic link out of the images folder")
    if not os.path.isfile(real):
        return _Inspection(name, path, "missing", "missing_image")
    if not decode:
        return _Inspection(name, path, None, None)
    try:
        with Image.open(path) as image:
            size = image.size
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return _Inspection(name, path, "undecodable", "undecodable_image", " ".join(str(error).split()))
    if size != expected:
        return _Inspection(name, path, "size", "image_size_mismatch", f"{size[0]}x{size[1]} instead of {expected[0]}x{expected[1]}")
    return _Inspection(name, path, None, None)


_PROBLEM_SUMMARIES = {
    "path_escape": "registered image(s) are symbolic links pointing outside the images folder; not opened",
    "missing_image": "registered image(s) are missing from the images folder",
    "undecodable_image": "image file(s) cannot be decoded (truncated or corrupt)",
    "image_size_mismatch": "image file(s) differ in size from their camera",
}


def check_image_files(model: SceneModel, images: list[ImageRecord], config: ValidateConfig, decode: bool = True) -> list[Finding]:
    """Presence (and with ``decode``, decodability and size) of each image file.

    One finding per problem kind; its file is the first affected image's path and the
    message lists the image names (with the first problem's detail).
    """
    images_dir = model.layout.images_dir
    images_root = os.path.realpath(images_dir)
    jobs = []
    for image in images:
        camera = model.cameras.get(image.camera_id)
        expected = (camera.width, camera.height) if camera else (-1, -1)
        jobs.append((images_dir / image.name, image.name, images_root, expected, decode))
    workers = max(1, min(32, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate-images") as pool:
        inspections = list(pool.map(lambda job: _inspect(*job), jobs))

    by_kind: dict[str, list[_Inspection]] = {}
    for inspection in inspections:
        if inspection.kind is not None:
            by_kind.setdefault(inspection.kind, []).append(inspection)
    findings = []
    for kind in ("path_escape", "missing_image", "undecodable_image", "image_size_mismatch"):
        problems = by_kind.get(kind)
        if not problems:
            continue
        first = problems[0]
        detail = f" ({first.name}: {first.detail})" if first.detail else ""
        findings.append(finding_for_items(
            "error", kind, f"{len(problems)} {_PROBLEM_SUMMARIES[kind]}{detail}", [p.name for p in problems],
            config.max_listed_ids, first.path,
        ))
    return findings
