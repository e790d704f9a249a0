"""PACE: the three-stage curriculum datasets (I base -> II hint -> III repair) and the baselines.

By default stages are cumulative (stage k trains on everything kept up to stage k), so a student fine-tuned
stage after stage keeps seeing the easier data while harder data arrives; ``incremental`` trains each stage
on its new data only. An example enters the curriculum once, at the first stage that produced it: the same
(prompt, completion) text reached again by a later stage is a duplicate, not new evidence.

Baselines a user compares against: ``rs_sft`` (Stage I data only: plain rejection-sampling SFT) and
``keep_all`` (every Stage I sample, unverified: OpenThoughts3 found answer filtering does not always help).
Ablations of HEAL itself: ``stage2_no_pure`` / ``stage3_no_pure`` (the stages as HEAL selects them, PURE left
out) and ``mixed`` (everything HEAL kept, for one SFT run without the curriculum). Which variant trains on
which datasets is ``heal_core/variants.py``'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from heal_core.config import HealConfig
from heal_core.schema import CURRICULUM_SCHEMA
from heal_core.selection import select_without_pure
from heal_core.stages import Dataset, Stage
from heal_core.trajectory import Trajectory

_LINEAGE = [name for name in CURRICULUM_SCHEMA.names if name not in ("prompt", "completion")]


def to_example(row: Trajectory) -> dict[str, Any]:
    """A trajectory row in TRL's conversational prompt-completion format, lineage kept."""
    record = row.record()
    example = {name: record[name] for name in _LINEAGE}
    example["prompt"] = [{"role": "user", "content": row.prompt}]
    example["completion"] = [{"role": "assistant", "content": row.text}]
    return example


def _key(row: Trajectory) -> str:
    return hashlib.sha256(f"{row.prompt}\x00{row.text}".encode()).hexdigest()


def dedupe(rows: Iterable[Trajectory]) -> list[Trajectory]:
    """First occurrence of each (prompt, text) wins; order is kept."""
    seen: set[str] = set()
    out = []
    for row in rows:
        key = _key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def curriculum(
    kept: Sequence[Trajectory], mode: Literal["cumulative", "incremental"] = "cumulative"
) -> dict[int, list[dict[str, Any]]]:
    """Stage number -> examples. ``kept`` holds the kept trajectory rows of all stages."""
    ordered = sorted(kept, key=lambda r: (r.stage, r.problem_id, r.sample_id))
    new = {stage: [] for stage in Stage}
    for row in dedupe(ordered):
        new[row.stage].append(to_example(row))
    if mode == "incremental":
        return new
    return {stage: [ex for s in Stage if s <= stage for ex in new[s]] for stage in Stage}


def baselines(stage1_all: Sequence[Trajectory], stage1_kept: Sequence[Trajectory]) -> dict[str, list[dict]]:
    def examples(rows: Sequence[Trajectory]) -> list[dict[str, Any]]:
        return [to_example(r) for r in dedupe(sorted(rows, key=lambda r: (r.problem_id, r.sample_id)))]

    return {Dataset.RS_SFT: examples(stage1_kept), Dataset.KEEP_ALL: examples(stage1_all)}


def datasets(rows: Sequence[Trajectory], cfg: HealConfig) -> dict[str, list[dict[str, Any]]]:
    """Every ``Dataset`` from a run's trajectory rows of all stages (``kept`` as the shards set it)."""
    kept = [r for r in rows if r.kept]
    stage1 = [r for r in rows if r.stage == Stage.BASE]
    stage1_kept = [r for r in stage1 if r.kept]
    heal = curriculum(kept, cfg.pace.mode)
    no_pure = curriculum(stage1_kept + select_without_pure(rows, cfg), cfg.pace.mode)
    return {
        **{Dataset.of(stage): examples for stage, examples in heal.items()},
        Dataset.STAGE2_NO_PURE: no_pure[Stage.HINT], Dataset.STAGE3_NO_PURE: no_pure[Stage.REPAIR],
        Dataset.MIXED: curriculum(kept, "cumulative")[Stage.REPAIR],  # every stage's examples once: cumulative III
        **baselines(stage1, stage1_kept),
    }
