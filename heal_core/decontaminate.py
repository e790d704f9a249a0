"""Drop training problems that copy an evaluation problem, so a reported gain is not a memorised test item.

Overlap is counted in word n-grams (default 8, as in open-r1's decontamination script) after normalisation:
Unicode NFKC, lower case, and words as runs of letters or digits, so LaTeX spacing, ``$`` and punctuation do
not hide a copy (``$\\log_2 64$`` and ``$\\log_{2}64$`` give the same words).

A single shared 8-gram (open-r1's rule) is not enough evidence here: competition boilerplate such as "m/n
where m and n are relatively prime positive integers" is an 8-gram of dozens of AIME-style problems, and on
the bundled benchmarks it flags 29 of the 100 AIME/AMC problems as copies of MATH-500 items; each of those
shares at most 12 % of the item's n-grams, while a copy shares all of them. So a training problem is dropped
when it holds at least ``min_overlap`` of an evaluation item's distinct n-grams (``min_overlap=0``: any one).
An evaluation problem shorter than n words ("Evaluate $\\log_264$.") has no n-gram; its whole word sequence
is its one gram, so a training problem containing it verbatim is still caught.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from heal_core.problems import Problem

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Contaminated:
    """A dropped training problem and the evaluation item it overlaps."""

    problem: Problem
    eval_set: str
    eval_id: str
    ngram: str  # the first shared n-gram in the training text, normalised words space-joined
    overlap: float  # share of the eval item's distinct n-grams found in the training problem

    def record(self) -> dict[str, str | float]:
        """A JSON-ready row for the run's report."""
        return {
            "problem_id": self.problem.problem_id,
            "eval_set": self.eval_set,
            "eval_id": self.eval_id,
            "ngram": self.ngram,
            "overlap": round(self.overlap, 4),
        }


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def _grams(tokens: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def decontaminate(
    problems: Sequence[Problem], eval_sets: Mapping[str, Sequence[Problem]], n: int = 8, min_overlap: float = 0.5
) -> tuple[list[Problem], list[Contaminated]]:
    """Split ``problems`` (order kept) into those kept and those that overlap a problem of ``eval_sets``
    (set name -> problems); each dropped one names the eval item it overlaps most."""
    if n < 1 or not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"need n >= 1 and 0 <= min_overlap <= 1, got n={n}, min_overlap={min_overlap}")
    index: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for name, items in eval_sets.items():
        for item in items:
            tokens = words(item.problem)
            grams = set(_grams(tokens, min(n, len(tokens)))) if tokens else set()
            key = (name, item.problem_id)
            sizes[key] = len(grams)
            for gram in grams:
                index.setdefault(gram, []).append(key)
    lengths = sorted({len(gram) for gram in index}, reverse=True)
    kept: list[Problem] = []
    dropped: list[Contaminated] = []
    for problem in problems:
        match = _best_match(words(problem.problem), index, sizes, lengths, min_overlap)
        if match is None:
            kept.append(problem)
        else:
            dropped.append(Contaminated(problem, *match))
    return kept, dropped


def _best_match(
    tokens: list[str],
    index: Mapping[tuple[str, ...], list[tuple[str, str]]],
    sizes: Mapping[tuple[str, str], int],
    lengths: list[int],
    min_overlap: float,
) -> tuple[str, str, str, float] | None:
    hits: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], tuple[str, ...]] = {}
    seen: set[tuple[str, ...]] = set()
    for gram in (g for size in lengths for g in _grams(tokens, size) if g in index):
        if gram in seen:
            continue
        seen.add(gram)
        for key in index[gram]:
            hits[key] += 1
            first.setdefault(key, gram)
    overlaps = {key: count / sizes[key] for key, count in hits.items() if count / sizes[key] >= min_overlap}
    if not overlaps:
        return None
    key = max(overlaps, key=overlaps.__getitem__)
    return key[0], key[1], " ".join(first[key]), overlaps[key]
