"""Stage II, global hindsight: re-sample hard problems with the gold answer given as a hint.

The teacher sees the hinted prompt; the student never does: a kept sample is stored with the original
prompt, so the hint is stripped by construction rather than by editing text. What cannot be stripped is a
trajectory that *talks about* the hint ("as the hint says..."), which would teach the student to cite a hint
it will never have: those are rejected by configurable patterns (``heal_core.trajectory.mentions_hint``). PURE
then rejects trajectories that only reach the answer because it was given.
"""

from __future__ import annotations

from collections.abc import Sequence

from heal_core import progress
from heal_core.backends.base import Request, TeacherBackend, require_usable
from heal_core.config import HealConfig
from heal_core.problems import Problem
from heal_core.sampling import Drawn, generation_rows
from heal_core.seeds import request_seed
from heal_core.stages import Stage
from heal_core.trajectory import Trajectory


def hinted_prompt(template: str, problem: Problem) -> str:
    return template.format(problem=problem.problem, answer=problem.answer)


def sample_hinted(
    backend: TeacherBackend, problems: Sequence[Problem], cfg: HealConfig, wave: int = 0
) -> list[Trajectory]:
    """Stage II rows of one wave, in one batched call: samples ``wave * hints.wave_samples`` on (at most
    ``hints.wave_samples`` of the ``hints.n``) of each problem, verified, with their leakage verdict (PURE is
    applied by the caller). Sample j of a problem has the same seed whichever wave draws it."""
    first = wave * cfg.hints.wave_samples
    count = min(cfg.hints.wave_samples, cfg.hints.n - first)
    if not problems or count <= 0:
        return []
    hinted = [hinted_prompt(cfg.hints.template, p) for p in problems]
    requests = [
        Request(hint, count, request_seed(cfg.teacher.sampling.seed, "stage2", p.problem_id) + first)
        for p, hint in zip(problems, hinted, strict=True)
    ]
    progress.stage(f"{Stage.HINT.roman} wave {wave}", sum(r.n for r in requests))
    batches = require_usable(backend.generate(requests, cfg.teacher.sampling), "Stage II hinted sampling")
    drawn = [
        Drawn(p, cfg.teacher.prompt_template.format(problem=p.problem), gens, first_index=first, hint=hint, wave=wave)
        for p, hint, gens in zip(problems, hinted, batches, strict=True)
    ]
    return generation_rows(drawn, stage=Stage.HINT, cfg=cfg, teacher=backend.model_path)
