"""Verifier audit: grade a benchmark's own reference solutions against its own gold answers.

Every reference solution is right by construction, so each disagreement is a verifier false negative (or a
data error) — and in HEAL a false negative is doubly costly: it sends a problem the teacher solved into the
hint and repair stages. The audit measures that rate before a run spends GPU time on it.

Agreement alone would reward a verifier that accepts anything, so the audit also grades each reference
solution against another problem's (different) gold answer: every "correct" there is a false positive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from heal_core.config import ProblemsConfig
from heal_core.datasets import load_with_references, source_name
from heal_core.problems import Problem, Reject
from heal_core.verify import DEFAULT_TIMEOUT_S, Status, check_many


@dataclass(frozen=True)
class Disagreement:
    problem_id: str
    gold: str
    extracted: str | None  # the reference solution's last boxed answer
    status: Status


@dataclass(frozen=True)
class Audit:
    name: str
    problems: int
    audited: int  # problems with a reference solution
    disagreements: list[Disagreement] = field(default_factory=list)
    false_positives: list[tuple[str, str]] = field(default_factory=list)  # (solution's problem, gold's problem)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def agreed(self) -> int:
        return self.audited - len(self.disagreements)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.audited if self.audited else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "problems": self.problems,
            "audited": self.audited,
            "agreed": self.agreed,
            "agreement": self.agreement,
            "disagreements": [asdict(d) for d in self.disagreements],
            "false_positives": [list(pair) for pair in self.false_positives],
            "rejects": [asdict(r) for r in self.rejects],
        }


def audit_verifier(
    cfg: ProblemsConfig,
    storage_options: dict[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
) -> Audit:
    """Run ``heal_core.verify`` on each reference solution of ``cfg.uri`` against the problem's gold answer."""
    pairs, rejects = load_with_references(cfg, storage_options)
    audited = [(problem, reference) for problem, reference in pairs if reference is not None]
    others = _other_answers([problem for problem, _ in audited])
    verdicts = check_many(
        [(reference, problem.answer) for problem, reference in audited]
        + [(reference, other.answer) for (_, reference), other in zip(audited, others, strict=True) if other],
        timeout=timeout,
        workers=workers,
    )
    disagreements = [
        Disagreement(problem.problem_id, problem.answer, verdict.extracted, verdict.status)
        for (problem, _), verdict in zip(audited, verdicts[: len(audited)], strict=True)
        if not verdict.correct
    ]
    controls = [(problem, other) for (problem, _), other in zip(audited, others, strict=True) if other]
    false_positives = [
        (problem.problem_id, other.problem_id)
        for (problem, other), verdict in zip(controls, verdicts[len(audited) :], strict=True)
        if verdict.correct
    ]
    return Audit(source_name(cfg.uri), len(pairs), len(audited), disagreements, false_positives, rejects)


def _other_answers(problems: list[Problem]) -> list[Problem | None]:
    """For each problem the next one (cyclically) whose gold answer is written differently; None if all agree."""
    count = len(problems)
    return [
        next((problems[(i + k) % count] for k in range(1, count) if problems[(i + k) % count].answer != p.answer), None)
        for i, p in enumerate(problems)
    ]
