"""DVC stage ``mesh``: the scene mesh from the trained patches (data/mesh: mesh.ply, mesh.glb, mesh.json).

Reads the ``mesh`` section of params.yaml, data/patches and data/trained.
"""

import os

# Before torch loads OpenMP: its default active waiting made rendering and fusion 20-60x slower
# whenever another process kept the cores busy (measured on a 2-core machine); an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

from patchsplat.config import load_params  # noqa: E402
from patchsplat.console import guarded  # noqa: E402
from patchsplat.mesh import extract_scene_mesh  # noqa: E402
from patchsplat.mesh.report import print_mesh_table  # noqa: E402


def main() -> None:
    summary = extract_scene_mesh(Path("data/patches"), Path("data/trained"), Path("data/mesh"), load_params().mesh)
    print_mesh_table(summary)


if __name__ == "__main__":
    guarded(main)
