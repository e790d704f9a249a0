"""Stage III, GEAR: repair failed trajectories of extremely hard problems from their reasoning breakpoint.

For each failed trajectory: find the breakpoint in its entropy trace (``heal_core.entropy``), back up to the
start of the step that contains it, keep the text before that step (the part the teacher got through before
it lost its way), and let the teacher continue from there with the gold answer as a hint. The kept sample is
the original prompt + prefix + continuation; hint leakage and PURE are judged on it as for Stage II.

Stage III rows store the *continuation's* tokens and entropy; ``prefix_chars`` says where the continuation
starts in ``text`` and ``parent_sample_id`` names the repaired trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heal_core.backends.base import TeacherBackend
from heal_core.config import HealConfig
from heal_core.entropy import find_breakpoint, step_start
from heal_core.hints import hinted_prompt, leak
from heal_core.problems import Problem
from heal_core.sampling import generation_rows


@dataclass(frozen=True)
class RepairPlan:
    parent_sample_id: str
    breakpoint_token: int
    breakpoint_step: int
    breakpoint_surge: float
    prefix: str


@dataclass(frozen=True)
class Skip:
    """A failed trajectory GEAR could not repair, and why (kept in the run's lineage, never dropped silently)."""

    sample_id: str
    problem_id: str
    reason: str


def plan_repair(row: dict[str, Any], backend: TeacherBackend, cfg: HealConfig) -> RepairPlan | Skip:
    """The breakpoint is found in the exact entropy trace: a backend that stored a top-k bound recomputes it."""
    recorded = np.asarray(row.get("entropy") or [], dtype=np.float64)
    if recorded.size == 0:
        return Skip(row["sample_id"], row["problem_id"], "empty entropy trace")
    entropy = backend.exact_entropy(row["prompt"], row["token_ids"], recorded, cfg.teacher.sampling.temperature)
    bp = find_breakpoint(entropy, cfg.gear.surge_window, cfg.gear.search_fraction)
    if bp is None:
        return Skip(row["sample_id"], row["problem_id"],
                    f"no entropy surge in the first {cfg.gear.search_fraction:.0%} of {entropy.size} tokens")
    char = len(backend.decode(row["token_ids"][: bp.token]))
    start, step = step_start(row["text"], char)
    return RepairPlan(row["sample_id"], bp.token, step, bp.surge, row["text"][:start])


def failed_paths(rows: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` unverified Stage I trajectories of one problem, lowest sample index first."""
    failed = sorted((r for r in rows if not r["verified"]), key=lambda r: r["sample_index"])
    return failed[:limit]


def repair(
    backend: TeacherBackend, problem: Problem, failed: Sequence[dict[str, Any]], cfg: HealConfig, teacher: str
) -> tuple[list[dict[str, Any]], list[Skip]]:
    """Stage III rows for one problem (verified, leakage-flagged; PURE is applied by the caller)."""
    prompt = cfg.teacher.prompt_template.format(problem=problem.problem)
    hint = hinted_prompt(cfg.gear.hint_template, problem)
    rows: list[dict[str, Any]] = []
    skips: list[Skip] = []
    for path_index, parent in enumerate(failed):
        plan = plan_repair(parent, backend, cfg)
        if isinstance(plan, Skip):
            skips.append(plan)
            continue
        sampling = cfg.teacher.sampling.model_copy(update={"seed": cfg.teacher.sampling.seed + 7919 * (path_index + 1)})
        gens = backend.continue_(hint, plan.prefix, cfg.gear.continuations, sampling)
        texts = [plan.prefix + g.text for g in gens]
        for row in generation_rows(
            problem, prompt, gens, stage=3, cfg=cfg, teacher=teacher, texts=texts, hint=hint,
            parent_sample_id=plan.parent_sample_id, breakpoint_token=plan.breakpoint_token,
            breakpoint_step=plan.breakpoint_step, breakpoint_surge=plan.breakpoint_surge,
            prefix_chars=len(plan.prefix),
        ):
            row["leaked_hint"] = leak(row["text"][len(plan.prefix):], cfg.hints.leakage_patterns) is not None
            rows.append(row)
    return rows, skips
