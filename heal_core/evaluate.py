"""Evaluation: pass@1 (mean over k samples) and pass@k of a model on a problem set.

pass@k uses the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) for n samples with c
correct, so k may be below the number of samples drawn; with k = n it is "any sample correct".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

from heal_core.backends.base import TeacherBackend
from heal_core.config import SamplingConfig
from heal_core.problems import Problem
from heal_core.verify import check_many


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in 1..n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@dataclass(frozen=True)
class ProblemResult:
    problem_id: str
    samples: int
    correct: int
    pass_at_1: float
    pass_at_k: float


def evaluate(
    backend: TeacherBackend,
    problems: Sequence[Problem],
    prompt_template: str,
    sampling: SamplingConfig,
    k: int,
) -> list[ProblemResult]:
    """Draw ``sampling.n`` samples per problem and score them; ``k`` <= ``sampling.n``."""
    prompts = [prompt_template.format(problem=p.problem) for p in problems]
    batches = backend.sample(prompts, sampling.n, sampling)
    pairs = [(g.text, p.answer) for p, gens in zip(problems, batches, strict=True) for g in gens]
    verdicts = iter(check_many(pairs))
    results = []
    for p, gens in zip(problems, batches, strict=True):
        correct = sum(next(verdicts).correct for _ in gens)
        n = len(gens)
        results.append(ProblemResult(p.problem_id, n, correct, correct / n, pass_at_k(n, correct, k)))
    return results


def summarize(results: Sequence[ProblemResult]) -> dict[str, float]:
    count = len(results) or 1
    return {
        "problems": len(results),
        "pass@1": sum(r.pass_at_1 for r in results) / count,
        "pass@k": sum(r.pass_at_k for r in results) / count,
    }
