"""A teacher that answers from stored completions first: the generation chain re-run over rows already drawn.

A problem stored under another selection (``heal_core/fingerprints.py``: a new λ, cap or wave size) is not sampled
again: the shard's chain (``heal_core/shard.py``) runs as it would, and every request whose completions are stored
is answered from them. Completion j of a request is the one seeded ``request.seed + j`` alone
(``heal_core/seeds.py``), so a stored row *is* the completion the teacher would give again, keyed by what the
teacher saw (user message, the partial answer it continued) and that seed. A request with a completion missing (a
wave that is now needed) goes to the teacher whole. PURE's stored U and P are re-judged, not re-scored
(``generate_shard``'s ``scored``); a row never scored is scored. The judge, when on, is asked again: its replies are
not stored, only its verdicts.

The backend is built on the first request that needs it, so a shard answered entirely from storage never loads
the teacher. It meters what reaches the real teacher (``Usage``): the shard's lineage records it, and a training-only
change is shown to cost 0 teacher tokens there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Self

import numpy as np

from heal_core import progress
from heal_core.backends import tokens
from heal_core.backends.base import Generation, PrefixQuery, PrefixScores, Request, TeacherBackend, Trace
from heal_core.config import SamplingConfig, TeacherConfig
from heal_core.trajectory import Trajectory

Key = tuple[str, str, int]  # (user message, partial answer continued, seed)


@dataclass
class Usage:
    """What reached the real teacher: sampling requests, the completions and tokens they drew, PURE queries scored."""

    requests: int = 0
    samples: int = 0
    tokens: int = 0
    scored: int = 0


def completion_key(row: Trajectory) -> tuple[Key, Generation]:
    """The request a stored row answered, and the completion it was: a GEAR row's text is its parent's prefix and
    the continuation, of which only the continuation was generated."""
    prefix = row.text[: row.repair.prefix_chars] if row.repair else ""
    message = row.hint.hint if row.hint else row.prompt
    generation = Generation(list(row.token_ids), row.text[len(prefix):], np.asarray(row.entropy, dtype=np.float64),
                            row.finish_reason, row.seed)  # type: ignore[arg-type]
    return (message, prefix, row.seed), generation


class ReplayBackend(TeacherBackend):
    kind = "replay"

    def __init__(self, model_path: str, teacher: Callable[[], TeacherBackend], stored: Iterable[Trajectory],
                 recompute_entropy: bool) -> None:
        """``teacher`` builds the real backend; ``recompute_entropy``: the real one recomputes exact entropy traces
        (vLLM, ``entropy: exact``), which a stored top-k bound is not."""
        self.model_path, self._build, self.recompute_entropy = model_path, teacher, recompute_entropy
        self.completions: dict[Key, Generation] = dict(completion_key(row) for row in stored)
        self.usage = Usage()
        self._real: TeacherBackend | None = None

    @classmethod
    def from_config(cls, config: TeacherConfig, model: str | None = None, dtype: str | None = None) -> Self:
        raise TypeError("a ReplayBackend wraps a built backend: ReplayBackend(model_path, teacher, stored, ...)")

    @property
    def real(self) -> TeacherBackend:
        if self._real is None:
            self._real = self._build()
        return self._real

    @cached_property
    def tokenizer(self):  # type: ignore[override]
        return self._real.tokenizer if self._real is not None else tokens.load_tokenizer(self.model_path)

    def _stored(self, request: Request) -> list[Generation] | None:
        prefix = request.prefix if isinstance(request.prefix, str) else self.decode(request.prefix)
        found = [self.completions.get((request.prompt, prefix, request.seed + j)) for j in range(request.n)]
        return None if any(g is None for g in found) else found  # type: ignore[return-value]

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> list[list[Generation]]:
        # 1. answer every request whose completions are all stored
        answers: list[list[Generation] | None] = [self._stored(r) for r in requests]
        replayed = [a for a in answers if a is not None]
        progress.advance(sum(len(a) for a in replayed), sum(len(g.token_ids) for a in replayed for g in a))
        # 2. the rest in one call to the teacher, metered
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            drawn = self.real.generate([requests[i] for i in missing], sampling)
            for i, generations in zip(missing, drawn, strict=True):
                answers[i] = generations
            self.usage.requests += len(missing)
            self.usage.samples += sum(len(g) for g in drawn)
            self.usage.tokens += sum(len(x.token_ids) for g in drawn for x in g)
        return answers  # type: ignore[return-value]

    def score(self, prompt: str, continuation: str) -> np.ndarray:
        self.usage.scored += 1
        return self.real.score(prompt, continuation)

    def score_prefixes(self, queries: Sequence[PrefixQuery]) -> list[PrefixScores]:
        self.usage.scored += len(queries)
        return self.real.score_prefixes(queries)

    def exact_entropy(self, traces: Sequence[Trace], temperature: float) -> list[np.ndarray]:
        if self.recompute_entropy:
            return self.real.exact_entropy(traces, temperature)
        return super().exact_entropy(traces, temperature)

