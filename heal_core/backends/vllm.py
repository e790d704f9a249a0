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
* scoring reads ``prompt_logprobs=0`` (the actual token's log-prob at T = 1): one request per scored text;
  prompt log-prob requests skip the prefix cache, so ``score_prefixes`` costs O(K * L) prefill on the GPU.

Seeds: each request goes in with its own seed, and vLLM draws sample j of it with seed + j, the row seed
``heal_core/seeds.py`` defines; ``Generation.seed`` is that row seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from heal_core import progress
from heal_core.backends import logprobs, tokens
from heal_core.backends.base import Generation, Request, Trace
from heal_core.backends.hf import HFBackend
from heal_core.config import SamplingConfig, TeacherConfig

INSTALL_HINT = (
    "the vllm teacher backend needs vLLM in this environment: pip install 'heal[vllm]' (Linux, CUDA; see README, "
    "GPU workers), or serve the teacher from another environment (heal serve-teacher --backend vllm) and set "
    "teacher.backend: openai"
)


def engine_kwargs(config: TeacherConfig, model: str) -> dict[str, Any]:
    """``vllm.LLM`` arguments from the config."""
    return {
        "model": model,
        "tokenizer": model,
        "dtype": config.dtype,
        "tensor_parallel_size": config.vllm.tensor_parallel_size,
        "gpu_memory_utilization": config.vllm.gpu_memory_utilization,
        "max_model_len": config.vllm.max_model_len or None,
        "enable_prefix_caching": config.vllm.enable_prefix_caching,
        "max_logprobs": config.top_logprobs,
        "logprobs_mode": "raw_logprobs",  # the model's T = 1 distribution; tempered in logprobs.py
        "generation_config": "vllm",  # the checkpoint's generation_config.json must not change sampling
    }


def serve_command(
    config: TeacherConfig, model: str, served_name: str, host: str, port: int, vllm_bin: str = "vllm"
) -> tuple[list[str], dict[str, str]]:
    """``vllm serve`` for the shared-server shape, and the environment defaults it needs.

    The same engine settings as ``engine_kwargs``: ``--max-logprobs`` = ``teacher.top_logprobs`` (vLLM refuses
    larger requests), raw T = 1 log-probs, the checkpoint's generation config ignored, prefix caching (the N
    samples of a problem and GEAR's continuations share prefixes). Multi-GPU ranks are started with ``spawn``:
    forking after CUDA is initialised hangs (lighteval#670).
    """
    vllm = config.vllm
    command = [
        vllm_bin, "serve", model,
        "--host", host, "--port", str(port),
        "--served-model-name", served_name,
        "--dtype", config.dtype,
        "--tensor-parallel-size", str(vllm.tensor_parallel_size),
        "--data-parallel-size", str(vllm.data_parallel_size),
        "--gpu-memory-utilization", str(vllm.gpu_memory_utilization),
        "--max-logprobs", str(config.top_logprobs),
        "--logprobs-mode", "raw_logprobs",
        "--generation-config", "vllm",
        "--enable-prefix-caching" if vllm.enable_prefix_caching else "--no-enable-prefix-caching",
        *(["--max-model-len", str(vllm.max_model_len)] if vllm.max_model_len else []),
    ]
    return command, {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


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


def _floats(position: Mapping[int, Any] | None) -> dict[int, float] | None:
    """vLLM's ``{token id: Logprob}`` as ``{token id: float}``."""
    return None if position is None else {token: entry.logprob for token, entry in position.items()}


def completion_generation(
    completion: Any, seed: int, temperature: float, *, stop_ids: Sequence[int], k: int, vocab_size: int,
    decode: Callable[[Sequence[int]], str],
) -> Generation:
    """A ``Generation`` from a ``vllm.CompletionOutput`` (its token_ids, logprobs and finish_reason)."""
    return logprobs.sampled_generation(
        completion.token_ids, [_floats(p) for p in completion.logprobs],
        stopped_by_server=completion.finish_reason == "stop", stop_ids=stop_ids, k=k, temperature=temperature,
        vocab_size=vocab_size, seed=seed, decode=decode,
    )


def prompt_positions(output: Any) -> list[dict[int, float] | None]:
    """A ``vllm.RequestOutput``'s prompt log-probs as ``{token id: log-prob}`` per position (None first)."""
    return [_floats(p) for p in output.prompt_logprobs]


class VLLMBackend(logprobs.RowScoringBackend):
    """``TeacherBackend`` over ``vllm.LLM``; see heal_core/backends/base.py for the contract."""

    kind = "vllm"

    def __init__(self, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> None:
        try:
            from vllm import LLM, SamplingParams
            from vllm.inputs import TokensPrompt
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        self._params, self._prompt = SamplingParams, TokensPrompt
        self.config = config.model_copy(update={"dtype": dtype}) if dtype else config
        self._load_tokens(model or config.model)
        self.llm = LLM(**engine_kwargs(self.config, self.model_path))
        self._forcer: HFBackend | None = None

    @classmethod
    def from_config(cls, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> VLLMBackend:
        return cls(config, model, dtype)

    # ---- sampling -------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> list[list[Generation]]:
        """Every request in one engine call: vLLM schedules and batches them itself."""
        rows = [tokens.request_ids(self.tokenizer, r.prompt, r.prefix) for r in requests]
        k = self.config.top_logprobs
        params = [self._params(**sampling_kwargs(sampling, r.n, r.seed, self.stop_ids, k)) for r in requests]
        outputs = self.llm.generate([self._prompt(prompt_token_ids=row) for row in rows], params, use_tqdm=False)
        generated = [
            [completion_generation(c, r.seed + c.index, sampling.temperature, stop_ids=self.stop_ids, k=k,
                                   vocab_size=self.vocab_size, decode=self.decode)
             for c in sorted(out.outputs, key=lambda c: c.index)]
            for out, r in zip(outputs, requests, strict=True)
        ]
        progress.advance(sum(map(len, generated)), sum(len(g.token_ids) for gens in generated for g in gens))
        return generated

    def exact_entropy(self, traces: Sequence[Trace], temperature: float) -> list[np.ndarray]:
        """With ``entropy: exact``, one teacher-forced pass of the HF model per trace; with ``topk``, the recorded
        bounds."""
        if self.config.entropy != "exact":
            return [np.asarray(t.recorded) for t in traces]
        if self._forcer is None:
            self._forcer = HFBackend(self.model_path, self.config.dtype, self.config.device)
        out = []
        for t in traces:
            ids = tokens.prompt_ids(self.tokenizer, t.prompt)
            out.append(self._forcer.teacher_forced(ids + list(t.token_ids), len(ids), temperature).entropy)
        return out

    # ---- scoring --------------------------------------------------------------------------------------

    def _score_rows(self, rows: list[list[int]]) -> list[list[dict[int, float] | None]]:
        """Prompt log-probs of every row in one engine call."""
        params = self._params(**scoring_kwargs())
        outputs = self.llm.generate([self._prompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
        return [prompt_positions(out) for out in outputs]
