"""The teacher as a local HF transformers model: sampling with exact per-token entropy, continuation, scoring.

Entropy is recorded by a ``LogitsProcessor`` rather than ``output_logits``: the latter keeps a [B, V] tensor
per step (hundreds of GB at teacher scale), the recorder keeps one float per row and step.

Every row is sampled from its own ``torch.Generator`` (``RowSampler``), seeded with the row's seed
(``heal_core/seeds.py``), not from torch's global RNG: a row's tokens then do not depend on which rows share its
``generate`` call, which is what lets the backend pack any requests into a call, and split a call that runs out
of accelerator memory, without changing a single output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from heal_core import progress
from heal_core.backends import prefix_scoring, tokens
from heal_core.backends.base import Generation, PrefixQuery, PrefixScores, Request, TeacherBackend
from heal_core.config import SamplingConfig, TeacherConfig

logger = logging.getLogger(__name__)

_SCORED_TOKENS = 4096  # padded trajectory tokens per scoring forward: bounds its [tokens, V] logits


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / temperature) over the last dim, in float32.

    The ``where`` keeps entries with p = 0 (logit -inf) at 0 instead of 0 * -inf = NaN.
    """
    logp = (logits.float() / temperature).log_softmax(-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, 0.0).sum(-1)


class EntropyRecorder(LogitsProcessor):
    """Records each step's entropy and returns the scores unchanged.

    generate() runs user processors after its own (none are active with a neutral config) and before the
    temperature/top-k/top-p warpers, so the scores seen here are the model's raw logits.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(token_entropy(scores, self.temperature))
        return scores

    def entropies(self) -> torch.Tensor:
        """[rows, steps] float32 on the CPU."""
        return torch.stack(self.steps, 1).cpu()


class RowSampler(LogitsProcessor):
    """Draws each row's next token from that row's own generator, and returns scores that leave only that token
    possible, so ``generate`` run greedily emits it.

    The draw is temperature, then top-k, then top-p (HF's own warpers' order and rules: top-p keeps the smallest
    set of likeliest tokens whose probability reaches ``top_p``), then the Gumbel-max trick: argmax(logits / T +
    Gumbel noise) is a sample of softmax(logits / T). Each row draws the same amount of noise at every step,
    finished or not, so its stream depends on its seed and step alone.
    """

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int], device: torch.device) -> None:
        self.temperature, self.top_k, self.top_p = sampling.temperature, sampling.top_k, sampling.top_p
        self.generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if self.top_p < 1.0:
            ordered, order = logits.sort(-1, descending=True)
            before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # probability of the likelier tokens
            drop = torch.empty_like(before, dtype=torch.bool).scatter(-1, order, before >= self.top_p)
            logits = logits.masked_fill(drop, -torch.inf)
        uniform = torch.stack(
            [torch.rand(logits.shape[-1], generator=g, device=logits.device) for g in self.generators]
        )
        choice = (logits - (-uniform.log()).log()).argmax(-1, keepdim=True)
        return torch.full_like(scores, -torch.inf).scatter(-1, choice, 0.0)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _require_local(model: str) -> None:
    """Fail before a long load when an offline run names a model that is neither a directory nor cached."""
    if Path(model).is_dir() or not _offline():
        return
    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not even a valid hub id: a local path that does not exist
        cached = None
    if not isinstance(cached, str):
        raise FileNotFoundError(
            f"teacher model {model!r} is not a local directory and not in the HF cache, and HF_HUB_OFFLINE is set"
        )


@dataclass(frozen=True)
class ForcedStats:
    """Per predicted token of a teacher-forced pass: what the vLLM backend's exact mode and the HTTP server need."""

    entropy: np.ndarray  # [L] entropy of softmax(z / T), nats
    logprobs: np.ndarray  # [L] log p(token) at T = 1
    top_ids: np.ndarray  # [L, k] the k likeliest tokens at T = 1
    top_logprobs: np.ndarray  # [L, k] their log-probs, descending


class HFBackend(TeacherBackend):
    """``TeacherBackend`` over ``AutoModelForCausalLM``; see heal_core/backends/base.py for the contract."""

    kind = "hf"

    def __init__(self, model: str, dtype: str = "auto", device: str = "auto", max_batch_sequences: int = 64) -> None:
        _require_local(model)
        self.model_path = model
        self.device = torch.device(device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = tokens.load_tokenizer(model)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        self.batch_rows = max_batch_sequences  # rows per generate() call; lowered where a call runs out of memory
        self.score_rows = max_batch_sequences  # trajectories per scoring forward; lowered likewise
        self.eos_ids = tokens.stop_token_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        # generate() fills every unset GenerationConfig field from model.generation_config, so a checkpoint's
        # generation_config.json (repetition_penalty, top_k, min_p, ...) would silently change sampling.
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        self.transformers = prefix_scoring.Transformers(self.model)

    @classmethod
    def from_config(cls, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> HFBackend:
        return cls(model or config.model, dtype or config.dtype, config.device, config.max_batch_sequences)

    def _encode(self, text: str) -> list[int]:
        return tokens.encode(self.tokenizer, text)

    def _prompt_ids(self, prompt: str) -> list[int]:
        return tokens.prompt_ids(self.tokenizer, prompt)

    # ---- sampling -------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> list[list[Generation]]:
        ids = [tokens.request_ids(self.tokenizer, r.prompt, r.prefix) for r in requests]  # once per request, not row
        rows = [(row, r.seed + j) for row, r in zip(ids, requests, strict=True) for j in range(r.n)]
        flat = iter(self.generate_rows(rows, sampling))
        return [[next(flat) for _ in range(r.n)] for r in requests]

    def generate_rows(self, rows: Sequence[tuple[list[int], int]], sampling: SamplingConfig) -> list[Generation]:
        """One completion after each (prompt token ids, seed) row, in order (``generate`` and the HTTP server).

        Rows go longest first into calls of at most ``batch_rows`` rows, so a call pads little. A call that runs
        out of accelerator memory is retried in halves, and the largest size that fit becomes ``batch_rows`` for
        the rest of this backend's life (one shard); a single row that does not fit fails with its length.
        """
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[Generation | None] = [None] * len(rows)
        done = 0
        while done < len(order):
            take = order[done : done + self.batch_rows]
            try:
                generations = self._generate_call([rows[i] for i in take], sampling)
            except torch.OutOfMemoryError as exc:
                self._shrink(
                    len(take), exc, f"{len(rows[take[0]][0])} prompt tokens + max_new_tokens={sampling.max_new_tokens}"
                )
                continue
            for i, generation in zip(take, generations, strict=True):
                out[i] = generation
            done += len(take)
            progress.advance(len(take), sum(len(g.token_ids) for g in generations))
        return out  # type: ignore[return-value]

    def _shrink(self, tried: int, exc: torch.OutOfMemoryError, row: str, limit: str = "batch_rows") -> None:
        """Halve the ``limit`` attribute below the ``tried`` rows that ran out of memory, or fail where one row did."""
        if tried == 1:
            raise torch.OutOfMemoryError(
                f"one row of {row} does not fit in accelerator memory: lower "
                f"teacher.sampling.max_new_tokens or use a larger device"
            ) from exc
        setattr(self, limit, tried // 2)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning("out of accelerator memory with %d rows per call: using %d from now on", tried, tried // 2)

    @torch.inference_mode()
    def _generate_call(self, rows: Sequence[tuple[list[int], int]], sampling: SamplingConfig) -> list[Generation]:
        input_ids, attention_mask = self._left_pad([ids for ids, _ in rows])
        seeds = [seed for _, seed in rows]
        config = GenerationConfig(
            do_sample=False,  # RowSampler draws every token; greedy decoding then emits its draw
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        recorder = EntropyRecorder(sampling.temperature)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder, RowSampler(sampling, seeds, self.device)]),
        )
        new_tokens, entropies = out[:, input_ids.shape[1] :].cpu(), recorder.entropies()
        return [self._generation(new_tokens[r].tolist(), entropies[r], seed) for r, seed in enumerate(seeds)]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _generation(self, token_ids: list[int], entropy: torch.Tensor, seed: int) -> Generation:
        """Trim a row after its first stop token (kept); the rest is padding from rows that ran longer."""
        kept, stopped = tokens.trim_at_stop(token_ids, self.eos_ids)
        return Generation(
            token_ids=kept,
            text=self.decode(kept),
            entropy=entropy[: len(kept)].numpy(),
            finish_reason="stop" if stopped else "length",
            seed=seed,
        )

    @torch.inference_mode()
    def teacher_forced(self, ids: Sequence[int], start: int, temperature: float = 1.0, top_k: int = 0) -> ForcedStats:
        """Stats of each of ``ids[start:]`` given the tokens before it, from one forward over ``ids``.

        The forward holds [len(ids), V] logits in the model's dtype (2.4 GB at 8k tokens, V = 152k, bf16);
        log-softmax runs in float32 chunks as in scoring.
        """
        if not 1 <= start <= len(ids):
            raise ValueError(f"start must be in [1, {len(ids)}], got {start}")
        logits = self._forward(ids)[start - 1 : -1]
        targets = torch.as_tensor(list(ids[start:]), device=self.device, dtype=torch.long)
        k = min(top_k, logits.shape[-1])
        entropy, logprobs, top_ids, top_logprobs = [], [], [], []
        for s in range(0, len(targets), prefix_scoring.LOGPROB_CHUNK):
            chunk = logits[s : s + prefix_scoring.LOGPROB_CHUNK]
            entropy.append(token_entropy(chunk, temperature))
            logp = chunk.float().log_softmax(-1)
            logprobs.append(logp.gather(-1, targets[s : s + prefix_scoring.LOGPROB_CHUNK, None]).squeeze(-1))
            values, indices = logp.topk(k, dim=-1)
            top_logprobs.append(values)
            top_ids.append(indices)
        if not entropy:  # start == len(ids): nothing to predict
            return ForcedStats(
                np.zeros(0, np.float32),
                np.zeros(0, np.float32),
                np.zeros((0, k), np.int64),
                np.zeros((0, k), np.float32),
            )
        return ForcedStats(*(torch.cat(parts).cpu().numpy() for parts in (entropy, logprobs, top_ids, top_logprobs)))

    # ---- scoring --------------------------------------------------------------------------------------

    def _forward(self, ids: Sequence[int]) -> torch.Tensor:
        """Logits [len(ids), V] of one unpadded row, causal, without a cache."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        return self.model(input_ids=input_ids, use_cache=False).logits[0]

    @torch.inference_mode()
    def score(self, prompt: str, continuation: str) -> np.ndarray:
        prompt_ids, ids = self._prompt_ids(prompt), self._encode(continuation)
        logits = self._forward(prompt_ids + ids)
        return prefix_scoring.target_logprobs(logits[len(prompt_ids) - 1 : -1], ids)

    def score_prefixes(self, queries: Sequence[PrefixQuery]) -> list[PrefixScores]:
        """Trajectories are scored in groups, longest first (``prefix_scoring.score_group``): at most ``score_rows``
        of them and ``_SCORED_TOKENS`` padded tokens per group, which bounds the group's [tokens, V] logits. A group
        that runs out of accelerator memory is split as a generation call is (``_shrink``); the scores do not
        change.
        """
        self.transformers.check_masks()
        items = [
            (self._prompt_ids(q.prompt), tokens.prefix_plan(self.tokenizer, q.segments, q.answer_lead, q.answer))
            for q in queries
        ]
        length = [len(prompt) + len(plan.ids) for prompt, plan in items]
        order = sorted(range(len(items)), key=lambda i: -length[i])
        out: list[PrefixScores | None] = [None] * len(items)
        done = 0
        while done < len(order):
            fits = max(1, _SCORED_TOKENS // max(1, length[order[done]]))  # the first of a group is its longest
            take = order[done : done + min(self.score_rows, fits)]
            try:
                scores = prefix_scoring.score_group(self.transformers, [items[i] for i in take], self.pad_id)
            except torch.OutOfMemoryError as exc:
                self._shrink(len(take), exc, f"{length[take[0]]} scored tokens", "score_rows")
                continue
            for i, score in zip(take, scores, strict=True):
                out[i] = score
            done += len(take)
        return out  # type: ignore[return-value]
