"""Stage I, rejection sampling: N teacher samples per problem, each verified against the gold answer.

Difficulty buckets follow the paper: ``solved`` at pass rate >= 0.5, ``extremely_hard`` at <= 1 correct of N,
``hard`` in between. The two hard buckets overlap in the paper's wording (1 of 30 is also below 0.5); we make
them exclusive with extremely hard taking precedence, because each problem must go to exactly one repair path
in the report, while Stage II hints still go to both (see ``needs_hint``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from heal_core import progress
from heal_core.backends.base import Generation, Request, TeacherBackend, require_usable
from heal_core.config import HealConfig
from heal_core.problems import Problem
from heal_core.seeds import request_seed
from heal_core.stages import Stage
from heal_core.trajectory import Hint, Repair, Trajectory, mentions_hint
from heal_core.verify import check_many


def sample_id(problem_id: str, stage: int, index: int, parent: str | None = None) -> str:
    """Deterministic id: a retried shard writes the same ids, so duplicates are detectable by key."""
    return f"{problem_id}|s{stage}|{parent + '|' if parent else ''}{index}"


@dataclass
class Drawn:
    """One request's generations, to become trajectory rows: ``texts`` overrides the verified text (GEAR prepends
    the kept prefix), ``first_index`` is the sample index of the first generation (a later wave's samples go on
    from the earlier waves'). ``hint`` (the hinted message the teacher saw) and ``wave`` make Stage II and III
    rows' ``Hint``; ``repair`` is a GEAR row's ``Repair``."""

    problem: Problem
    prompt: str
    generations: Sequence[Generation]
    texts: Sequence[str] | None = None
    first_index: int = 0
    hint: str | None = None
    wave: int = 0
    repair: Repair | None = None


def generation_rows(drawn: Sequence[Drawn], stage: Stage, cfg: HealConfig, teacher: str) -> list[Trajectory]:
    """Verified trajectory rows of every request's generations, verified in one call. A hinted row's leakage is
    judged on the teacher's own text (a GEAR row's continuation, not the parent's prefix)."""
    texts = [list(d.texts) if d.texts is not None else [g.text for g in d.generations] for d in drawn]
    verdicts = iter(
        check_many(
            [(text, d.problem.answer) for d, ts in zip(drawn, texts) for text in ts],
            truncated=[g.finish_reason == "length" for d in drawn for g in d.generations],
            max_error_share=cfg.orchestration.max_verify_error_share,
            reasoning_format=cfg.teacher.reasoning_format,
        )
    )
    rows = []
    for d, ts in zip(drawn, texts, strict=True):
        parent = d.repair.parent_sample_id if d.repair else None
        for i, (g, text) in enumerate(zip(d.generations, ts, strict=True), start=d.first_index):
            v = next(verdicts)
            hint = None
            if d.hint is not None:
                hint = Hint(d.hint, mentions_hint(g.text, cfg.hints.leakage_patterns) is not None, d.wave)
            rows.append(
                Trajectory(
                    sample_id=sample_id(d.problem.problem_id, stage, i, parent),
                    problem_id=d.problem.problem_id,
                    prompt=d.prompt,
                    gold_answer=d.problem.answer,
                    stage=stage,
                    sample_index=i,
                    text=text,
                    token_ids=list(g.token_ids),
                    entropy=[float(e) for e in g.entropy],
                    finish_reason=g.finish_reason,
                    verified=v.correct,
                    verify_status=v.status,
                    extracted_answer=v.extracted,
                    teacher=teacher,
                    seed=g.seed,
                    config_hash=cfg.config_hash(),
                    hint=hint,
                    repair=d.repair,
                )
            )
    return rows


def sample_stage1(backend: TeacherBackend, problems: Sequence[Problem], cfg: HealConfig) -> list[Trajectory]:
    """N unaided samples per problem in one batched call, verified; the prompt recorded is the one the student
    will see."""
    prompts = [cfg.teacher.prompt_template.format(problem=p.problem) for p in problems]
    requests = [
        Request(prompt, cfg.teacher.sampling.n, request_seed(cfg.teacher.sampling.seed, "stage1", p.problem_id))
        for p, prompt in zip(problems, prompts, strict=True)
    ]
    progress.stage(Stage.BASE.roman, sum(r.n for r in requests))
    batches = require_usable(backend.generate(requests, cfg.teacher.sampling), "Stage I sampling")
    return generation_rows(
        [Drawn(p, prompt, gens) for p, prompt, gens in zip(problems, prompts, batches, strict=True)],
        stage=Stage.BASE,
        cfg=cfg,
        teacher=backend.model_path,
    )


Bucket = Literal["solved", "hard", "extremely_hard"]


@dataclass(frozen=True)
class ProblemStats:
    problem_id: str
    samples: int
    correct: int
    bucket: Bucket

    @property
    def pass_rate(self) -> float:
        return self.correct / self.samples if self.samples else 0.0


def bucket_of(correct: int, samples: int, cfg: HealConfig) -> Bucket:
    if samples and correct / samples >= cfg.hints.pass_rate_below:
        return "solved"
    if correct <= cfg.gear.extreme_max_correct:
        return "extremely_hard"
    return "hard"


def needs_hint(stats: ProblemStats, cfg: HealConfig) -> bool:
    """Stage II takes every problem below the pass-rate threshold: hard and extremely hard alike."""
    return stats.pass_rate < cfg.hints.pass_rate_below


def problem_stats(rows: Iterable[Trajectory], cfg: HealConfig) -> dict[str, ProblemStats]:
    """Per-problem pass statistics of Stage I rows, in first-seen order."""
    samples: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for row in rows:
        samples[row.problem_id] += 1
        correct[row.problem_id] += row.verified
    return {
        pid: ProblemStats(pid, samples[pid], correct[pid], bucket_of(correct[pid], samples[pid], cfg))
        for pid in samples
    }


def teacher_ceiling(correct: Iterable[int]) -> int:
    """Problems the unaided teacher never solved, from each problem's count of verified samples: what hints
    and repair must attack (the report's "teacher ceiling")."""
    return sum(c == 0 for c in correct)


def select_stage1(rows: Sequence[Trajectory], cap_per_problem: int) -> list[Trajectory]:
    """The rows, in order, with ``kept`` set on the verified samples, at most ``cap_per_problem`` per problem
    (lowest sample index first: deterministic)."""
    taken: Counter[str] = Counter()
    kept = set()
    for row in sorted(rows, key=lambda r: (r.problem_id, r.sample_index)):
        if row.verified and taken[row.problem_id] < cap_per_problem:
            taken[row.problem_id] += 1
            kept.add(row.sample_id)
    return [replace(row, kept=row.sample_id in kept) for row in rows]
