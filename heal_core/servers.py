"""Local servers heal starts as child processes (the embedded Prefect API, a model served for its evaluation) and
the tests' servers: a free port to start one on, and the wait until it answers. One place, so that every caller
stops waiting the moment its server dies, instead of after its whole patience on a dead port."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen, seconds: float, every: float = 0.5) -> str | None:
    """Poll ``url`` until it answers 200: None. Otherwise why it never will, for the caller's error: the process
    exited (with its status), or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            return f"exited with status {process.returncode} while starting"
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return f"did not answer within {seconds:g} s"
        time.sleep(every)
