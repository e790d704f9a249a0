"""The Prefect API an embedded ``heal run`` talks to when no ``PREFECT_API_URL`` is set.

Why not Prefect's own temporary server: it is a child in the terminal's process group, so the Ctrl-C meant for
``heal run`` stops it too. The flow, interrupted, then tries for minutes to report its final state to a server
that is gone, printing connection tracebacks, and further Ctrl-C's change nothing. This is the same server
(``prefect server start``), started in a session of its own so that only heal decides when it stops: after the
flow has recorded its last state.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from heal_core.servers import free_port, wait_healthy

STARTUP_TIMEOUT_S = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))


def _die_with_parent() -> None:
    """In the server's process, before it starts: on Linux, have the kernel stop it if heal itself is killed
    (``kill -9``), which no handler of heal's can see. Elsewhere a killed heal leaves the server running."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _wait_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    why = wait_healthy(f"{url}/health", server, STARTUP_TIMEOUT_S)
    if why is not None:
        raise RuntimeError(f"the local Prefect server {why} (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def _drain_to(server: subprocess.Popen[bytes]) -> None:
    """Send Prefect's queued logs and events while the server still answers, as Prefect's own test harness does
    before it stops its server: otherwise the process, at exit, retries them against a closed port for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    if server.poll() is None:
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


@contextmanager
def local_api() -> Iterator[str | None]:
    """Yields the API URL of a server started here and stopped on exit, or None when ``PREFECT_API_URL`` names
    one already (a cluster, or the tests' server)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--no-scheduler",
            "--no-late-runs",
            "--analytics-off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        _wait_healthy(url, server)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        _drain_to(server)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
