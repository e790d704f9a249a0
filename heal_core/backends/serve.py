"""``heal serve-teacher --backend hf``: an OpenAI-compatible completions server over the HF backend.

For a teacher on a CPU box or a small GPU, and as the real server the OpenAI backend is tested against. It speaks
the subset of ``/v1/completions`` that heal's OpenAI backend uses, with vLLM's semantics: token-id or text
prompts, ``n``, ``seed``, ``logprobs: k`` (top-k at T = 1 plus the token itself, as vLLM's default
``raw_logprobs``), ``echo`` with prompt log-probs, ``return_tokens_as_token_ids``, vLLM's ``top_k`` and
``stop_token_ids``, and ``allowed_token_ids`` with one token and ``max_tokens: 1`` (how heal asks a vLLM server
for a next-token log-prob through its prefix cache; this server has none, so heal scores through echo here).
Requests it cannot honour exactly (streaming, stop strings, penalties, greedy decoding) get HTTP 400 naming the
field, never a silently different answer. Choice j of a prompt is drawn with ``seed + j``, as vLLM draws it.
``vllm serve`` is the throughput path: this server runs one request at a time on its one model.

Log-probs come from one teacher-forced forward over prompt + sample after sampling (``HFBackend.teacher_forced``):
exact, at the cost of one extra forward per sample.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from heal_core.backends import tokens
from heal_core.backends.base import Generation
from heal_core.backends.hf import HFBackend
from heal_core.config import SamplingConfig
from heal_core.fingerprints import model_identity


class CompletionRequest(BaseModel):
    """The fields heal's OpenAI backend sends; unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[int] | list[str] | list[list[int]]
    n: int = Field(1, ge=1)
    max_tokens: int = Field(16, ge=1)  # the OpenAI and vLLM default
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, description="-1 or 0: off (vLLM)")
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    skip_special_tokens: bool = True
    return_tokens_as_token_ids: bool = False
    stream: bool = False


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {400: "BadRequestError", 401: "AuthenticationError"}.get(status, "InternalServerError")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


class CompletionService:
    """Turns completion requests into HF backend calls and OpenAI-shaped responses."""

    def __init__(self, backend: HFBackend, served_name: str, max_logprobs: int, max_n: int, max_tokens: int) -> None:
        self.backend, self.served_name, self.max_logprobs = backend, served_name, max_logprobs
        self.max_n, self.max_tokens = max_n, max_tokens

    def check(self, request: CompletionRequest) -> None:
        """Reject what this server would not do exactly as asked, or what is more than it serves (one request
        must not hold the model for an hour)."""
        if request.model != self.served_name:
            raise BadRequest(
                f"model {request.model!r} is not served here; this server serves {self.served_name!r}", "model"
            )
        if request.n > self.max_n:
            raise BadRequest(f"n={request.n}: this server draws at most {self.max_n} completions a request", "n")
        if request.max_tokens > self.max_tokens:
            raise BadRequest(
                f"max_tokens={request.max_tokens}: this server generates at most {self.max_tokens}", "max_tokens"
            )
        unsupported = {
            "stream": request.stream,
            "stop": bool(request.stop),
            "ignore_eos": request.ignore_eos,
            "min_p": request.min_p != 0.0,
            "presence_penalty": request.presence_penalty != 0.0,
            "frequency_penalty": request.frequency_penalty != 0.0,
            "repetition_penalty": request.repetition_penalty != 1.0,
            "skip_special_tokens": not request.skip_special_tokens,
        }
        for field, used in unsupported.items():
            if used:
                raise BadRequest(f"{field} is not supported by heal serve-teacher --backend hf", field)
        if request.temperature == 0.0:
            raise BadRequest("greedy decoding (temperature 0) is not supported; use a temperature > 0", "temperature")
        if request.logprobs is not None and request.logprobs > self.max_logprobs:
            raise BadRequest(
                f"Requested sample logprobs of {request.logprobs}, which is greater than max allowed: "
                f"{self.max_logprobs}",
                "logprobs",
            )
        if request.allowed_token_ids is not None and (len(request.allowed_token_ids) != 1 or request.max_tokens != 1):
            raise BadRequest(
                "allowed_token_ids is served for one token and max_tokens=1 only (a next-token log-prob)",
                "allowed_token_ids",
            )
        if request.allowed_token_ids and not 0 <= request.allowed_token_ids[0] < self.backend.model.config.vocab_size:
            raise BadRequest(
                f"allowed token {request.allowed_token_ids[0]} is not in the vocabulary", "allowed_token_ids"
            )
        extra = set(request.stop_token_ids or []) - set(self.backend.eos_ids)
        if extra:
            raise BadRequest(
                f"stop_token_ids {sorted(extra)} are not the model's stop tokens {self.backend.eos_ids}",
                "stop_token_ids",
            )

    def rows(self, prompt: str | list[int] | list[str] | list[list[int]]) -> list[list[int]]:
        """Prompts as token ids; text is tokenised with the tokenizer's special tokens, as vLLM does."""
        items = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
        rows = [self.backend.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in items]
        if not rows or not all(rows):
            raise BadRequest("prompt must hold at least one token", "prompt")
        vocab = self.backend.model.config.vocab_size
        if any(not 0 <= t < vocab for row in rows for t in row):
            raise BadRequest(f"prompt token ids must be in [0, {vocab})", "prompt")
        return rows

    def complete(self, request: CompletionRequest) -> dict[str, Any]:
        self.check(request)
        rows = self.rows(request.prompt)
        sampling = SamplingConfig(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=max(request.top_k, 0),
            max_new_tokens=request.max_tokens,
        )
        seed = request.seed if request.seed is not None else secrets.randbits(62)
        if request.allowed_token_ids:  # one token allowed: every draw is that token, nothing to sample
            [token] = request.allowed_token_ids
            finish = "stop" if token in self.backend.eos_ids else "length"
            drawn = [Generation([token], "", np.zeros(1), finish, seed + j) for _ in rows for j in range(request.n)]
        else:
            drawn = self.backend.generate_rows([(row, seed + j) for row in rows for j in range(request.n)], sampling)
        flat = iter(drawn)
        samples = [[next(flat) for _ in range(request.n)] for _ in rows]
        choices = [
            self._choice(i * request.n + j, row, generation.token_ids, generation.finish_reason, request)
            for i, (row, generations) in enumerate(zip(rows, samples, strict=True))
            for j, generation in enumerate(generations)
        ]
        completion_tokens = sum(len(g.token_ids) for generations in samples for g in generations)
        prompt_tokens = sum(map(len, rows))
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _choice(
        self, index: int, row: list[int], generated: list[int], finish: str, request: CompletionRequest
    ) -> dict[str, Any]:
        text = self.backend.decode(generated)
        ids = generated
        if request.echo:
            text, ids = self.backend.decode(row) + text, row + generated
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._logprobs(row + generated, len(ids), request.logprobs, request.return_tokens_as_token_ids)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": None}

    def _logprobs(self, ids: list[int], shown: int, k: int, as_ids: bool) -> dict[str, Any]:
        """The completions ``logprobs`` object for the last ``shown`` tokens of ``ids`` (all of them when echoed:
        the first token then has no log-prob)."""
        start = len(ids) - shown
        stats = self.backend.teacher_forced(ids, max(start, 1), temperature=1.0, top_k=k)
        name = (lambda t: f"token_id:{t}") if as_ids else (lambda t: tokens.decode(self.backend.tokenizer, [t]))
        token_logprobs: list[float | None] = [None] if start == 0 else []
        top_logprobs: list[dict[str, float] | None] = [None] if start == 0 else []
        for t in range(len(stats.logprobs)):
            token = ids[max(start, 1) + t]
            top = {name(int(i)): float(v) for i, v in zip(stats.top_ids[t], stats.top_logprobs[t], strict=True)}
            top[name(token)] = float(stats.logprobs[t])
            token_logprobs.append(float(stats.logprobs[t]))
            top_logprobs.append(top)
        names = [name(t) for t in ids[start:]]
        offsets, at = [], 0
        for piece in names:
            offsets.append(at)
            at += len(piece)
        return {"tokens": names, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def create_app(
    backend: HFBackend,
    served_name: str,
    max_logprobs: int = 20,
    api_key: str | None = None,
    max_n: int = 64,
    max_tokens: int = 32768,
) -> FastAPI:
    """The ASGI app: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``; with ``api_key``, every
    ``/v1`` request must carry it as a bearer token (as ``vllm serve --api-key`` asks), else HTTP 401."""
    service = CompletionService(backend, served_name, max_logprobs, max_n, max_tokens)
    app = FastAPI(title="heal serve-teacher (hf)")
    one_at_a_time = anyio.Lock()
    expected = f"Bearer {api_key}".encode() if api_key else None

    @app.middleware("http")
    async def authenticated(request: Request, call_next):
        given = request.headers.get("authorization", "").encode()
        if expected and request.url.path.startswith("/v1") and not secrets.compare_digest(given, expected):
            return _error(401, "a valid bearer token is required")
        return await call_next(request)

    _answer_errors(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    identity = model_identity(backend.model_path)  # what heal's clients key the generation store by

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": served_name, "object": "model", "owned_by": "heal", "root": backend.model_path}
        return {"object": "list", "data": [{**model, "heal_identity": identity}]}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> dict[str, Any]:
        async with one_at_a_time:
            return await anyio.to_thread.run_sync(service.complete, request)

    return app


def _answer_errors(app: FastAPI) -> None:
    """Every failure answered in OpenAI's error shape, which the OpenAI client (and heal's) reads the reason from."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        return _error(400, f"{'.'.join(map(str, first['loc'][1:]))}: {first['msg']}", str(first["loc"][-1]))

    @app.exception_handler(BadRequest)
    async def bad(_: Request, exc: BadRequest) -> JSONResponse:
        return _error(400, str(exc), exc.param)

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"{type(exc).__name__}: {exc}")


def serve(
    model: str,
    served_name: str,
    host: str,
    port: int,
    dtype: str,
    device: str,
    max_logprobs: int,
    max_batch_sequences: int,
    api_key: str | None,
    max_n: int,
    max_tokens: int,
) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    backend = HFBackend(model, dtype, device, max_batch_sequences)
    uvicorn.run(create_app(backend, served_name, max_logprobs, api_key, max_n, max_tokens), host=host, port=port)
