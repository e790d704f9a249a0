"""One shard of problems through the whole generation chain: sample -> buckets -> hints -> GEAR -> PURE.

This is the unit of work an orchestrator fans out (one deployment run per shard). It takes problems and a
backend and returns every trajectory with its lineage, so the same function runs on a laptop and on a GPU
worker; where the output goes is the caller's business.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from heal_core import gear, hints, pure
from heal_core.judge import judge_rows
from heal_core.backends.base import TeacherBackend
from heal_core.config import HealConfig
from heal_core.problems import Problem
from heal_core.sampling import ProblemStats, needs_hint, problem_stats, sample_stage1, select_stage1
from heal_core.selection import select_capped


@dataclass
class ShardOutput:
    trajectories: list[dict[str, Any]]  # every sample of every stage, `kept` marking curriculum members
    stats: dict[str, ProblemStats]
    skips: list[gear.Skip] = field(default_factory=list)


def apply_filters(rows: list[dict[str, Any]], backend: TeacherBackend, cfg: HealConfig, cap: int) -> None:
    """Mark hinted/repaired rows kept by HEAL's rule (``heal_core/selection.py``), PURE as its last check (in place).

    PURE is the expensive check, so it runs only on rows that already passed the cheap ones, and stops for a
    problem once ``cap`` samples are kept.
    """

    def passes_pure(row: dict[str, Any]) -> bool:
        if not cfg.pure.enabled:
            return True
        result = pure.score(backend, row["prompt"], row["text"], row["gold_answer"], cfg.pure)
        row.update(result.lineage())
        return result.kept

    for row in select_capped(rows, cap, passes_pure):
        row["kept"] = True


def generate_shard(
    backend: TeacherBackend, problems: Sequence[Problem], cfg: HealConfig, teacher: str,
    judge: TeacherBackend | None = None,
) -> ShardOutput:
    """``judge`` (``judge.enabled``) re-examines the verifier's rejections of every stage before they count:
    Stage I's before the buckets are drawn, so a false negative does not send a solved problem to repair."""
    stage1 = sample_stage1(backend, problems, cfg, teacher)
    if judge is not None:
        judge_rows(stage1, judge, cfg.judge)
    stats = problem_stats(stage1, cfg)
    kept_ids = {r["sample_id"] for r in select_stage1(stage1, cfg.pace.stage1_cap_per_problem)}
    for row in stage1:
        row["kept"] = row["sample_id"] in kept_ids

    hard = [p for p in problems if needs_hint(stats[p.problem_id], cfg)]
    stage2 = hints.sample_hinted(backend, hard, cfg, teacher)
    if judge is not None:
        judge_rows(stage2, judge, cfg.judge)
    apply_filters(stage2, backend, cfg, cfg.hints.max_per_problem)

    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in stage1:
        by_problem[row["problem_id"]].append(row)
    stage3: list[dict[str, Any]] = []
    skips: list[gear.Skip] = []
    for p in problems:
        if stats[p.problem_id].bucket != "extremely_hard":
            continue
        rows, problem_skips = gear.repair(
            backend, p, gear.failed_paths(by_problem[p.problem_id], cfg.gear.failed_paths), cfg, teacher
        )
        if judge is not None:
            judge_rows(rows, judge, cfg.judge)
        apply_filters(rows, backend, cfg, cfg.gear.max_per_problem)
        stage3.extend(rows)
        skips.extend(problem_skips)
    return ShardOutput(trajectories=stage1 + stage2 + stage3, stats=stats, skips=skips)
