"""Percentile bootstrap intervals for pass@1 over problems and training seeds, and for differences between variants.

Hand-written (with numpy) because two crossed sources of noise are resampled at once: each draw takes the
problems with replacement and, independently, a variant's seeds with replacement, and scores the mean
per-(seed, problem) pass@1 over the drawn seeds x drawn problems. A difference between two variants is paired
over problems (both see the same problem draw) while each draws its own seeds. ``scipy.stats.bootstrap``
resamples one set of observations (paired samples share one index), so it has no such two-level resampling.

Draws are fixed by ``seed``: the problem draw by ``seed`` alone and a variant's seed draw by ``seed`` and its
name, so a report is reproducible and a variant's interval does not change when other variants are added.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float  # on the data as observed
    low: float
    high: float


def pass_at_1_matrix(rows: Sequence[Mapping[str, Any]], problems: Sequence[str]) -> np.ndarray:
    """One model's evaluation rows as a (training seeds x ``problems``) array of pass@1; a missing cell is an error."""
    seeds = sorted({r["train_seed"] for r in rows})
    cells = {(r["train_seed"], r["problem_id"]): r["pass_at_1"] for r in rows}
    missing = [(s, p) for s in seeds for p in problems if (s, p) not in cells]
    if missing:
        raise ValueError(f"no evaluation row for (train_seed, problem) {missing[:3]} of {len(missing)} missing")
    return np.array([[cells[(s, p)] for p in problems] for s in seeds], dtype=np.float64)


def _draws(counts_rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """How often each of ``size`` items is drawn, per resample: drawing ``size`` of them with replacement."""
    return counts_rng.multinomial(size, np.full(size, 1.0 / size), size=resamples)


def bootstrap(
    scores: Mapping[str, np.ndarray], baseline: str | None, resamples: int, confidence: float, seed: int = 0
) -> tuple[dict[str, Interval], dict[str, Interval]]:
    """Per variant (name -> seeds x problems pass@1, the same problems in the same column order): its pass@1
    interval, and its difference from ``baseline`` (absent without one) with the paired interval."""
    problems = {m.shape[1] for m in scores.values()}
    if len(problems) != 1 or 0 in problems:
        raise ValueError(f"every variant needs the same, non-zero number of problems, not {sorted(problems)}")
    problem_counts = _draws(np.random.default_rng(seed), problems.pop(), resamples)
    draws = {}
    for name, x in scores.items():
        seed_counts = _draws(np.random.default_rng([seed, zlib.crc32(name.encode())]), x.shape[0], resamples)
        draws[name] = ((seed_counts @ x) * problem_counts).sum(axis=1) / (x.shape[0] * x.shape[1])
    tails = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2

    def interval(estimate: float, values: np.ndarray) -> Interval:
        low, high = np.percentile(values, tails)
        return Interval(float(estimate), float(low), float(high))

    level = {name: interval(x.mean(), draws[name]) for name, x in scores.items()}
    if baseline not in scores:
        return level, {}
    base = scores[baseline].mean()
    delta = {
        name: interval(x.mean() - base, draws[name] - draws[baseline]) for name, x in scores.items() if name != baseline
    }
    return level, delta
