"""The teacher-backend protocol every backend (HF transformers, vLLM, OpenAI-compatible server) implements.

HEAL asks three things of a teacher, and only these three, each as one batched call over a whole shard's work
(a backend fills its own batches: HF packs generation rows up to ``teacher.max_batch_sequences`` and scores a
trajectory per forward with all its probes packed, the vLLM engine takes every prompt in one ``generate``, the
OpenAI client keeps ``server.max_concurrency`` requests in flight):

* ``generate``: completions of many requests, a request being a prompt (Stage I and II: N trajectories per
  problem) or a prompt and a partially written assistant answer (GEAR repairs after the breakpoint), each
  completion with the exact per-token entropy of the next-token distribution it was drawn from (GEAR finds
  breakpoints in it). Completion j of a request is drawn with seed ``request.seed + j`` alone
  (``heal_core/seeds.py``), so it does not depend on what else shares its batch;
* ``score`` / ``score_prefixes``: log-probabilities of given text (PURE); ``score_prefixes`` scores, for each of
  many trajectories, one answer after every step prefix while re-using the shared prefix's computation;
* ``exact_entropy``: the exact entropy traces of the trajectories GEAR cuts. Backends that see only the top-k
  log-probs (vLLM, OpenAI-compatible servers) store a lower bound while sampling
  (``heal_core/backends/logprobs.py``).

Prompts are user-message strings; a backend applies the model's chat template when it has one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Self

import numpy as np
from transformers import PreTrainedTokenizerBase

from heal_core.backends import tokens
from heal_core.config import SamplingConfig, TeacherConfig

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Request:
    """``n`` completions of ``prompt`` (a user message), continuing ``prefix`` (a partial assistant answer, as text
    or token ids; empty for a fresh answer). Completion j is drawn with seed ``seed + j``."""

    prompt: str
    n: int
    seed: int
    prefix: str | tuple[int, ...] = ""


@dataclass(frozen=True)
class PrefixQuery:
    """One trajectory for ``score_prefixes``: ``segments`` concatenate to the answer given to ``prompt``, and
    ``answer`` is scored after ``answer_lead`` placed after every segment prefix."""

    prompt: str
    segments: tuple[str, ...]
    answer_lead: str
    answer: str


@dataclass(frozen=True)
class Trace:
    """A sampled answer to ``prompt`` and the entropy trace ``generate`` recorded for it (``exact_entropy``)."""

    prompt: str
    token_ids: tuple[int, ...]
    recorded: np.ndarray


@dataclass
class Generation:
    """One sampled completion; ``seed`` is the seed it alone was drawn with.

    ``entropy[t]`` is the Shannon entropy (nats) of softmax(logits_t / temperature) over the full
    vocabulary, before top-k/top-p truncation: the distribution's own uncertainty at the sampling
    temperature, which is what a breakpoint surge means. It has one value per token in ``token_ids``.
    """

    token_ids: list[int]
    text: str
    entropy: np.ndarray
    finish_reason: FinishReason
    seed: int

    def __post_init__(self) -> None:
        if len(self.entropy) != len(self.token_ids):
            raise ValueError(f"entropy has {len(self.entropy)} values for {len(self.token_ids)} tokens")


def with_answered(error: BaseException, done: dict[int, list[Generation]]) -> BaseException:
    """``error``, raised by ``generate`` after some of its requests were answered, carrying their completions
    (request index -> completions), so a caller can keep them (``heal_core/replay.py``'s journal) and ask again only
    for the rest; its type stays what the failure was."""
    error.answered = done  # type: ignore[attr-defined]
    return error


def answered(error: BaseException) -> dict[int, list[Generation]]:
    """The completions a failed ``generate`` call did receive (``with_answered``); none by default."""
    return getattr(error, "answered", {})


class BackendUnavailable(RuntimeError):
    """A backend returned nothing usable for a whole batch: a broken engine, server or model, not a property of
    the prompts. Raised, never recorded, so the work fails and can be retried (see ``heal_core.verify``'s
    ``VerifierUnavailable`` for the same rule applied to the verifier)."""


def require_usable(batches: Sequence[Sequence[Generation]], call: str) -> Sequence[Sequence[Generation]]:
    """``batches`` unchanged, unless every one of more than one generation has no text: one empty completion is
    a model's choice (it stopped at once), all of them are a backend that does not work (a server that answers
    with empty content, a checkpoint whose stop tokens end every reply)."""
    generations = [g for batch in batches for g in batch]
    if len(generations) > 1 and not any(g.text.strip() for g in generations):
        raise BackendUnavailable(
            f"{call}: the backend returned {len(generations)} generations without text for {len(batches)} prompts"
        )
    return batches


@dataclass
class PrefixScores:
    """Log-probs of one ``PrefixQuery``.

    ``segment_logprobs[j]`` holds the per-token log-probs of segment j given the prompt and segments < j.
    ``answer_logprobs[k]`` holds the per-token log-probs of the answer placed after segments[:k] and the
    lead-in text, for k = 0..K (K = number of segments). Lead-in tokens are not included.
    """

    segment_logprobs: list[np.ndarray]
    answer_logprobs: list[np.ndarray] = field(default_factory=list)


class TeacherBackend(ABC):
    """What every backend shares; a backend adds how it generates and scores.

    ``model_path`` is the model the backend serves, as resolved for this worker: every trajectory records it as
    its ``teacher``, so the name lives with the weights it names instead of travelling beside them.
    """

    kind: ClassVar[str]  # teacher.backend's value for this backend
    model_path: str
    tokenizer: PreTrainedTokenizerBase

    @classmethod
    @abstractmethod
    def from_config(cls, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> Self:
        """A backend for ``model`` (default ``config.model``) in ``dtype`` (default ``config.dtype``)."""

    @abstractmethod
    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> list[list[Generation]]:
        """result[i][j] is completion j of request i, its text excluding the prefix. Of ``sampling`` the backend
        reads the temperature, top-p, top-k and max_new_tokens; ``n`` and the seed come with each request."""

    @abstractmethod
    def score(self, prompt: str, continuation: str) -> np.ndarray:
        """Per-token log-probs (temperature 1) of ``continuation`` as the assistant's answer to ``prompt``."""

    @abstractmethod
    def score_prefixes(self, queries: Sequence[PrefixQuery]) -> list[PrefixScores]:
        """Each query's segments scored, and its answer after every segment prefix."""

    @property
    def alive(self) -> bool:
        """Whether the backend can still answer: False after its engine died (the vLLM engine), so whoever keeps
        backends builds a new one instead of failing every later call on the dead one."""
        return True

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids as ``Generation.text`` renders it (GEAR maps a token index to text)."""
        return tokens.decode(self.tokenizer, token_ids)

    def exact_entropy(self, traces: Sequence[Trace], temperature: float) -> list[np.ndarray]:
        """The exact entropy trace (as ``Generation.entropy`` defines it) of each trace. Here the recorded one:
        exact where sampling saw the full logits (HF), the best there is where a server gives only top-k
        log-probs (``teacher.entropy: topk``); vLLM overrides it for ``entropy: exact``."""
        return [np.asarray(t.recorded) for t in traces]
