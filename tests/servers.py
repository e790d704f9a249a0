"""Real local servers for tests: a Prefect API server (SQLite or PostgreSQL) and a TCP proxy that can cut a
connection path (an outage of whatever is behind it, without losing that server's state)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from heal_core.servers import free_port, wait_healthy

OFFLINE = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    why = wait_healthy(url, proc, seconds, every=0.2)
    if why is not None:
        raise RuntimeError(f"{proc.args} ({url}) {why}: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL: Prefect workers can ignore SIGTERM for >30 s (see the Prefect notes)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def postgres_url() -> str | None:
    """A fresh database on the local PostgreSQL server (127.0.0.1:5432, trust auth), or None when none answers."""
    try:
        import asyncpg  # ships with Prefect
    except ImportError:
        return None
    import asyncio

    name = f"heal_test_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres", timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


class PrefectServer:
    """``prefect server start`` on a free port with its own PREFECT_HOME. ``restart()`` stops it and starts it
    again on the same port and database, so its state survives, as in a production server restart."""

    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self.home, self.port = home, free_port()
        self.env = {
            **os.environ,
            **OFFLINE,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_UI_ENABLED": "true",
            "PREFECT_UI_API_URL": f"{self.api}",
        }  # else the UI calls port 4200
        self.env.pop("PREFECT_API_URL", None)
        if database_url:
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
        self.proc: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        log = self.home / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=out,
            )
        wait_http(f"{self.api}/health", self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def restart(self, down_seconds: float = 0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@contextlib.contextmanager
def prefect_server(home: Path, database_url: str | None = None) -> Iterator[PrefectServer]:
    server = PrefectServer(home, database_url)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's standalone S3 server on a free port (real HTTP, as s3fs meets S3 in a run); yields its URL."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        wait_http(f"http://127.0.0.1:{port}", proc, log, seconds=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, grace=10)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port. ``down()`` refuses and cuts every connection (an outage as
    clients see it); ``up()`` listens again on the same port. The target keeps its state throughout."""

    def __init__(self, target_port: int) -> None:
        self.target, self.port = target_port, free_port()
        self.downloaded = 0  # bytes the target sent to clients: what a reader fetched, headers included
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b, a is server), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if counted:
                    with self._lock:
                        self.downloaded += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
