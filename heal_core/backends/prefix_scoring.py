"""PURE's prefix scoring on a transformers model, packed: every step's log-probs and every answer probe's, for a
group of trajectories in a few forwards (``HFBackend.score_prefixes`` groups them and handles running out of
memory; ``tests/test_hf_backend.py`` checks every score against a naive one-forward-per-probe reference).

1. One right-padded forward over each prompt + trajectory fills a KV cache and gives the steps' log-probs.
2. Each trajectory's answer probes (``Probe``: the prefix up to a step boundary, then the answer lead and the
   answer) are packed after its cached tokens, several per forward, each seeing the cache up to its boundary and
   itself (a 4-D additive mask and explicit position ids); the cache is cropped back after each packed forward.

Cost: O(L + K * A) tokens per trajectory in 1 + a few forwards per group, instead of O(K * L) tokens in K + 1
forwards per trajectory. Packing matters on a GPU, where a short forward costs about as much as a long one.

What changes between transformers versions (the cache argument's name, how a cache is made and cropped, where
the attention implementation is read) is in ``Transformers``, the one adapter; the rest is index arithmetic.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from heal_core.backends.base import PrefixScores
from heal_core.backends.tokens import PrefixPlan

LOGPROB_CHUNK = 1024  # rows of [rows, V] float32 log-softmax at a time: bounds memory at V ~ 152k
PACKED_QUERY_TOKENS = 4096  # answer tokens per packed forward: bounds the [queries, keys] attention mask


class Probe(NamedTuple):
    """One answer probe of a trajectory, placed in its padded row."""

    boundary: int  # b: the probe follows row[:b], the prompt and the trajectory tokens its prefix keeps
    tokens: list[int]  # the rest of the prefix, the answer lead and the answer, tokenised as one string
    answer_start: int  # index in ``tokens`` of the first token holding answer characters


class Transformers:
    """The calls whose form depends on the transformers version, for one loaded model."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.24

    def check_masks(self) -> None:
        """Packed probes need a custom 4-D mask, which only the sdpa and eager attention take."""
        attention = self.model.config._attn_implementation
        if attention not in ("sdpa", "eager"):
            raise NotImplementedError(f"score_prefixes needs custom masks (sdpa or eager attention), not {attention}")

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: DynamicCache,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of a forward that appends to ``cache``."""
        extra = {} if position_ids is None else {"position_ids": position_ids}
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, **{self.cache_kw: cache}, use_cache=True, **extra
        ).logits

    @staticmethod
    def drop_last(cache: DynamicCache, count: int) -> None:
        cache.crop(-count)  # 5.x crop takes only a negative count: tokens to drop


def target_logprobs(logits: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """log softmax(logits[i])[targets[i]] for each row, computed in float32 chunks."""
    target = torch.as_tensor(list(targets), device=logits.device, dtype=torch.long)
    parts = [
        logits[s : s + LOGPROB_CHUNK].float().log_softmax(-1).gather(-1, target[s : s + LOGPROB_CHUNK, None])
        for s in range(0, len(target), LOGPROB_CHUNK)
    ]
    return torch.cat(parts).squeeze(-1).cpu().numpy() if parts else np.zeros(0, dtype=np.float32)


@torch.inference_mode()
def score_group(model: Transformers, items: Sequence[tuple[list[int], PrefixPlan]], pad_id: int) -> list[PrefixScores]:
    """Steps 1 and 2 for one group of (prompt ids, plan) items."""
    device = model.model.device
    rows = [prompt + plan.ids for prompt, plan in items]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
    cache = model.new_cache()
    logits = model.forward(input_ids.to(device), attention_mask.to(device), cache)
    segments = []
    for r, (prompt, plan) in enumerate(items):
        flat = target_logprobs(logits[r, len(prompt) - 1 : len(rows[r]) - 1], plan.ids)
        segments.append([flat[a:b] for a, b in itertools.pairwise(plan.segment_bounds)])
    del logits

    pending = [
        [
            Probe(len(prompt) + cut, probe, start)
            for cut, probe, start in zip(plan.cuts, plan.probes, plan.answer_starts, strict=True)
        ]
        for prompt, plan in items
    ]
    answers: list[list[np.ndarray]] = [[] for _ in items]
    budget = max(1, PACKED_QUERY_TOKENS // len(items))  # query tokens per trajectory per packed forward
    while any(pending):
        takes = []
        for r, probes in enumerate(pending):
            n, used = 0, 0
            while n < len(probes) and (n == 0 or used + 1 + len(probes[n].tokens) <= budget):
                used += 1 + len(probes[n].tokens)
                n += 1
            takes.append(probes[:n])
            pending[r] = probes[n:]
        for r, scores in enumerate(_answer_pass(model, rows, takes, cache, width, pad_id)):
            answers[r] += scores
    return [PrefixScores(segment_logprobs=s, answer_logprobs=a) for s, a in zip(segments, answers, strict=True)]


def _answer_pass(
    model: Transformers,
    rows: list[list[int]],
    takes: list[list[Probe]],
    cache: DynamicCache,
    width: int,
    pad_id: int,
) -> list[list[np.ndarray]]:
    """Answer log-probs of each row's probes, from ONE forward over each row's probes packed after its cached
    tokens (the cache is ``width`` wide, right-padded).

    A probe with boundary b is fed as [row[b - 1], *tokens] at positions b - 1, b, ...; it sees the cached
    row[:b - 1] and itself, causally. Re-feeding row[b - 1] makes its logits predict the probe's first token, so
    a probe is scored from its first token on. The answer is tokens[answer_start:]. The cache is cropped back to
    ``width``."""
    device = model.model.device
    queries = [[t for p in probes for t in (row[p.boundary - 1], *p.tokens)] for row, probes in zip(rows, takes)]
    span = max(1, max(map(len, queries)))
    input_ids = torch.full((len(rows), span), pad_id, dtype=torch.long)
    positions = torch.zeros_like(input_ids)
    for r, (query, probes) in enumerate(zip(queries, takes, strict=True)):
        input_ids[r, : len(query)] = torch.tensor(query, dtype=torch.long)
        positions[r, : len(query)] = torch.tensor(
            [p.boundary - 1 + j for p in probes for j in range(1 + len(p.tokens))], dtype=torch.long
        )
    mask = torch.stack([packed_mask(probes, width, span, model.model.dtype, device) for probes in takes])
    logits = model.forward(input_ids.to(device), mask, cache, positions.to(device))
    model.drop_last(cache, span)
    out = []
    for r, probes in enumerate(takes):
        scores, offset = [], 0
        for p in probes:
            scores.append(
                target_logprobs(logits[r, offset + p.answer_start : offset + len(p.tokens)], p.tokens[p.answer_start :])
            )
            offset += 1 + len(p.tokens)
        out.append(scores)
    return out


def packed_mask(
    probes: Sequence[Probe], context: int, span: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Additive [1, span, context + span] mask (0 = attend) of one row for ``_answer_pass``'s probes: a probe sees
    the cached keys before its boundary - 1 and its own earlier queries. Query slots past the probes are padding
    and see key 0 only (a row with nothing to attend to would be undefined)."""
    widths = torch.tensor([1 + len(p.tokens) for p in probes], dtype=torch.long, device=device)
    probe = torch.repeat_interleave(torch.arange(len(probes), device=device), widths)
    first = torch.cumsum(widths, 0) - widths  # each probe's first query index
    boundary = torch.tensor([p.boundary for p in probes], dtype=torch.long, device=device)[probe]
    queries = torch.arange(len(probe), device=device)
    keys = torch.arange(context + span, device=device)
    packed = keys[None, :] - context  # key index within the packed probes; negative for cached keys
    allowed = torch.zeros((span, context + span), dtype=torch.bool, device=device)
    allowed[: len(probe)] = (keys[None, :] < boundary[:, None] - 1) | (
        (packed >= first[probe][:, None]) & (packed <= queries[:, None])
    )
    allowed[len(probe) :, 0] = True
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None]
