"""DVC stage ``mesh``: the scene mesh from the trained patches (data/mesh: mesh.ply, mesh.glb, mesh.json).

Reads the ``mesh`` section of params.yaml, data/patches and data/trained (splats, and the resolution
each patch was trained at from its metrics.json).
"""

from patchsplat.config import load_params  # importing patchsplat first sets OMP_WAIT_POLICY for torch
from patchsplat.console import guarded
from patchsplat.mesh import extract_scene_mesh
from patchsplat.mesh.report import print_mesh_table
from patchsplat.tracking import flat_numbers, stage_run
from patchsplat.workspace import Workspace


def main() -> None:
    params = load_params()
    workspace = Workspace()
    with stage_run(params.tracking, "mesh", "mesh", params.mesh) as tracker:
        summary = extract_scene_mesh(workspace.patches_dir, workspace.trained_dir, workspace.mesh_dir, params.mesh)
        tracker.metrics(flat_numbers({key: summary.get(key) for key in ("totals", "seconds")}, max_depth=2))
    print_mesh_table(summary)


if __name__ == "__main__":
    guarded(main)
