"""patchsplat: a COLMAP reconstruction in, trained Gaussian splats, a mesh and a report out."""

__version__ = "0.1.0"
