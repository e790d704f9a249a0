"""One shard of problems through the whole generation chain: sample -> buckets -> hints -> GEAR -> PURE.

This is the unit of work an orchestrator fans out (one deployment run per shard). It takes problems and a
backend and returns every trajectory with its lineage, so the same function runs on a laptop and on a GPU
worker; where the output goes is the caller's business.

Every teacher call covers the whole shard: Stage I is one batched call, and Stage II and GEAR run in *waves*, each
wave one batched call over all of the shard's problems that still need samples. After a wave its rows are
verified, judged, checked for leakage and passed through PURE (in batches, ``heal_core.selection``); a problem
that has its cap of kept rows gets no further wave, since a later sample of it could only be thrown away. Rows
are seeded by what they are (``heal_core/seeds.py``), so waves change which rows are drawn, never what a row is:
the curriculum is the one drawing everything would give.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from heal_core import gear, hints, pure
from heal_core.backends.base import TeacherBackend
from heal_core.config import HealConfig
from heal_core.judge import judge_rows
from heal_core.problems import Problem
from heal_core.pure import PureResult
from heal_core.sampling import ProblemStats, needs_hint, problem_stats, sample_stage1, select_stage1
from heal_core.selection import select_capped
from heal_core.trajectory import Trajectory


@dataclass
class ShardOutput:
    trajectories: list[Trajectory]  # every sample of every stage, `kept` marking curriculum members
    stats: dict[str, ProblemStats]
    skips: list[gear.Skip] = field(default_factory=list)


def apply_filters(
    rows: list[Trajectory],
    backend: TeacherBackend | None,
    cfg: HealConfig,
    cap: int,
    kept: Counter[str] | None = None,
    scored: Mapping[str, PureResult] | None = None,
) -> list[Trajectory]:
    """Hinted/repaired rows with ``kept`` set by HEAL's rule (``heal_core/selection.py``), PURE as its last check.

    PURE is the expensive check, so it runs only on rows that already passed the cheap ones, and only while their
    problem is under ``cap`` (``kept`` counts earlier waves' kept rows, and is updated). A row in ``scored`` (stored
    PURE results by sample id, ``heal_core/replay.py``) is judged again from its stored U and P, not scored.
    """
    scored = scored or {}

    def judged_by_pure(batch: list[Trajectory]) -> list[Trajectory]:
        new = [r for r in batch if r.sample_id not in scored]
        results = iter(
            pure.score(
                backend, [(r.prompt, r.text, r.gold_answer) for r in new], cfg.pure, cfg.teacher.reasoning_format
            )
            if new
            else []
        )
        return [
            replace(
                row,
                pure=pure.judge(scored[row.sample_id].answer_nll, scored[row.sample_id].step_ppl, cfg.pure)
                if row.sample_id in scored
                else next(results),
            )
            for row in batch
        ]

    return select_capped(rows, cap, judged_by_pure if cfg.pure.enabled else None, kept)


def in_waves(
    draw: Callable[[list[Problem], int, Counter[str]], list[Trajectory]],
    problems: Sequence[Problem],
    waves: int,
    cap: int,
    backend: TeacherBackend,
    cfg: HealConfig,
    judge: TeacherBackend | None,
    scored: Mapping[str, PureResult] | None = None,
) -> list[Trajectory]:
    """Rows of up to ``waves`` waves; wave w draws ``draw(problems still under cap, w, kept so far)``, then filters
    them."""
    kept: Counter[str] = Counter()
    rows: list[Trajectory] = []
    for wave in range(waves):
        active = [p for p in problems if kept[p.problem_id] < cap]
        if not active:
            break
        drawn = draw(active, wave, kept)
        if judge is not None:
            drawn = judge_rows(drawn, judge, cfg.judge)
        rows.extend(apply_filters(drawn, backend, cfg, cap, kept, scored))
    return rows


def repair_paths(room: int, cfg: HealConfig) -> int:
    """Failed paths a problem with ``room`` kept repairs to go gets in its next wave: ``gear.wave_paths``, or as
    many as could fill that room if every continuation were kept, where that is more (a wave that cannot fill the
    cap only delays the next one: at the demo's 2 x 2 with a cap of 4, one wave takes both paths)."""
    return max(cfg.gear.wave_paths, math.ceil(room / cfg.gear.continuations))


def generate_shard(
    backend: TeacherBackend,
    problems: Sequence[Problem],
    cfg: HealConfig,
    judge: TeacherBackend | None = None,
    scored: Mapping[str, PureResult] | None = None,
) -> ShardOutput:
    """``judge`` (``judge.enabled``) re-examines the verifier's rejections of every stage before they count:
    Stage I's before the buckets are drawn, so a false negative does not send a solved problem to repair.
    ``scored``: stored PURE results to judge again instead of scoring (``apply_filters``)."""
    # 1. Stage I: N unaided samples of every problem, one batched call
    stage1 = sample_stage1(backend, problems, cfg)
    if judge is not None:
        stage1 = judge_rows(stage1, judge, cfg.judge)

    # 2. Buckets by pass rate; Stage I's verified samples are kept up to their cap
    stats = problem_stats(stage1, cfg)
    stage1 = select_stage1(stage1, cfg.pace.stage1_cap_per_problem)

    # 3. Stage II: hinted samples of hard problems, hints.wave_samples per problem per wave
    hard = [p for p in problems if needs_hint(stats[p.problem_id], cfg)]
    stage2 = in_waves(
        lambda active, wave, _: hints.sample_hinted(backend, active, cfg, wave),
        hard,
        math.ceil(cfg.hints.n / cfg.hints.wave_samples),
        cfg.hints.max_per_problem,
        backend,
        cfg,
        judge,
        scored,
    )

    # 4. Stage III: GEAR repairs of extremely hard problems' failed paths, in waves
    by_problem: dict[str, list[Trajectory]] = defaultdict(list)
    for row in stage1:
        by_problem[row.problem_id].append(row)
    extreme = [p for p in problems if stats[p.problem_id].bucket == "extremely_hard"]
    failed = {p.problem_id: gear.failed_paths(by_problem[p.problem_id], cfg.gear.failed_paths) for p in extreme}
    repaired: Counter[str] = Counter()  # paths of each problem taken by earlier waves
    skips: list[gear.Skip] = []

    def repair_wave(active: list[Problem], wave: int, kept: Counter[str]) -> list[Trajectory]:
        paths = []
        for p in active:
            take = repair_paths(cfg.gear.max_per_problem - kept[p.problem_id], cfg)
            start = repaired[p.problem_id]
            repaired[p.problem_id] += take
            if failed[p.problem_id][start : start + take]:
                paths.append((p, failed[p.problem_id][start : start + take]))
        rows, wave_skips = gear.repair(backend, paths, cfg, wave)
        skips.extend(wave_skips)
        return rows

    stage3 = in_waves(
        repair_wave, extreme, cfg.gear.failed_paths, cfg.gear.max_per_problem, backend, cfg, judge, scored
    )
    return ShardOutput(trajectories=stage1 + stage2 + stage3, stats=stats, skips=skips)
