"""patchsplat: a COLMAP reconstruction in, trained Gaussian splats, a mesh and a report out."""

import os

# How long torch's OpenMP threads spin, waiting for the next parallel region, before they sleep (GNU OpenMP's
# GOMP_SPINCOUNT, in iterations). Its own default, 300,000, holds a core the waiting thread does not need: with
# another busy process on a 2-core machine (parallel DVC stages, CI) one CPU render took 2.1 s instead of 0.04 s,
# and training ran 4x slower. Never spinning (OMP_WAIT_POLICY=PASSIVE, the setting until issue 15) pays a wake-up
# at each of a training step's parallel regions instead: on an idle machine, steps 1.06-1.5x as long as with
# 5,000 spins; those cost 11-13% when another busy process takes a core (10,000: 23%). bench/RESULTS.md, issue 15.
# It must be set before torch is imported, and every entry point (CLI, stages, flows) imports patchsplat first;
# a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
OPENMP_SPIN_COUNT = "5000"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)

__version__ = "0.1.0"
