"""Stage II, global hindsight: re-sample hard problems with the gold answer given as a hint.

The teacher sees the hinted prompt; the student never does: a kept sample is stored with the original
prompt, so the hint is stripped by construction rather than by editing text. What cannot be stripped is a
trajectory that *talks about* the hint ("as the hint says..."), which would teach the student to cite a hint
it will never have: those are rejected by configurable patterns. PURE then rejects trajectories that only
reach the answer because it was given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from heal_core.backends.base import TeacherBackend, require_usable
from heal_core.config import HealConfig
from heal_core.problems import Problem
from heal_core.sampling import generation_rows


def hinted_prompt(template: str, problem: Problem) -> str:
    return template.format(problem=problem.problem, answer=problem.answer)


def leak(text: str, patterns: Sequence[str]) -> str | None:
    """The first leakage pattern that matches ``text`` (case-insensitive), or None."""
    for pattern in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return pattern
    return None


def sample_hinted(
    backend: TeacherBackend, problems: Sequence[Problem], cfg: HealConfig, teacher: str
) -> list[dict[str, Any]]:
    """Stage II rows: hinted samples, verified, with their leakage verdict (PURE is applied by the caller)."""
    if not problems:
        return []
    hinted = [hinted_prompt(cfg.hints.template, p) for p in problems]
    batches = require_usable(backend.sample(hinted, cfg.hints.n, cfg.teacher.sampling), "Stage II hinted sampling")
    rows: list[dict[str, Any]] = []
    for problem, hint, gens in zip(problems, hinted, batches, strict=True):
        prompt = cfg.teacher.prompt_template.format(problem=problem.problem)
        for row in generation_rows(problem, prompt, gens, stage=2, cfg=cfg, teacher=teacher, hint=hint):
            row["leaked_hint"] = leak(row["text"], cfg.hints.leakage_patterns) is not None
            rows.append(row)
    return rows

