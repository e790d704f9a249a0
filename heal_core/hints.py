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

from heal_core.backends.base import Request, TeacherBackend, require_usable
from heal_core.config import HealConfig
from heal_core.problems import Problem
from heal_core.sampling import Drawn, generation_rows
from heal_core.seeds import request_seed


def hinted_prompt(template: str, problem: Problem) -> str:
    return template.format(problem=problem.problem, answer=problem.answer)


def leak(text: str, patterns: Sequence[str]) -> str | None:
    """The first leakage pattern that matches ``text`` (case-insensitive), or None."""
    for pattern in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return pattern
    return None


def sample_hinted(
    backend: TeacherBackend, problems: Sequence[Problem], cfg: HealConfig, wave: int = 0
) -> list[dict[str, Any]]:
    """Stage II rows of one wave, in one batched call: samples ``wave * hints.wave_samples`` on (at most
    ``hints.wave_samples`` of the ``hints.n``) of each problem, verified, with their leakage verdict (PURE is
    applied by the caller). Sample j of a problem has the same seed whichever wave draws it."""
    first = wave * cfg.hints.wave_samples
    count = min(cfg.hints.wave_samples, cfg.hints.n - first)
    if not problems or count <= 0:
        return []
    hinted = [hinted_prompt(cfg.hints.template, p) for p in problems]
    requests = [Request(hint, count, request_seed(cfg.teacher.sampling.seed, "stage2", p.problem_id) + first)
                for p, hint in zip(problems, hinted, strict=True)]
    batches = require_usable(backend.generate(requests, cfg.teacher.sampling), "Stage II hinted sampling")
    drawn = [Drawn(p, cfg.teacher.prompt_template.format(problem=p.problem), gens, first_index=first,
                   lineage={"hint": hint, "wave": wave})
             for p, hint, gens in zip(problems, hinted, batches, strict=True)]
    rows = generation_rows(drawn, stage=2, cfg=cfg, teacher=backend.model_path)
    for row in rows:
        row["leaked_hint"] = leak(row["text"], cfg.hints.leakage_patterns) is not None
    return rows
