"""pycolmap, imported so that it leaves the process's SIGTERM handling alone.

Importing pycolmap installs glog's failure signal handler, for SIGTERM too: a process that has
imported it and is then asked to stop (``patchsplat run`` escalating after Ctrl-C, a batch system,
``kill``) prints a native stack trace and aborts instead of running patchsplat's handler, which
stops cleanly with a checkpoint and one line. Every module takes pycolmap from :func:`pycolmap`;
the crash handlers glog installs (SIGSEGV, SIGABRT, ...) are kept: their native traces help.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import ModuleType


def pycolmap() -> ModuleType:
    """The pycolmap module, with Python's SIGTERM handler put back after its first import."""
    if "pycolmap" in sys.modules:
        return sys.modules["pycolmap"]
    on_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    import pycolmap as module

    if before is not None:
        signal.signal(signal.SIGTERM, before)  # re-registers it at the C level, over glog's
    return module


def load_in_main_thread() -> None:
    """Import pycolmap now, on the main thread, for a process whose later imports may happen on other
    threads (the Prefect flow runs in a worker thread), where the handler could not be put back."""
    if threading.current_thread() is threading.main_thread():
        pycolmap()
