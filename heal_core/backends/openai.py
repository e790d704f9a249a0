"""The teacher behind an OpenAI-compatible ``/v1/completions`` endpoint: vllm serve, SGLang, heal serve-teacher.

The shared-server shape: the model is loaded once per node and many shards call it. Everything the protocol needs
goes through the plain completions API with vLLM's widely implemented extensions:

* prompts are token ids built locally (``heal_core/backends/tokens.py``): chat template and GEAR's raw prompt
  continuation (prompt ids + kept prefix ids) are exact, whatever template the server would apply;
* ``n`` samples per request, ``logprobs: k`` for the top-k log-probs the entropy bound is computed from
  (``heal_core/backends/logprobs.py``), ``return_tokens_as_token_ids`` so tokens come back as ids, not as
  strings that can collide;
* scoring sends ``echo: true`` with ``logprobs``: the response carries the prompt's own log-probs. On a vLLM
  server PURE's answer probes go through its prefix cache instead (``next_token_payload``): vLLM computes prompt
  log-probs only for requests that skip the cache, which made every probe a full prefill.

Requests run concurrently on an httpx async client (at most ``server.max_concurrency`` in flight) in a private
event-loop thread (an anyio blocking portal), so the sync protocol methods work from any thread, event loop or
not. 429, 5xx, timeouts and connection errors are retried with exponential backoff (``Retry-After`` wins);
other errors fail at once with the server's message. A server that answers without log-probs fails with an
error saying what heal needs, never with entropies made up.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import time
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
from anyio.from_thread import start_blocking_portal

from heal_core import progress
from heal_core.backends import logprobs, tokens
from heal_core.backends.base import Generation, Request, with_answered
from heal_core.config import SamplingConfig, ServerConfig, TeacherConfig
from heal_core.environment import NotAllowed, check_allowed

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 30.0


def _retry_after(header: str | None) -> float | None:
    """A Retry-After header's wait in seconds: a number, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not header:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(header))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, (email.utils.parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds())
    return None


TOKEN_ID_PREFIX = "token_id:"


class ServerError(RuntimeError):
    """The server refused a request, or kept failing past the retries."""


class Unfinished(Exception):
    """``post_all`` failed (its ``__cause__``) after ``done`` (index -> response) had arrived."""

    def __init__(self, done: dict[int, Any]) -> None:
        super().__init__(f"{len(done)} responses arrived before the failure")
        self.done = done


class LogprobsUnsupported(ServerError):
    """The server answered without the per-token log-probs heal's entropy and scoring need."""


def sample_payload(
    model: str, prompt_ids: Sequence[int], n: int, sampling: SamplingConfig, seed: int, stop_ids: Sequence[int], k: int
) -> dict[str, Any]:
    """A sampling request: every field that shapes the output explicit, as for the vLLM engine."""
    return {
        "model": model,
        "prompt": list(prompt_ids),
        "n": n,
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        "min_p": 0.0,
        "seed": seed,
        "stop": [],
        "stop_token_ids": list(stop_ids),
        "ignore_eos": False,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "logprobs": k,
        "echo": False,
        "skip_special_tokens": True,
        "return_tokens_as_token_ids": True,
        "stream": False,
    }


def score_payload(model: str, ids: Sequence[int]) -> dict[str, Any]:
    """A scoring request: the prompt echoed with the actual token's log-prob at T = 1 at every position."""
    return {
        "model": model,
        "prompt": list(ids),
        "n": 1,
        "max_tokens": 1,  # servers generate at least one token; it is ignored
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "seed": 0,
        "stop": [],
        "logprobs": 1,
        "echo": True,
        "return_tokens_as_token_ids": True,
        "stream": False,
    }


def next_token_payload(model: str, contexts: Sequence[Sequence[int]], token: int) -> dict[str, Any]:
    """log p(``token`` | context) for many contexts as ordinary one-token completions, which read vLLM's prefix
    cache: ``allowed_token_ids`` makes ``token`` the one drawn, and vLLM's log-probs (``--logprobs-mode
    raw_logprobs``, as ``heal serve-teacher`` starts it) are the model's own, taken before that mask. Otherwise a
    scoring request (``score_payload``), without the echo."""
    return {
        **score_payload(model, []),
        "prompt": [list(c) for c in contexts],
        "echo": False,
        "logprobs": 0,
        "allowed_token_ids": [token],
    }


NEXT_TOKEN_BATCH = 64  # contexts per next-token request (16 to 1,024 cost the same on the demo: BENCHMARKS.md, V)


def token_id(token: str) -> int:
    """``"token_id:42"`` -> 42: the form ``return_tokens_as_token_ids`` asks for."""
    if not token.startswith(TOKEN_ID_PREFIX):
        raise LogprobsUnsupported(
            f"the server returned the token {token!r} as text: heal needs return_tokens_as_token_ids "
            "(vLLM >= 0.5, SGLang, heal serve-teacher)"
        )
    return int(token[len(TOKEN_ID_PREFIX) :])


def choice_tokens(choice: dict[str, Any]) -> tuple[list[int], list[dict[int, float] | None]]:
    """Token ids of a choice (echoed prompt first, when echoed) and each position's ``{id: log-prob}``.

    A position's map holds the top-k and the token itself; the first echoed token has none (None).
    """
    data = choice.get("logprobs")
    if not data or data.get("tokens") is None or data.get("token_logprobs") is None:
        raise LogprobsUnsupported("the server answered without per-token log-probs (choices[].logprobs)")
    ids = [token_id(t) for t in data["tokens"]]
    tops = data.get("top_logprobs") or [None] * len(ids)
    positions: list[dict[int, float] | None] = []
    for token, logprob, top in zip(ids, data["token_logprobs"], tops, strict=True):
        if logprob is None:
            positions.append(None)
            continue
        position = {token_id(key): float(value) for key, value in (top or {}).items()}
        position[token] = float(logprob)
        positions.append(position)
    return ids, positions


def _error_message(response: httpx.Response) -> str:
    """The server's own message: vLLM and OpenAI nest it in ``error``, older vLLM puts it at the top level."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return str(body)[:500]


class CompletionsClient:
    """Concurrent POSTs to ``<url>/completions`` with bounded concurrency and retries, callable from sync code."""

    def __init__(self, settings: ServerConfig) -> None:
        self.settings = settings
        headers = {}
        if settings.api_key_env:
            try:
                check_allowed(settings.api_key_env, "teacher.server.api_key_env")
            except NotAllowed as err:
                raise ServerError(str(err)) from None
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise ServerError(f"teacher.server.api_key_env names {settings.api_key_env}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        stack = contextlib.ExitStack()
        self._portal = stack.enter_context(start_blocking_portal())
        self._client = httpx.AsyncClient(
            base_url=settings.url.rstrip("/") + "/",
            headers=headers,
            timeout=settings.timeout_seconds,
            limits=httpx.Limits(max_connections=settings.max_concurrency),
        )
        stack.callback(self._portal.call, self._client.aclose)
        self._slots = self._portal.call(self._semaphore, settings.max_concurrency)
        self._close = weakref.finalize(self, stack.close)  # the loop thread ends with the client or at exit

    @staticmethod
    async def _semaphore(slots: int) -> anyio.Semaphore:
        return anyio.Semaphore(slots)

    def close(self) -> None:
        self._close()

    def get(self, path: str) -> Any:
        return self._portal.call(self._request, "GET", path, None)

    def post_all(self, path: str, payloads: Sequence[dict[str, Any]]) -> list[Any]:
        """Responses in the order of ``payloads``. The first failure cancels the requests still in flight and is
        raised as ``Unfinished``, which holds the responses that did arrive."""
        return self._portal.call(self._post_all, path, list(payloads))

    async def _post_all(self, path: str, payloads: list[dict[str, Any]]) -> list[Any]:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await self._request("POST", path, payloads[i])

        try:
            async with anyio.create_task_group() as group:
                for i in range(len(payloads)):
                    group.start_soon(one, i)
        except BaseExceptionGroup as failed:  # anyio groups every error: raise the first as itself
            raise Unfinished(results) from failed.exceptions[0]
        return [results[i] for i in range(len(payloads))]

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        """One request, retried through 429/5xx answers, timeouts and connection errors with jittered exponential
        backoff (a server's Retry-After wins, up to ``max_retry_after_seconds``) until ``patience_seconds`` have
        passed since its first failure: a server restarting or shedding load for minutes is waited out. A server
        that gives up names why in its last answers (vLLM's 500 "EngineDeadError" before its process exits): the
        error raised keeps that first answer beside the last failure (connection refused, by then)."""
        url = f"{self.settings.url.rstrip('/')}/{path}"
        attempt, deadline, first_said = 0, None, None  # the server's own first error, kept past its exit
        async with self._slots:
            while True:
                retry_after: float | None = None
                try:
                    response = await self._client.request(method, path, json=payload)
                except httpx.TransportError as exc:  # timeouts, refused and dropped connections
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if response.is_success:
                        return response.json()
                    problem = f"HTTP {response.status_code}: {_error_message(response)}"
                    first_said = first_said or problem
                    if response.status_code not in RETRY_STATUS:
                        raise self._refused(url, problem, payload)
                    retry_after = _retry_after(response.headers.get("retry-after"))
                now = time.monotonic()
                deadline = deadline or now + self.settings.patience_seconds
                if now >= deadline:
                    said = f"; the server first answered {first_said}" if first_said and first_said != problem else ""
                    raise ServerError(
                        f"{method} {url} failed {attempt + 1} times in {self.settings.patience_seconds:.0f}"
                        f" s (teacher.server.patience_seconds), last: {problem}{said}"
                    )
                delay = min(MAX_BACKOFF_SECONDS, self.settings.backoff_seconds * 2**attempt) * random.uniform(0.5, 1.0)
                if retry_after is not None:
                    delay = min(retry_after, self.settings.max_retry_after_seconds)
                await anyio.sleep(min(delay, deadline - now))
                attempt += 1

    @staticmethod
    def _refused(url: str, problem: str, payload: dict[str, Any] | None) -> ServerError:
        if payload and payload.get("logprobs") is not None and "logprob" in problem.lower():
            return LogprobsUnsupported(
                f"{url} refused a request for {payload['logprobs']} log-probs ({problem}): start the server with "
                "enough log-probs (vllm serve --max-logprobs, heal serve-teacher) or lower teacher.top_logprobs"
            )
        return ServerError(f"{url} refused the request: {problem}")


class OpenAIBackend(logprobs.RowScoringBackend):
    """``TeacherBackend`` over an OpenAI-compatible completions server; see heal_core/backends/base.py."""

    kind = "openai"

    def __init__(self, config: TeacherConfig, model: str | None = None) -> None:
        """``model`` (default ``teacher.model``) is where the tokenizer and config come from: a hub name or a
        directory without weights will do. The server is asked for ``server.model_name`` (default teacher.model)."""
        self.config = config
        self._load_tokens(model or config.model)
        self.served = config.server.model_name or config.model or self.model_path
        self.client = CompletionsClient(config.server)
        self._check_served()

    @classmethod
    def from_config(cls, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> OpenAIBackend:
        """``dtype`` is the server's business: it is not asked for."""
        return cls(config, model)

    def _check_served(self) -> None:
        """Fail before any work when the server does not serve the model (a wrong URL or name). A vLLM server
        (``owned_by: vllm``) has a prefix cache PURE's probes can read (``_next_logprobs``)."""
        entry = served_entry(self.client, self.served, self.config.server.url)
        self.identity = served_identity(entry)
        self.prefix_cache = entry.get("owned_by") == "vllm"

    def close(self) -> None:
        self.client.close()

    # ---- sampling -------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> list[list[Generation]]:
        """One HTTP request per request, ``server.max_concurrency`` in flight; the server draws choice j with the
        request's seed + j, as vLLM does."""
        k = self.config.top_logprobs
        payloads = [
            sample_payload(
                self.served,
                tokens.request_ids(self.tokenizer, r.prompt, r.prefix),
                r.n,
                sampling,
                r.seed,
                self.stop_ids,
                k,
            )
            for r in requests
        ]
        try:
            responses = self.client.post_all("completions", payloads)
        except Unfinished as unfinished:  # the answers that did arrive are the caller's to keep
            done = {i: self._generations(response, requests[i], sampling) for i, response in unfinished.done.items()}
            raise with_answered(unfinished.__cause__, done) from None
        results = [self._generations(response, r, sampling) for response, r in zip(responses, requests, strict=True)]
        progress.advance(sum(map(len, results)), sum(len(g.token_ids) for gens in results for g in gens))
        return results

    def _generations(self, response: dict[str, Any], request: Request, sampling: SamplingConfig) -> list[Generation]:
        choices = sorted(response["choices"], key=lambda c: c["index"])
        if len(choices) != request.n:
            raise ServerError(f"asked for {request.n} samples, the server returned {len(choices)}")
        return [self._generation(c, request.seed + c["index"], sampling.temperature) for c in choices]

    def _generation(self, choice: dict[str, Any], seed: int, temperature: float) -> Generation:
        ids, positions = choice_tokens(choice)
        return logprobs.sampled_generation(
            ids,
            positions,
            stopped_by_server=choice.get("finish_reason") == "stop",
            stop_ids=self.stop_ids,
            k=self.config.top_logprobs,
            temperature=temperature,
            vocab_size=self.vocab_size,
            seed=seed,
            decode=self.decode,
        )

    # ---- scoring --------------------------------------------------------------------------------------

    def _score_rows(self, rows: list[list[int]]) -> list[list[dict[int, float] | None]]:
        """Per-position log-prob maps of each row (echo requests, all in flight together), checked to be the
        row's own tokens."""
        try:
            responses = self.client.post_all("completions", [score_payload(self.served, r) for r in rows])
        except Unfinished as unfinished:  # scores are cheap to ask again: the failure is what matters
            raise unfinished.__cause__ from None
        out = []
        for row, response in zip(rows, responses, strict=True):
            ids, positions = choice_tokens(response["choices"][0])
            if ids[: len(row)] != row:
                raise ServerError("the server's echoed prompt differs from the token ids sent")
            out.append(positions[: len(row)])
        return out

    def _next_logprobs(self, items: list[tuple[list[int], int]]) -> list[float]:
        """One-token completions grouped by the token asked for (``next_token_payload``), ``NEXT_TOKEN_BATCH``
        contexts a request, all in flight together; each answer is checked to be that token."""
        by_token: dict[int, list[int]] = {}
        for i, (_, token) in enumerate(items):
            by_token.setdefault(token, []).append(i)
        batches = [
            (token, at[i : i + NEXT_TOKEN_BATCH])
            for token, at in by_token.items()
            for i in range(0, len(at), NEXT_TOKEN_BATCH)
        ]
        payloads = [next_token_payload(self.served, [items[i][0] for i in at], token) for token, at in batches]
        try:
            responses = self.client.post_all("completions", payloads)
        except Unfinished as unfinished:
            raise unfinished.__cause__ from None
        out = [0.0] * len(items)
        for (token, at), response in zip(batches, responses, strict=True):
            choices = sorted(response["choices"], key=lambda c: c["index"])
            if len(choices) != len(at):
                raise ServerError(f"asked for {len(at)} next-token log-probs, the server returned {len(choices)}")
            for i, choice in zip(at, choices, strict=True):
                ids, positions = choice_tokens(choice)
                if ids[:1] != [token] or positions[0] is None or token not in positions[0]:
                    raise ServerError(f"asked for token {token} alone (allowed_token_ids), the server drew {ids[:1]}")
                out[i] = positions[0][token]
        return out


def served_entry(client: CompletionsClient, served: str, url: str) -> dict[str, Any]:
    """The server's ``/v1/models`` entry for ``served``; a server that does not serve it (a wrong URL or name) is a
    ``ServerError``."""
    models = {m.get("id"): m for m in client.get("models").get("data", [])}
    if served not in models:
        raise ServerError(f"{url} serves {list(models)}, not {served!r} (teacher.server.model_name)")
    return models[served]


def served_identity(entry: dict[str, Any]) -> str:
    """What the server says the served model is, for the generation store's key: ``heal serve-teacher`` reports the
    identity of its files (``fingerprints.model_identity``); vLLM reports the path or hub name it loaded (``root``),
    which names the weights only as well as that path does: serve a pinned revision."""
    return entry.get("heal_identity") or f"served:{entry.get('root') or entry.get('id')}"


def server_identity(config: TeacherConfig, model: str) -> str:
    """``served_identity`` of the configured server, without loading a tokenizer (a shard answered from the store
    needs the key, not the teacher)."""
    client = CompletionsClient(config.server)
    try:
        return served_identity(
            served_entry(client, config.server.model_name or config.model or model, config.server.url)
        )
    finally:
        client.close()
