"""patchsplat's native CPU kernels, built once with torch's C++ extension tools, else absent.

    python -m patchsplat.render.native      # build them now (``make setup`` does), print where and how fast

Forward and backward passes and a tile intersection, each the C++ twin of a pure-torch function that stays the
fallback and the reference (tests/test_render.py and tests/test_metrics.py hold each to it): ``composite.cpp``
(the tile compositing of :mod:`..composite`), ``project.cpp`` (projection of :mod:`..projection`, SH colours of
:mod:`..sh`, MCMC's position noise), ``tiles.cpp`` (the tile lists of :mod:`..tiles`), ``image_loss.cpp`` (the
training loss's L1 and SSIM, :mod:`patchsplat.metrics`) and ``bindings.cpp`` (the Python module). They run on torch's threads (``at::parallel_for``) over tiles or Gaussians.

:func:`load` returns the compiled module, or None when it cannot be built here (no C++ compiler, or
``PATCHSPLAT_NATIVE=0``); the renderer then uses the pure-torch functions, which give the same images and
gradients and a training step about 2x slower (bench/RESULTS.md, issue 15). :func:`select` is how the renderer
asks (its ``kernels`` argument).
The build goes to ``~/.cache/patchsplat/native/<key>`` (``PATCHSPLAT_NATIVE_DIR`` instead of that folder), the key
a hash of the sources, the flags, torch's and Python's versions: a finished build is imported directly (torch's
own JIT loader re-ran its build tools in every new process and, measured, sometimes recompiled for 30 s), and
a changed source or torch builds afresh.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import warnings
from functools import cache
from pathlib import Path

SOURCES = tuple(Path(__file__).with_name(name) for name in ("composite.cpp", "project.cpp", "tiles.cpp", "image_loss.cpp", "bindings.cpp"))
NAME = "patchsplat_native"
KERNELS = ("auto", "native", "torch")
# -O3: the per-pixel loops; no -march=native, so a build cached on a shared home folder runs on any x86-64.
# -fopenmp: at::parallel_for shares the tiles among torch's threads only when compiled with OpenMP; at run
# time the module uses the libgomp torch has already loaded (same soname), so there is one thread pool.
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def disabled() -> bool:
    """``PATCHSPLAT_NATIVE=0`` turns the native kernels off (the pure-torch ones are used)."""
    return os.environ.get("PATCHSPLAT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def build_dir() -> Path:
    """Where this source, these flags and this torch's build lives: one folder per combination, so a changed
    source or an upgraded torch builds afresh and a finished build is imported without calling the build tools."""
    import sys

    import torch

    key = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES)
                         + repr((CFLAGS, LDFLAGS, torch.__version__, sys.version)).encode())
    root = Path(os.environ.get("PATCHSPLAT_NATIVE_DIR") or Path.home() / ".cache" / "patchsplat" / "native")
    return root / key.hexdigest()[:16]


def build(verbose: bool = False):
    """Import the compiled module, building it first if this source has not been built here; raises what the build raises."""
    from torch.utils.cpp_extension import load as load_extension

    folder = build_dir()
    library = folder / f"{NAME}.so"
    if not library.is_file():
        # Built in a folder of its own, then renamed into place: a build cut short leaves no library behind
        # that the next process would map (a truncated one kills it with SIGBUS), and of two processes
        # building at once the second simply finds the first one's.
        staging = folder.with_name(f"{folder.name}.building-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        # Fresh lists: torch's builder appends its own flags to the lists it is given.
        try:
            module = load_extension(name=NAME, sources=[str(source) for source in SOURCES], extra_cflags=list(CFLAGS),
                                    extra_ldflags=list(LDFLAGS), build_directory=str(staging), verbose=verbose)
            try:
                staging.rename(folder)
            except OSError:
                pass   # another process renamed its build into place first
        finally:
            shutil.rmtree(staging, ignore_errors=True)   # gone once renamed; else a failed or redundant build's files
        return module
    spec = importlib.util.spec_from_file_location(NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def load():
    """The compiled module, or None (with one warning saying why) when it cannot be built or is turned off."""
    if disabled():
        return None
    try:
        return build()
    except Exception as error:  # a missing compiler or ninja shows as several exception types
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        warnings.warn(f"native CPU kernels unavailable ({reason}); using the pure-torch ones, about 2x slower "
                      "per training step (run `python -m patchsplat.render.native` to see the build)", stacklevel=2)
        return None


def select(kernels: str, *tensors, fixed=()):
    """The native module when ``kernels`` asks for it and the tensors suit it, else None (use the torch functions).

    ``auto``: on a CPU, float32 or float64, where the module could be built and none of the ``fixed`` tensors
    (inputs the kernel gives no gradient for) needs one; ``native``: the same, but an error where it cannot
    serve; ``torch``: never."""
    import torch

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if kernels == "torch":
        return None
    if any(t.requires_grad for t in fixed):
        if kernels == "native":
            raise ValueError("the native kernels give no gradient for this input (use kernels='torch')")
        return None
    suitable = all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
    module = load() if suitable else None
    if kernels == "native" and module is None:
        raise RuntimeError("the native kernels run on a CPU (float32 or float64) and must build here "
                           "(python -m patchsplat.render.native shows why they do not)")
    return module


def main() -> None:
    """Build now and say where (``python -m patchsplat.render.native``)."""
    import time

    started = time.perf_counter()
    build(verbose=False)
    print(f"native CPU kernels ready: {build_dir() / (NAME + '.so')} ({time.perf_counter() - started:.1f} s)")


