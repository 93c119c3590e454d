"""The names of a Gaussian's parameters: one set, from prepare's init.npz to the PLY file.

They are gsplat's names, which its densification strategies require as the keys of the parameter
dict. Every dict of Gaussians uses them (prepare's initial Gaussians, training's parameters and
checkpoints, :mod:`patchsplat.splat_io`'s arguments and results, merge, render, mesh, evaluate),
always holding the raw, pre-activation values, exactly as trained:

    means      [N, 3]     the centres
    scales     [N, 3]     log standard deviations (``exp`` gives the standard deviations)
    quats      [N, 4]     the rotation quaternion in w, x, y, z order, not necessarily normalised
    opacities  [N]        the logit of the opacity (``sigmoid`` gives the opacity)
    sh0        [N, 1, 3]  the degree-0 spherical-harmonics coefficient per colour channel
                          (base colour = 0.5 + SH_C0 * sh0)
    shN        [N, K, 3]  the higher-degree SH coefficients, K = (degree + 1)^2 - 1 (K may be 0)

Only the PLY file names them otherwise (INRIA's columns, see :mod:`patchsplat.splat_io`).
"""

from __future__ import annotations

GAUSSIAN_FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")

# The degree-0 spherical-harmonics basis value: base colour = 0.5 + SH_C0 * sh0.
SH_C0 = 0.28209479177387814
