"""A model served for the length of its evaluation (``evaluation.backend: openai``).

A run's students exist only once they are trained, on whichever worker evaluates them, so no user can have a server
up for each beforehand. The evaluation starts one on a free port of its own machine, as ``heal serve-teacher``
starts the teacher's (vLLM's server from ``evaluation.vllm_python``'s environment, else heal's own on
transformers), waits until it answers, samples it through heal's OpenAI backend (the teacher's class: the same
requests, seeds and stop tokens) and stops it, with every process it started, when the evaluation ends or fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from heal_core.config import HealConfig, ServerConfig, TeacherConfig
from heal_core.servers import free_port, wait_healthy

STARTUP_SECONDS = 900.0
"""How long a server may take to answer: vLLM compiles and profiles for minutes on a large model."""

SERVED_NAME = "heal-evaluated"
"""The name the server serves the model under (any name: only this evaluation asks for it)."""


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message holds the end of its log."""


def _command(cfg: HealConfig, config_file: Path, port: int) -> list[str]:
    """``heal serve-teacher`` on the config that names the model as its teacher: the one way heal starts a server."""
    heal = str(Path(sys.executable).with_name("heal"))
    python = cfg.evaluation.vllm_python
    backend = ["--backend", "vllm", "--vllm-python", python] if python else ["--backend", "hf"]
    return [heal, "serve-teacher", str(config_file), *backend, "--port", str(port)]


@contextmanager
def served(cfg: HealConfig, model: str, dtype: str) -> Iterator[TeacherConfig]:
    """Serve ``model`` (a local path) in ``dtype`` on 127.0.0.1 and yield the teacher settings that reach it (backend
    openai), the rest of ``cfg.teacher`` unchanged; stop the server on exit."""
    port = free_port()
    server = ServerConfig(
        url=f"http://127.0.0.1:{port}/v1",
        model_name=SERVED_NAME,
        max_concurrency=cfg.teacher.server.max_concurrency,
        timeout_seconds=cfg.teacher.server.timeout_seconds,
        patience_seconds=min(cfg.teacher.server.patience_seconds, 60.0),
    )  # ours: dead, not restarting
    own = cfg.teacher.model_copy(update={"model": model, "dtype": dtype, "server": server})
    with tempfile.TemporaryDirectory(prefix="heal-served-") as tmp:
        config_file, log = Path(tmp) / "config.yaml", Path(tmp) / "server.log"
        config_file.write_text(cfg.model_copy(update={"teacher": own}).to_yaml())
        with log.open("wb") as out:
            proc = subprocess.Popen(
                _command(cfg, config_file, port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_ready(f"http://127.0.0.1:{port}", proc, log, model)
            yield own.model_copy(update={"backend": "openai", "entropy": "topk"})
        finally:
            _stop(proc)


def _wait_ready(base: str, proc: subprocess.Popen, log: Path, model: str) -> None:
    """Until the server answers /health, then one one-token completion: a server is healthy before its engine has
    run the model once (vLLM's CPU build starts, then fails the first request of a model whose head size its
    attention kernels lack), and a model that cannot run must fail here, as a model that cannot be loaded, with the
    server's reason, not after the client's patience on a dead server."""
    why = wait_healthy(f"{base}/health", proc, STARTUP_SECONDS)
    if why is not None:
        raise ServerStartError(f"the server for {model} {why}: {_tail(log)}")
    try:
        answer = httpx.post(
            f"{base}/v1/completions",
            json={"model": SERVED_NAME, "prompt": "1", "max_tokens": 1},
            timeout=STARTUP_SECONDS,
        )
    except httpx.HTTPError as err:
        raise ServerStartError(
            f"the server for {model} did not complete a first request ({err}): {_tail(log)}"
        ) from None
    if answer.status_code != 200:
        raise ServerStartError(
            f"the server for {model} cannot run it: {answer.text[:300]}\n{_tail(log, 5, errors=True)}"
        )


def _tail(log: Path, lines: int = 15, errors: bool = False) -> str:
    """The log's last ``lines``; with ``errors``, its last lines that name an error (vLLM's reason is far above)."""
    text = log.read_text(errors="replace").splitlines()
    if errors:
        text = list(dict.fromkeys(line.split("] ", 1)[-1] for line in text if "Error:" in line))
    return "\n".join(text[-lines:])


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's process group (vLLM's engine runs in processes of its own), SIGKILL after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
