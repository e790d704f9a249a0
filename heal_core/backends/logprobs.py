"""Top-k log-prob structures (vLLM outputs, OpenAI completions responses) → HEAL's entropy and log-prob arrays.

Pure numpy, no engine or HTTP: both the vLLM and the OpenAI-compatible backends translate through here, and the
tests check it on synthetic distributions where the exact answer is known.

Why bounds and not an entropy: a server returns only the k most likely tokens per position (vLLM caps k at
``--max-logprobs``, default 20), and HEAL's entropy is that of softmax(z / T) over the *full* vocabulary at the
sampling temperature T (see ``Generation``). The log-probs come at T = 1 (vLLM's default ``raw_logprobs``, the
model's own distribution, also what prompt log-probs are), so the tempered distribution's top-k, its tail mass
and its normaliser are all known only within bounds. ``topk_entropy_bounds`` derives them:

* p_1 >= ... >= p_k: the top-k probabilities at T = 1; r = 1 - sum p_i their tail mass, spread over the
  m = V - k other tokens, each <= p_k.
* alpha = 1 / T; a_i = p_i ** alpha; the tail's tempered sum S = sum_tail p_j ** alpha lies between the
  uniform tail, m (r / m) ** alpha, and the tail packed at the cap, r p_k ** (alpha - 1) (power-mean
  inequality; which one is smaller depends on alpha >= 1). At T = 1 both are r.
* With R = S / (sum a + S) the tempered tail mass and H_top the entropy of the renormalised top-k,
  H = H_b(R) + (1 - R) H_top + R H_tail, where the tail's own entropy H_tail is at most log m and at least
  -log(q_k / R) (no tail token is likelier than the k-th, q_k = (1 - R) a_k / sum a).
* Lower bound: that expression with H_tail at its minimum increases with S (its derivative in S is
  (1 + sum_i a_i log(a_i / a_k) / Z) / Z > 0), so it is taken at the smallest S. At T = 1 it is the familiar
  H_trunc + r (-log p_k).
* Upper bound: with H_tail = log m the expression is concave in R; its maximum over the feasible R is taken
  at R* = m / (m + exp(H_top)) clipped to the interval.

The backends store the lower bound as ``Generation.entropy``: it is exact when the tail is empty, never above
the truth, and its error (at most upper - lower) shrinks with the tail mass, which is small wherever the teacher
is confident (``tests/test_backend_translation.py`` checks both bounds against the exact entropy).
``teacher.entropy: exact`` recomputes
the traces GEAR cuts with a teacher-forced pass instead.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from heal_core.backends import tokens
from heal_core.backends.base import Generation, PrefixQuery, PrefixScores, TeacherBackend

TokenLogprobs = Mapping[int, float]  # token id -> log-prob at one position


def top_logprob_matrix(positions: Sequence[TokenLogprobs | None], k: int) -> np.ndarray:
    """[positions, k] of each position's k largest log-probs, descending, padded with -inf.

    Servers return the top-k plus the sampled token when that one is outside the top-k: keeping the k largest
    drops it, so every row holds exactly the top-k the bounds assume.
    """
    out = np.full((len(positions), k), -np.inf)
    for t, entry in enumerate(positions):
        if not entry:
            raise ValueError(f"position {t} has no log-probs")
        values = np.sort(np.fromiter(entry.values(), dtype=np.float64))[::-1][:k]
        out[t, : len(values)] = values
    return out


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def topk_entropy_bounds(top_logprobs: np.ndarray, temperature: float, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bounds, in nats, on the entropy of softmax(z / temperature) at each position.

    ``top_logprobs`` is [positions, k]: the k largest log-probs at T = 1 per row, -inf where a row has fewer.
    The derivation is in the module docstring; both bounds are exact when a row's tail mass is zero.
    """
    lp = np.asarray(top_logprobs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] == 0:
        raise ValueError(f"top_logprobs must be [positions, k], got shape {lp.shape}")
    valid = np.isfinite(lp)
    if len(lp) and not valid[:, 0].all():
        raise ValueError("every position needs at least one finite log-prob")
    alpha = 1.0 / temperature
    k_valid = valid.sum(1)
    tail_tokens = np.maximum(vocab_size - k_valid, 1).astype(np.float64)
    log_cap = np.where(valid, lp, np.inf).min(1)  # log p_k, the smallest top-k log-prob
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tail = np.clip(1.0 - np.where(valid, np.exp(lp), 0.0).sum(1), 0.0, 1.0)
        log_tail = np.log(tail)  # -inf when the top-k hold all the mass
        log_a = np.where(valid, alpha * lp, -np.inf)
        log_sum_a = np.logaddexp.reduce(log_a, axis=1)
        uniform = np.log(tail_tokens) + alpha * (log_tail - np.log(tail_tokens))
        packed = log_tail + (alpha - 1.0) * log_cap
        log_s_lo, log_s_hi = np.minimum(uniform, packed), np.maximum(uniform, packed)
        r_lo = 1.0 / (1.0 + np.exp(log_sum_a - log_s_lo))
        r_hi = 1.0 / (1.0 + np.exp(log_sum_a - log_s_hi))
        q_top = np.where(valid, np.exp(log_a - log_sum_a[:, None]), 0.0)
    h_top = -_xlogx(q_top).sum(1)
    log_q_cap = alpha * log_cap - log_sum_a  # log(a_k / sum a): the k-th token's share of the top-k

    def lower(r: np.ndarray) -> np.ndarray:
        return -_xlogx(1.0 - r) + (1.0 - r) * h_top - r * (np.log1p(-r) + log_q_cap)

    def upper(r: np.ndarray) -> np.ndarray:
        return -_xlogx(r) - _xlogx(1.0 - r) + (1.0 - r) * h_top + r * np.log(tail_tokens)

    r_star = np.clip(tail_tokens / (tail_tokens + np.exp(h_top)), r_lo, r_hi)
    return lower(r_lo), upper(r_star)


def topk_entropy(positions: Sequence[TokenLogprobs | None], k: int, temperature: float, vocab_size: int) -> np.ndarray:
    """The entropy HEAL stores from top-k log-probs: the lower bound of ``topk_entropy_bounds`` (float32)."""
    if not positions:
        return np.zeros(0, dtype=np.float32)
    lower, _ = topk_entropy_bounds(top_logprob_matrix(positions, k), temperature, vocab_size)
    return lower.astype(np.float32)


def target_logprobs(positions: Sequence[TokenLogprobs | None], targets: Sequence[int]) -> np.ndarray:
    """log p(targets[t]) at each position (float32), as prompt log-prob requests return them.

    A position without its target token means the request did not ask for it: an error, not a guess.
    """
    if len(positions) != len(targets):
        raise ValueError(f"{len(positions)} log-prob positions for {len(targets)} target tokens")
    out = np.empty(len(targets), dtype=np.float32)
    for t, (entry, token) in enumerate(zip(positions, targets, strict=True)):
        if not entry or token not in entry:
            raise ValueError(f"position {t}: no log-prob for token {token}")
        out[t] = entry[token]
    return out


def sampled_generation(
    token_ids: Sequence[int],
    positions: Sequence[TokenLogprobs | None],
    *,
    stopped_by_server: bool,
    stop_ids: Sequence[int],
    k: int,
    temperature: float,
    vocab_size: int,
    seed: int,
    decode: Callable[[Sequence[int]], str],
) -> Generation:
    """A ``Generation`` from a sampled completion's token ids and per-token top-k log-probs.

    As in the HF backend, the completion ends at its first stop token (kept), and it finished by ``stop`` when it
    holds one or the server says so (a server may leave the stop token out of the ids).
    """
    kept, stopped = tokens.trim_at_stop(token_ids, stop_ids)
    if len(positions) < len(kept):
        raise ValueError(f"log-probs for {len(positions)} of {len(kept)} sampled tokens")
    return Generation(
        token_ids=kept,
        text=decode(kept),
        entropy=topk_entropy(positions[: len(kept)], k, temperature, vocab_size),
        finish_reason="stop" if stopped or stopped_by_server else "length",
        seed=seed,
    )


RowScorer = Callable[[list[list[int]]], list[list[TokenLogprobs | None]]]


def score(score_rows: RowScorer, tokenizer: PreTrainedTokenizerBase, prompt: str, continuation: str) -> np.ndarray:
    """``score`` for backends that can only score whole rows: one row, prompt + continuation, and the
    continuation's share of its log-probs."""
    prompt_ids, ids = tokens.prompt_ids(tokenizer, prompt), tokens.encode(tokenizer, continuation)
    [positions] = score_rows([prompt_ids + ids])
    return target_logprobs(positions[len(prompt_ids) :], ids)


@dataclass(frozen=True)
class _Layout:
    """Where one ``PrefixQuery`` lies in token ids: its whole row (prompt + trajectory), the prompt's length, the
    plan (``tokens.prefix_plan``) and, per boundary k, the row length kept before probe k."""

    row: list[int]
    prompt_len: int
    plan: tokens.PrefixPlan
    heads: list[int]


def _layouts(tokenizer: PreTrainedTokenizerBase, queries: Sequence[PrefixQuery]) -> list[_Layout]:
    out = []
    for q in queries:
        prompt_ids = tokens.prompt_ids(tokenizer, q.prompt)
        plan = tokens.prefix_plan(tokenizer, q.segments, q.answer_lead, q.answer)
        out.append(_Layout(prompt_ids + plan.ids, len(prompt_ids), plan, [len(prompt_ids) + c for c in plan.cuts]))
    return out


def _segments(layout: _Layout, positions: Sequence[TokenLogprobs | None]) -> list[np.ndarray]:
    """Each segment's token log-probs, from the whole row's per-position maps."""
    flat = target_logprobs(positions[layout.prompt_len : len(layout.row)], layout.plan.ids)
    bounds = layout.plan.segment_bounds
    return [flat[a:b] for a, b in itertools.pairwise(bounds)]


def score_prefixes(
    score_rows: RowScorer, tokenizer: PreTrainedTokenizerBase, queries: Sequence[PrefixQuery]
) -> list[PrefixScores]:
    """``score_prefixes`` for backends that can only score whole rows (prompt log-probs, echo).

    ``score_rows`` returns each row's per-position log-prob maps (position t: the row's token t given the ones
    before). A query's rows are its whole answer and, for every boundary k = 0..K, the trajectory before it + its
    answer probe: K + 2 rows, O(K * L) tokens, with the token ids of ``tokens.prefix_plan`` (as the HF backend
    scores). All queries' rows go to ``score_rows`` in one call, so the engine or server sees them together.
    """
    layouts, rows = _layouts(tokenizer, queries), []
    for layout in layouts:
        probes = zip(layout.heads, layout.plan.probes, strict=True)
        rows += [layout.row] + [layout.row[:head] + probe for head, probe in probes]
    positions, out, first = score_rows(rows), [], 0
    for layout in layouts:
        after = positions[first + 1 : first + 1 + len(layout.heads)]
        answers = [
            target_logprobs(p[head + start : head + len(probe)], probe[start:])
            for head, probe, start, p in zip(
                layout.heads, layout.plan.probes, layout.plan.answer_starts, after, strict=True
            )
        ]
        out.append(PrefixScores(segment_logprobs=_segments(layout, positions[first]), answer_logprobs=answers))
        first += 1 + len(layout.heads)
    return out


NextScorer = Callable[[list[tuple[list[int], int]]], list[float]]


def score_prefixes_cached(
    score_rows: RowScorer, next_logprob: NextScorer, tokenizer: PreTrainedTokenizerBase, queries: Sequence[PrefixQuery]
) -> list[PrefixScores]:
    """``score_prefixes`` for an engine with a prefix cache (vLLM): O(L + K * m) tokens instead of O(K * L).

    Why: vLLM computes prompt log-probs only for requests that skip its prefix cache, so the K + 2 rows of
    ``score_prefixes`` each cost a full prefill (PURE was 13x its HF cost through vllm serve, issue V). Here the
    whole rows are scored first (their prefill fills the cache), then every answer token of every probe is asked
    for as the next token of its own context, ``next_logprob([(context ids, token)])``: an ordinary generation
    request that reads the cache, so it recomputes only the context's last partial KV block and the probe. The
    log-probs are the same numbers the row would give (the same position, the same model; checked in
    ``tests/test_vllm_engine.py`` and ``bench/vllm_paths.py``).
    """
    layouts = _layouts(tokenizer, queries)
    wholes = score_rows([layout.row for layout in layouts])
    items, spans = [], []
    for layout in layouts:
        begin = len(items)
        for head, probe, start in zip(layout.heads, layout.plan.probes, layout.plan.answer_starts, strict=True):
            context = layout.row[:head] + probe
            items += [(context[: head + j], probe[j]) for j in range(start, len(probe))]
            spans.append((begin, len(items)))
            begin = len(items)
    values = np.asarray(next_logprob(items), dtype=np.float32) if items else np.zeros(0, dtype=np.float32)
    out, probe_at = [], 0
    for layout, whole in zip(layouts, wholes, strict=True):
        answers = [values[a:b] for a, b in spans[probe_at : probe_at + len(layout.heads)]]
        probe_at += len(layout.heads)
        out.append(PrefixScores(segment_logprobs=_segments(layout, whole), answer_logprobs=answers))
    return out


class RowScoringBackend(TeacherBackend):
    """A backend that sees log-probs only as top-k maps per position of whole rows (vLLM's prompt log-probs, a
    server's echo): it scores through ``score`` and ``score_prefixes`` above, and needs the tokenizer, the stop
    ids and the vocabulary size of the model it serves to turn those maps into HEAL's arrays."""

    def _load_tokens(self, path: str) -> None:
        self.model_path = path
        self.tokenizer = tokens.load_tokenizer(path)
        self.stop_ids = tokens.stop_token_ids(path, self.tokenizer)
        self.vocab_size = tokens.vocab_size(path)

    @abstractmethod
    def _score_rows(self, rows: list[list[int]]) -> list[list[TokenLogprobs | None]]:
        """Each row's per-position log-prob maps (position t: the row's token t given the ones before)."""

    def score(self, prompt: str, continuation: str) -> np.ndarray:
        return score(self._score_rows, self.tokenizer, prompt, continuation)

    prefix_cache = False  # True where the engine reads a prefix cache: probes then go through _next_logprobs

    def _next_logprobs(self, items: list[tuple[list[int], int]]) -> list[float]:
        """log p(token | context) at T = 1 of each (context ids, token), as ordinary requests that read the prefix
        cache."""
        raise NotImplementedError(f"{type(self).__name__} scores every probe as a row")

    def score_prefixes(self, queries: Sequence[PrefixQuery]) -> list[PrefixScores]:
        """Through the prefix cache where the engine has one (``score_prefixes_cached``), else K + 2 rows per query,
        all in one ``_score_rows`` call (the engine batches them, or the client sends them concurrently)."""
        if not self.prefix_cache:
            return score_prefixes(self._score_rows, self.tokenizer, queries)
        return score_prefixes_cached(self._score_rows, self._next_logprobs, self.tokenizer, queries)
