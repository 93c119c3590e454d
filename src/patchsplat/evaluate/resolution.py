"""The resolution the held-out views are evaluated at.

``evaluate.resolution_factor`` when set; otherwise the largest factor any patch was trained at
(``resolution_factor`` in ``trained_dir/pN/metrics.json``). One factor for every view, rather than
each view's own patch's: the overall and per-patch means then average images of one resolution (a
coarser resolution scores higher, so mixed resolutions would not compare), and no view is rendered
at more pixels than its patch trained on. Patches normally share one factor (the training profile
picks it from the image size); they differ only when a patch's out-of-memory recovery lowered its
resolution, and then the whole scene is evaluated at that lower one. With no training metrics
(splats trained elsewhere) the views are evaluated at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from patchsplat.config import EvaluateConfig
from patchsplat.scene_views import trained_resolution_factor
from patchsplat.workspace import patch_ids_in


@dataclass(frozen=True)
class EvaluationResolution:
    factor: int
    source: str                                         # why this factor (for the report)
    trained: dict[str, int] = field(default_factory=dict)   # patch id -> its training factor


def trained_factors(trained_dir: Path | None) -> dict[str, int]:
    """Patch id -> training resolution factor, for every ``pN/metrics.json`` under ``trained_dir``."""
    if trained_dir is None:
        return {}
    found = {patch_id: trained_resolution_factor(Path(trained_dir) / patch_id / "metrics.json")
             for patch_id in patch_ids_in(Path(trained_dir))}
    return {patch_id: factor for patch_id, factor in found.items() if factor is not None}


def evaluation_resolution(config: EvaluateConfig, trained_dir: Path | None) -> EvaluationResolution:
    """The factor to evaluate at and why (see the module docstring)."""
    trained = trained_factors(trained_dir)
    if config.resolution_factor is not None:
        return EvaluationResolution(config.resolution_factor, "evaluate.resolution_factor", trained)
    if not trained:
        where = f"no training metrics (pN/metrics.json) in {trained_dir}" if trained_dir is not None else "no trained patches given"
        return EvaluationResolution(1, f"full resolution: {where}", trained)
    factor = max(trained.values())
    listed = ", ".join(f"{patch_id} 1/{value}" for patch_id, value in trained.items())
    return EvaluationResolution(factor, f"the coarsest resolution the patches were trained at ({listed})", trained)
