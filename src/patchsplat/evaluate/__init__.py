"""Evaluation of a merged scene: held-out image metrics (overall and per patch) and mesh metrics.

Public interface::

    from patchsplat.evaluate import evaluate_scene
    report = evaluate_scene(scene_dir, merged_ply, mesh_ply, patches_dir, out_json, grid_png, config)

Modules: :mod:`.images` (per-view metrics, rendering loop), :mod:`.perceptual` (LPIPS when available
offline), :mod:`.grid` (comparison PNG), :mod:`.geometry` (surface distances, Chamfer, F-score),
:mod:`.mesh` (ground truth or SfM proxy), :mod:`.report` (which patch a held-out view belongs to:
:meth:`patchsplat.split.SplitLayout.core_owners`).
"""

from patchsplat.evaluate.report import evaluate_scene, print_summary

__all__ = ["evaluate_scene", "print_summary"]
