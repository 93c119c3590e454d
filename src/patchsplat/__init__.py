"""patchsplat: a COLMAP reconstruction in, trained Gaussian splats, a mesh and a report out."""

import os

# torch's OpenMP threads busy-wait by default; on a shared 2-core machine (parallel DVC stages,
# CI) that spinning made one CPU render take 2.1 s instead of 0.04 s. It must be set before torch
# is imported, and every entry point (CLI, stages, flows) imports patchsplat first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
