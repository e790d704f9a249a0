"""Stage III, GEAR: repair failed trajectories of extremely hard problems from their reasoning breakpoint.

For each failed trajectory: find the breakpoint in its entropy trace (``heal_core.entropy``), back up to the
start of the step that contains it, keep the text before that step (the part the teacher got through before
it lost its way), and let the teacher continue from there with the gold answer as a hint. The kept sample is
the original prompt + prefix + continuation; hint leakage and PURE are judged on it as for Stage II.

Stage III rows store the *continuation's* tokens and entropy; ``prefix_chars`` says where the continuation
starts in ``text`` and ``parent_sample_id`` names the repaired trajectory.

A thinking trace (``teacher.reasoning_format: think_tags``) is cut inside its thinking: the breakpoint is the
largest surge in the first ``search_fraction`` of the thinking block's tokens, not of the whole trace's, because
the reasoning the paper's breakpoint locates is the thinking, and the text after ``</think>`` restates it. The
hint goes where it always goes, into the user message; the kept prefix is thinking, so the continuation goes on
thinking, now with the answer in view, and it counts only if it closes the block and answers after it (the
verifier reads nothing else). Leakage is judged on the continuation, thinking included: a trace that thinks
"the hint says 17" teaches the student to expect one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from heal_core import progress
from heal_core.backends.base import Request, TeacherBackend, Trace, require_usable
from heal_core.config import HealConfig
from heal_core.entropy import find_breakpoint, step_start
from heal_core.hints import hinted_prompt
from heal_core.problems import Problem
from heal_core.reasoning import ReasoningFormat, thinking_end
from heal_core.sampling import Drawn, generation_rows
from heal_core.seeds import request_seed
from heal_core.stages import Stage
from heal_core.trajectory import Repair, Trajectory


@dataclass(frozen=True)
class RepairPlan:
    repair: Repair  # the lineage every continuation's row records
    prefix: str  # the parent's text before the breakpoint's step: what the teacher continues


@dataclass(frozen=True)
class Skip:
    """A failed trajectory GEAR could not repair, and why (kept in the run's lineage, never dropped silently)."""

    sample_id: str
    problem_id: str
    reason: str


def plan_repairs(rows: Sequence[Trajectory], backend: TeacherBackend, cfg: HealConfig) -> list[RepairPlan | Skip]:
    """One plan (or skip) per failed trajectory. Breakpoints are found in the exact entropy traces: a backend that
    stored a top-k bound recomputes them, all in one call."""
    traced = [r for r in rows if r.entropy]
    exact = iter(
        backend.exact_entropy(
            [Trace(r.prompt, tuple(r.token_ids), np.asarray(r.entropy, dtype=np.float64)) for r in traced],
            cfg.teacher.sampling.temperature,
        )
        if traced
        else []
    )
    return [
        _plan(r, next(exact), backend, cfg) if r.entropy else Skip(r.sample_id, r.problem_id, "empty entropy trace")
        for r in rows
    ]


def _plan(row: Trajectory, entropy: np.ndarray, backend: TeacherBackend, cfg: HealConfig) -> RepairPlan | Skip:
    searched = entropy[: _reasoning_tokens(row, backend, cfg.teacher.reasoning_format)]
    bp = find_breakpoint(searched, cfg.gear.surge_window, cfg.gear.search_fraction)
    if bp is None:
        return Skip(
            row.sample_id,
            row.problem_id,
            f"no entropy surge in the first {cfg.gear.search_fraction:.0%} of {searched.size} tokens",
        )
    char = len(backend.decode(row.token_ids[: bp.token]))
    start, step = step_start(row.text, char)
    return RepairPlan(Repair(row.sample_id, bp.token, step, bp.surge, start), row.text[:start])


def _reasoning_tokens(row: Trajectory, backend: TeacherBackend, fmt: ReasoningFormat) -> int:
    """How many of the row's generated tokens lie before its ``</think>`` (all of them without a closed block): the
    largest prefix of tokens whose text ends inside the thinking, found by bisection over ``decode``."""
    end = thinking_end(row.text, fmt)
    if end is None:
        return len(row.token_ids)
    low, high = 0, len(row.token_ids)
    while low < high:
        middle = (low + high + 1) // 2
        if len(backend.decode(row.token_ids[:middle])) <= end:
            low = middle
        else:
            high = middle - 1
    return low


def failed_paths(rows: Sequence[Trajectory], limit: int) -> list[Trajectory]:
    """Up to ``limit`` unverified Stage I trajectories of one problem, lowest sample index first."""
    failed = sorted((r for r in rows if not r.verified), key=lambda r: r.sample_index)
    return failed[:limit]


def repair(
    backend: TeacherBackend,
    paths: Sequence[tuple[Problem, Sequence[Trajectory]]],
    cfg: HealConfig,
    wave: int = 0,
) -> tuple[list[Trajectory], list[Skip]]:
    """Stage III rows of one wave: the given failed trajectories of each problem, planned, then every
    continuation of every plan in one batched call, verified and leakage-flagged (PURE is applied by the
    caller). A repair's continuations are seeded by its parent's sample id, so they do not depend on the wave."""
    parents = [(problem, row) for problem, rows in paths for row in rows]
    plans = plan_repairs([row for _, row in parents], backend, cfg)
    repairs = [
        (problem, plan) for (problem, _), plan in zip(parents, plans, strict=True) if isinstance(plan, RepairPlan)
    ]
    skips = [plan for plan in plans if isinstance(plan, Skip)]
    if not repairs:
        return [], skips
    base = cfg.teacher.sampling.seed
    requests = [
        Request(
            hinted_prompt(cfg.gear.hint_template, problem),
            cfg.gear.continuations,
            request_seed(base, "stage3", plan.repair.parent_sample_id),
            plan.prefix,
        )
        for problem, plan in repairs
    ]
    progress.stage(f"{Stage.REPAIR.roman} wave {wave}", sum(r.n for r in requests))
    batches = require_usable(backend.generate(requests, cfg.teacher.sampling), "GEAR continuations")
    drawn = [
        Drawn(
            problem,
            cfg.teacher.prompt_template.format(problem=problem.problem),
            gens,
            texts=[plan.prefix + g.text for g in gens],
            hint=request.prompt,
            wave=wave,
            repair=plan.repair,
        )
        for (problem, plan), request, gens in zip(repairs, requests, batches, strict=True)
    ]
    return generation_rows(drawn, stage=Stage.REPAIR, cfg=cfg, teacher=backend.model_path), skips
