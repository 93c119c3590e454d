"""Prefect's temporary API server (used when ``PREFECT_API_URL`` is unset), started where Ctrl-C cannot kill it.

Prefect 3.8 starts it on first use as a plain child process (``SubprocessASGIServer``), in the process
group of ``patchsplat run``. A terminal's Ctrl-C goes to that whole group, so the server died with the
first Ctrl-C — measured: every later API call of the flow failed and was retried, Prefect's events
worker logged each event it could not send in full (2 kB "Service 'EventsWorker' failed to process
item Event(...)" lines), the flow's final state was never recorded, and the run hung for minutes
before ending with an httpx traceback. Started here first, in a session of its own, it is the same
server (Prefect's own command, environment and singleton, so every Prefect client in this process uses
it) that only ``patchsplat run`` stops, at exit (Prefect's atexit hook).
"""

from __future__ import annotations

import subprocess

from patchsplat.errors import ToolFailed

# The server imports and migrates its database on start: ~15 s on an idle 2-core machine, over Prefect's
# default limit of 20 s when the machine is busy (measured: "Timed out while attempting to connect").
MIN_STARTUP_SECONDS = 90


class _NewSession:
    """The ``subprocess`` module as Prefect's server module sees it, with ``Popen`` starting a new session."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def Popen(self, *args, **kwargs):  # noqa: N802 - the name Prefect calls
        return self._module.Popen(*args, start_new_session=True, **kwargs)


_server_class = None


def _own_session_server_class():
    global _server_class
    if _server_class is None:
        from prefect.server.api import server as server_module

        class OwnSessionServer(server_module.SubprocessASGIServer):
            def _run_uvicorn_command(self) -> subprocess.Popen:
                # Prefect's own command and environment, only in a session of its own. (Patched on the
                # module for this one call: the command is built and started inside Prefect's method.)
                original = server_module.subprocess
                server_module.subprocess = _NewSession(original)
                try:
                    return super()._run_uvicorn_command()
                finally:
                    server_module.subprocess = original

        _server_class = OwnSessionServer
    return _server_class


def start_temporary_server() -> str | None:
    """Start Prefect's temporary server in a session of its own, unless ``PREFECT_API_URL`` names a server
    (or the temporary server is turned off); its API URL, or None."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    server_class = _own_session_server_class()
    # SubprocessASGIServer() is a singleton per port; Prefect's clients ask for the one without a port,
    # which this now is (unless one was started already, e.g. by an earlier run in this process).
    server = server_class()
    if not isinstance(server, server_class):
        return server.api_url if server.running else None
    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), MIN_STARTUP_SECONDS)
    try:
        server.start(timeout=timeout)
    except Exception as error:  # noqa: BLE001 - whatever stopped it, the remedy is the same
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ToolFailed("Prefect", f"its temporary API server did not start within {timeout} s ({reason[:200]}); "
                         "start one with `prefect server start` and set PREFECT_API_URL", kind="prefect_server") from None
    return server.api_url


def stop_temporary_server(timeout: float = 5.0, drain: bool = True) -> None:
    """Send what Prefect still holds for the server (logs, events), then stop the server started by
    :func:`start_temporary_server`, if any: done at the end of ``patchsplat run`` so that the command ends
    as soon as its work does (measured: left to Prefect's exit hooks, ending took up to 8 s more)."""
    if _server_class is None:
        return
    server = _server_class._instances.get(None)
    if not isinstance(server, _server_class) or not server.running:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    if drain:
        EventsWorker.drain_all(timeout=timeout)
        APILogWorker.drain_all(timeout=timeout)
    server.stop()
