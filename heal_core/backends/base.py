"""The teacher-backend protocol every backend (HF transformers, vLLM, OpenAI-compatible server) implements.

HEAL asks three things of a teacher, and only these three:

* ``sample``: N trajectories per prompt, each with the exact per-token entropy of the next-token
  distribution it was drawn from (GEAR finds breakpoints in it);
* ``continue_``: resume a partially written assistant answer (GEAR repairs after the breakpoint);
* ``score`` / ``score_prefixes``: log-probabilities of given text (PURE), the batched form scoring one
  answer after every step prefix of a trajectory while re-using the shared prefix's computation.

Backends that see only the top-k log-probs (vLLM, OpenAI-compatible servers) store a lower bound of the entropy
(``heal_core/backends/logprobs.py``); ``exact_entropy`` gives GEAR the exact trace of the few trajectories it cuts.

Prompts are user-message strings; a backend applies the model's chat template when it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from heal_core.config import SamplingConfig

FinishReason = Literal["stop", "length"]


@dataclass
class Generation:
    """One sampled completion.

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
        raise BackendUnavailable(f"{call}: the backend returned {len(generations)} generations without text for "
                                 f"{len(batches)} prompts")
    return batches


@dataclass
class PrefixScores:
    """Log-probs from one ``score_prefixes`` call.

    ``segment_logprobs[j]`` holds the per-token log-probs of segment j given the prompt and segments < j.
    ``answer_logprobs[k]`` holds the per-token log-probs of the answer placed after segments[:k] and the
    lead-in text, for k = 0..K (K = number of segments). Lead-in tokens are not included.
    """

    segment_logprobs: list[np.ndarray]
    answer_logprobs: list[np.ndarray] = field(default_factory=list)


@runtime_checkable
class TeacherBackend(Protocol):
    name: str

    def sample(self, prompts: Sequence[str], n: int, sampling: SamplingConfig) -> list[list[Generation]]:
        """``n`` samples for each prompt; result[i][j] is sample j of prompt i."""
        ...

    def continue_(
        self, prompt: str, prefix: str | Sequence[int], n: int, sampling: SamplingConfig
    ) -> list[Generation]:
        """``n`` continuations of a partial assistant answer; returned text excludes the prefix."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids as ``Generation.text`` renders it (GEAR maps a token index to text)."""
        ...

    def score(self, prompt: str, continuation: str) -> np.ndarray:
        """Per-token log-probs (temperature 1) of ``continuation`` as the assistant's answer to ``prompt``."""
        ...

    def score_prefixes(
        self, prompt: str, segments: Sequence[str], answer_lead: str, answer: str
    ) -> PrefixScores:
        """Score ``segments`` (which concatenate to one answer) and ``answer`` after every segment prefix."""
        ...

    def exact_entropy(
        self, prompt: str, token_ids: Sequence[int], recorded: np.ndarray, temperature: float
    ) -> np.ndarray:
        """The exact entropy trace (as ``Generation.entropy`` defines it) of a sampled answer to ``prompt``.

        ``recorded`` is the trace ``sample`` returned; a backend whose recorded traces are exact returns it.
        """
        ...
