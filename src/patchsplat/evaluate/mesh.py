"""The mesh of a scene, scored against the best reference the scene has.

* Demo scene (``manifest.json`` written by patchsplat's generator and its ``ground_truth_mesh.ply``):
  accuracy, completeness, Chamfer and F-score against the ground-truth mesh. The ground truth holds a
  ground square 1.5x larger than the area the cameras look at, so scoring is restricted to the region
  the capture observed: the bounding box of the SfM surface points (the manifest's
  ``surface_points_bbox``: the generator's deliberately injected outlier points are not in it),
  grown on every side by the F-score threshold (so a surface a little below the ground plane, z < 0,
  is not cropped away).
* Any other scene (a user's COLMAP capture): no ground truth exists, so the SfM points stand in as
  a PROXY: the distance from every finite SfM point to the mesh (mean, median, fraction within the
  threshold). This says how well the mesh passes through the reconstructed points; it is one-sided
  (a mesh with extra surfaces is not penalised) and inherits the SfM points' own noise and outliers.

The scene extent is the diagonal of the reference box: the box above for a demo scene, the
[1, 99] percentile box of the SfM points for a capture (percentiles, so far outliers do not stretch
it). The threshold is ``fscore_threshold x extent``. Distances are in the model's world units.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from patchsplat.config import EvaluateConfig
from patchsplat.errors import InputError
from patchsplat.evaluate.geometry import (
    box_diagonal,
    compare_surfaces,
    points_to_surface_scores,
    robust_box,
)

DEMO_GENERATOR = "patchsplat.demo"
MANIFEST_FILE = "manifest.json"
GROUND_TRUTH_FILE = "ground_truth_mesh.ply"
# Percentile of the robust box of a capture's SfM points (validate.robust_percentile's default).
ROBUST_PERCENTILE = 1.0
SAMPLE_SEED = 0

# The flat keys every mesh result has (None where they do not apply), so `dvc metrics diff` compares
# the same keys from run to run.
GROUND_TRUTH_KEYS = ("accuracy", "completeness", "chamfer", "precision", "recall", "fscore")
PROXY_KEYS = ("sfm_to_mesh_mean", "sfm_to_mesh_median", "sfm_within_threshold")


def demo_ground_truth(scene_dir: Path) -> tuple[Path, dict] | None:
    """(ground-truth mesh path, manifest) when ``scene_dir`` is a patchsplat demo scene that has both, else None."""
    manifest_path = scene_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not ours (or damaged): treat the scene as a capture rather than fail the evaluation
    generator = manifest.get("generator") if isinstance(manifest, dict) else None
    if not isinstance(generator, dict) or generator.get("name") != DEMO_GENERATOR:
        return None
    mesh_name = (manifest.get("files") or {}).get("mesh") or GROUND_TRUTH_FILE
    mesh_path = scene_dir / mesh_name
    return (mesh_path, manifest) if mesh_path.is_file() else None


def load_mesh(path: Path):
    """The triangle mesh in ``path`` (trimesh, vertices as stored: no merging or reordering).

    Raises :class:`InputError` (``corrupt_file``) when the file cannot be read as a mesh.
    """
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as error:  # noqa: BLE001 - trimesh raises many types for bad files
        raise InputError(path, f"cannot be read as a triangle mesh: {error}", kind="corrupt_file") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise InputError(path, f"holds a {type(mesh).__name__}, not a triangle mesh", kind="corrupt_file")
    return mesh


def _empty_result(status: str) -> dict:
    """A mesh result with every metric None and ``status`` saying why."""
    return {
        "status": status,
        "reference": None,
        "threshold": None,
        "extent": None,
        **{key: None for key in GROUND_TRUTH_KEYS + PROXY_KEYS},
        "details": None,
        "definitions": [],
    }


def evaluate_mesh(scene_dir: Path, mesh_ply: Path | None, sfm_xyz: np.ndarray, config: EvaluateConfig) -> dict:
    """Score ``mesh_ply`` (world frame) for the scene in ``scene_dir`` (see the module docstring).

    Returns a dict with ``status`` (a sentence), ``reference`` ("ground_truth_mesh", "sfm_points_proxy"
    or None), ``threshold`` and ``extent`` (world units), the keys of :data:`GROUND_TRUTH_KEYS` and
    :data:`PROXY_KEYS` (None where they do not apply), ``details`` (medians, counts, boxes) and
    ``definitions`` (sentences saying what each number is).
    A missing or empty mesh gives None metrics and a status saying so; an unreadable one raises
    :class:`InputError`.
    """
    if mesh_ply is None:
        return _empty_result("not evaluated: no mesh was given")
    if not Path(mesh_ply).is_file():
        return _empty_result(f"not evaluated: mesh not found at {mesh_ply}")
    mesh = load_mesh(Path(mesh_ply))
    if len(mesh.faces) == 0 or not float(mesh.area) > 0.0:
        return _empty_result(f"not evaluated: the mesh at {mesh_ply} has no faces with area")

    ground_truth = demo_ground_truth(scene_dir)
    if ground_truth is not None:
        return _against_ground_truth(mesh, *ground_truth, sfm_xyz, config)
    return _against_sfm_points(mesh, sfm_xyz, config)


def _demo_reference_box(manifest: dict, sfm_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The box of the SfM surface points: the manifest's, else the robust box of the model's points."""
    bbox = manifest.get("surface_points_bbox")
    if isinstance(bbox, dict) and "min" in bbox and "max" in bbox:
        return (np.asarray(bbox["min"], float), np.asarray(bbox["max"], float),
                "bounding box of the SfM surface points (manifest surface_points_bbox; injected outliers excluded)")
    low, high = robust_box(sfm_xyz, ROBUST_PERCENTILE)
    return low, high, f"[{ROBUST_PERCENTILE:g}, {100 - ROBUST_PERCENTILE:g}] percentile box of the SfM points"


def _against_ground_truth(mesh, ground_truth_path: Path, manifest: dict, sfm_xyz: np.ndarray, config: EvaluateConfig) -> dict:
    reference = load_mesh(ground_truth_path)
    box_min, box_max, box_definition = _demo_reference_box(manifest, sfm_xyz)
    extent = box_diagonal(box_min, box_max)
    threshold = config.fscore_threshold * extent
    crop = (box_min - threshold, box_max + threshold)
    try:
        scores = compare_surfaces(mesh, reference, threshold, config.mesh_samples, crop=crop, seed=SAMPLE_SEED)
    except ValueError as error:
        return _empty_result(f"not evaluated: {error}") | {"reference": "ground_truth_mesh", "threshold": threshold, "extent": extent}
    result = _empty_result("evaluated against the demo scene's ground-truth mesh")
    result.update({key: scores[key] for key in GROUND_TRUTH_KEYS})
    result.update({
        "reference": "ground_truth_mesh",
        "threshold": threshold,
        "extent": extent,
        "details": {
            "accuracy_median": scores["accuracy_median"],
            "completeness_median": scores["completeness_median"],
            "samples_per_mesh": config.mesh_samples,
            "mesh_points_scored": scores["num_accuracy_points"],
            "ground_truth_points_scored": scores["num_completeness_points"],
            "mesh_faces": int(len(mesh.faces)),
            "evaluation_box": {"min": crop[0].tolist(), "max": crop[1].tolist()},
        },
        # Prose lives in lists, apart from the numbers.
        "definitions": [
            f"reference: {ground_truth_path.name} of the demo scene; distances in world units (demo: metres)",
            f"extent: diagonal of the reference box, the {box_definition}",
            f"threshold: fscore_threshold ({config.fscore_threshold:g}) x extent",
            "evaluation box: the reference box grown by the threshold on every side; samples of either mesh outside "
            "it are not scored (the ground truth's ground extends 1.5x beyond the area the cameras observe), "
            "distances are measured to the whole other mesh",
            "accuracy: mean distance from points sampled on the mesh to the ground-truth surface",
            "completeness: mean distance from points sampled on the ground truth to the mesh",
            "chamfer: (accuracy + completeness) / 2",
            "fscore: harmonic mean of precision (mesh points within the threshold of the ground truth) and recall "
            "(ground-truth points within the threshold of the mesh)",
        ],
    })
    return result


def _against_sfm_points(mesh, sfm_xyz: np.ndarray, config: EvaluateConfig) -> dict:
    finite = sfm_xyz[np.all(np.isfinite(sfm_xyz), axis=1)] if len(sfm_xyz) else sfm_xyz
    if len(finite) == 0:
        return _empty_result("not evaluated: the scene has no finite SfM points to use as a proxy reference")
    box_min, box_max = robust_box(finite, ROBUST_PERCENTILE)
    extent = box_diagonal(box_min, box_max)
    threshold = config.fscore_threshold * extent
    scores = points_to_surface_scores(finite, mesh, threshold, config.mesh_samples, seed=SAMPLE_SEED)
    result = _empty_result("PROXY: no ground truth for this scene; distances from the SfM points to the mesh")
    result.update({
        "reference": "sfm_points_proxy",
        "threshold": threshold,
        "extent": extent,
        "sfm_to_mesh_mean": scores["mean"],
        "sfm_to_mesh_median": scores["median"],
        "sfm_within_threshold": scores["within_threshold"],
        "details": {
            "sfm_to_mesh_p90": scores["p90"],
            "sfm_points": scores["num_points"],
            "samples_on_mesh": config.mesh_samples,
            "mesh_faces": int(len(mesh.faces)),
            "reference_box": {"min": box_min.tolist(), "max": box_max.tolist()},
        },
        "definitions": [
            "PROXY, not a ground-truth comparison: one-sided distances from every finite SfM point (outliers "
            "included) to the mesh; extra mesh surfaces are not penalised; world units of the COLMAP model",
            f"extent: diagonal of the [{ROBUST_PERCENTILE:g}, {100 - ROBUST_PERCENTILE:g}] percentile box of the SfM points",
            f"threshold: fscore_threshold ({config.fscore_threshold:g}) x extent",
        ],
    })
    return result
