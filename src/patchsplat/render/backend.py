"""Which renderer to use: gsplat's CUDA kernels where they can run, the pure-torch rasterizer elsewhere.

Contract: :func:`select_backend` maps a preference ("auto", "gsplat", "torch") to the backend name that
will actually run, and raises a RuntimeError that says why when "gsplat" is asked for and cannot run.
Checking gsplat loads its compiled extension (on a GPU machine the first check JIT-compiles it, which
takes minutes once); on a machine without CUDA nothing of gsplat's CUDA side is touched.
"""

from __future__ import annotations

import functools

import torch

BACKENDS = ("auto", "gsplat", "torch")


@functools.lru_cache(maxsize=1)
def gsplat_cuda_problem() -> str | None:
    """None when gsplat's CUDA kernels can run here, else a sentence saying why not."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no CUDA device or a CPU-only torch build)"
    try:
        from gsplat.cuda._backend import _C
    except Exception as error:  # a failed JIT build raises many kinds of errors
        return f"gsplat's CUDA extension failed to load: {type(error).__name__}: {error}"
    if _C is None:
        return "gsplat's CUDA extension is not available (no CUDA toolkit found to build it)"
    return None


def select_backend(preference: str = "auto", device: torch.device | str | None = None) -> str:
    """"gsplat" or "torch" for ``preference`` ("auto" | "gsplat" | "torch").

    "auto" picks "gsplat" when its CUDA kernels load (and, if ``device`` is given, the tensors are on
    a CUDA device), else "torch". "gsplat" raises RuntimeError when it cannot run.
    """
    if preference not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {preference!r}")
    if preference == "torch":
        return "torch"
    on_cpu_tensors = device is not None and torch.device(device).type != "cuda"
    problem = gsplat_cuda_problem()
    if preference == "gsplat":
        if problem is not None:
            raise RuntimeError(
                f"the gsplat backend needs CUDA: {problem}. Use backend='torch' (pure torch, runs anywhere) "
                "or backend='auto'."
            )
        if on_cpu_tensors:
            raise RuntimeError(f"the gsplat backend renders CUDA tensors only; these are on {device}.")
        return "gsplat"
    return "gsplat" if problem is None and not on_cpu_tensors else "torch"
