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

**The journal.** Whatever the real teacher answers is written at once to the shard's ``Journal``, the answers that
arrived before a call failed too (``backends.base.answered``), and replayed like a stored completion when the shard
runs again: a shard that fails after half its requests asks the teacher only for the other half on retry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Self

import numpy as np
import pyarrow as pa

from heal_core import progress, storage
from heal_core.backends import tokens
from heal_core.backends.base import Generation, PrefixQuery, PrefixScores, Request, TeacherBackend, Trace, answered
from heal_core.config import SamplingConfig, TeacherConfig
from heal_core.schema import SchemaError
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
    generation = Generation(
        list(row.token_ids),
        row.text[len(prefix) :],
        np.asarray(row.entropy, dtype=np.float64),
        row.finish_reason,
        row.seed,
    )  # type: ignore[arg-type]
    return (message, prefix, row.seed), generation


JOURNAL_SCHEMA = pa.schema(
    [
        pa.field("message", pa.string(), nullable=False),
        pa.field("prefix", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("entropy", pa.list_(pa.float64()), nullable=False),  # as drawn: a float32 copy could move a breakpoint
        pa.field("finish_reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Journal:
    """The teacher's answers for one shard's problems until they are stored: one Parquet object per call, written
    whole (``storage.write_parquet``), under a folder named for the shard's problems and selection. An object that
    does not read is skipped (its requests are asked again); ``clear`` removes the folder once the problems are in
    the store."""

    root: str
    options: dict

    def read(self) -> dict[Key, Generation]:
        found: dict[Key, Generation] = {}
        for uri in storage.list_files(self.root, self.options):
            try:
                rows = storage.read_parquet(uri, JOURNAL_SCHEMA, self.options).to_pylist()
            except (storage.StorageError, SchemaError):
                continue
            for r in rows:
                found[(r["message"], r["prefix"], r["seed"])] = Generation(
                    r["token_ids"], r["text"], np.asarray(r["entropy"], dtype=np.float64), r["finish_reason"], r["seed"]
                )
        return found

    def write(self, answers: Sequence[tuple[Key, Generation]]) -> None:
        if not answers:
            return
        columns = {
            "message": [k[0] for k, _ in answers],
            "prefix": [k[1] for k, _ in answers],
            "seed": [k[2] for k, _ in answers],
            "token_ids": [list(g.token_ids) for _, g in answers],
            "text": [g.text for _, g in answers],
            "entropy": [list(map(float, g.entropy)) for _, g in answers],
            "finish_reason": [g.finish_reason for _, g in answers],
        }
        table = pa.Table.from_pydict(columns, schema=JOURNAL_SCHEMA)
        storage.write_parquet(table, storage.join(self.root, f"{uuid.uuid4().hex}.parquet"), self.options)

    def clear(self) -> None:
        storage.remove(self.root, self.options, recursive=True)


class ReplayBackend(TeacherBackend):
    kind = "replay"

    def __init__(
        self,
        model_path: str,
        teacher: Callable[[], TeacherBackend],
        stored: Iterable[Trajectory],
        recompute_entropy: bool,
        journal: Journal | None = None,
    ) -> None:
        """``teacher`` builds the real backend; ``recompute_entropy``: the real one recomputes exact entropy traces
        (vLLM, ``entropy: exact``), which a stored top-k bound is not; ``journal`` keeps what the teacher answers,
        and what an earlier attempt's teacher answered is replayed."""
        self.model_path, self._build, self.recompute_entropy = model_path, teacher, recompute_entropy
        self.completions: dict[Key, Generation] = dict(completion_key(row) for row in stored)
        self.journal = journal
        if journal is not None:
            self.completions.update(journal.read())
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
        prefix = self._prefix_text(request)
        found = [self.completions.get((request.prompt, prefix, request.seed + j)) for j in range(request.n)]
        return None if any(g is None for g in found) else found  # type: ignore[return-value]

    def generate(self, requests: Sequence[Request], sampling: SamplingConfig) -> list[list[Generation]]:
        # 1. answer every request whose completions are all stored
        answers: list[list[Generation] | None] = [self._stored(r) for r in requests]
        replayed = [a for a in answers if a is not None]
        progress.advance(sum(len(a) for a in replayed), sum(len(g.token_ids) for a in replayed for g in a))
        # 2. the rest in one call to the teacher, metered and journaled (what arrived before a failure too)
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            try:
                drawn = dict(enumerate(self.real.generate([requests[i] for i in missing], sampling)))
            except Exception as err:
                self._keep({missing[j]: generations for j, generations in answered(err).items()}, requests)
                raise
            self._keep({missing[j]: generations for j, generations in drawn.items()}, requests)
            for j, generations in drawn.items():
                answers[missing[j]] = generations
        return answers  # type: ignore[return-value]

    def _keep(self, drawn: dict[int, list[Generation]], requests: Sequence[Request]) -> None:
        """Meter what the teacher drew, and write it to the journal."""
        self.usage.requests += len(drawn)
        self.usage.samples += sum(len(g) for g in drawn.values())
        self.usage.tokens += sum(len(x.token_ids) for g in drawn.values() for x in g)
        if self.journal is not None:
            self.journal.write(
                [
                    ((requests[i].prompt, self._prefix_text(requests[i]), g.seed), g)
                    for i, generations in sorted(drawn.items())
                    for g in generations
                ]
            )

    def _prefix_text(self, request: Request) -> str:
        return request.prefix if isinstance(request.prefix, str) else self.decode(request.prefix)

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
