"""Training variants: which curriculum datasets each one fine-tunes on, stage after stage, and for how many steps.

A variant is a sequence of SFT stages, each a ``Dataset`` (``heal_core/stages.py``, built by ``heal_core/pace.py``)
and each starting
from the previous stage's weights:

================  ===========================================  ==========================================
variant           stages                                       what it tests
================  ===========================================  ==========================================
``heal``          stage1 -> stage2 -> stage3                   the method (PACE as ``pace.mode`` sets it)
``rs_sft``        rs_sft                                       Stage I data only: the paper's baseline
``keep_all``      keep_all                                     every Stage I sample, unverified
``heal_no_pure``  stage1 -> stage2_no_pure -> stage3_no_pure   HEAL without the PURE filter
``heal_no_gear``  stage1 -> stage2                             HEAL without Stage III (GEAR repairs)
``heal_mixed``    mixed                                        HEAL's data in one SFT run, no curriculum
================  ===========================================  ==========================================

Budget: every variant gets the same number of optimizer steps, B = the steps HEAL's stages take at
``pace.epochs`` (``stage_steps`` summed over stage1..3, empty stages left out), whether or not
``heal`` itself is trained; a difference between variants is then the data's, not the compute's. A
single-stage variant trains B steps; a multi-stage one splits B over its non-empty stages in proportion to
their own epoch-based steps (largest remainder, each at least 1, summing to exactly B), so ``heal`` trains
exactly its epochs.

Empty data: a variant whose datasets are all empty (``rs_sft`` when Stage I kept nothing) is skipped with the
reason recorded, and so is every variant when B is 0 (HEAL's datasets are all empty), and one whose non-empty
stages outnumber B. An empty stage
inside a variant (no Stage III data) trains nothing: the variant keeps the previous stage's model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from heal_core.config import PaceConfig, VariantName
from heal_core.stages import Dataset

VARIANTS: dict[VariantName, tuple[Dataset, ...]] = {
    "heal": (Dataset.STAGE1, Dataset.STAGE2, Dataset.STAGE3),
    "rs_sft": (Dataset.RS_SFT,),
    "keep_all": (Dataset.KEEP_ALL,),
    "heal_no_pure": (Dataset.STAGE1, Dataset.STAGE2_NO_PURE, Dataset.STAGE3_NO_PURE),
    "heal_no_gear": (Dataset.STAGE1, Dataset.STAGE2),
    "heal_mixed": (Dataset.MIXED,),
}
BASELINE: VariantName = "rs_sft"  # what the report's differences are taken against


@dataclass(frozen=True)
class StagePlan:
    dataset: str
    examples: int
    steps: int  # 0: an empty dataset, trained over by keeping the previous stage's model


@dataclass(frozen=True)
class VariantPlan:
    variant: str
    budget: int  # B: HEAL's epoch-based steps, the same for every variant
    stages: tuple[StagePlan, ...]
    skip_reason: str | None = None  # set: nothing is trained


def stage_steps(examples: int, cfg: PaceConfig) -> int:
    """Optimizer steps one stage takes by epochs: ``epochs`` passes at the configured effective batch size."""
    return max(1, math.ceil(cfg.epochs * math.ceil(examples / cfg.batch_size)))


def datasets_of(variants: Sequence[str]) -> list[str]:
    """The datasets training ``variants`` needs, HEAL's always among them (they fix the budget)."""
    return list(dict.fromkeys(d for v in ("heal", *variants) for d in VARIANTS[v]))


def step_budget(sizes: Mapping[str, int], cfg: PaceConfig) -> int:
    """B: the optimizer steps HEAL's non-empty stages take at ``cfg.epochs``; ``sizes`` maps dataset -> examples."""
    return sum(stage_steps(sizes[d], cfg) for d in VARIANTS["heal"] if sizes[d])


def split_budget(budget: int, weights: Sequence[int]) -> list[int]:
    """``budget`` steps over stages in proportion to ``weights`` (positive): each at least 1, summing to
    ``budget``; leftover steps go to the largest remainders, the earlier stage on a tie."""
    if budget < len(weights):
        raise ValueError(f"a budget of {budget} steps cannot give each of {len(weights)} stages a step")
    ideal = [Fraction(budget * w, sum(weights)) for w in weights]
    steps = [max(1, int(x)) for x in ideal]
    while sum(steps) < budget:
        steps[max(range(len(steps)), key=lambda i: (ideal[i] - steps[i], -i))] += 1
    while sum(steps) > budget:  # the minimum of 1 took steps that belong to larger stages
        steps[max((i for i in range(len(steps)) if steps[i] > 1), key=lambda i: (steps[i] - ideal[i], -i))] -= 1
    return steps


def plan(variant: str, sizes: Mapping[str, int], cfg: PaceConfig) -> VariantPlan:
    """What ``variant`` trains on the datasets of ``sizes`` (dataset -> examples): its stages' steps, or why not."""
    budget = step_budget(sizes, cfg)
    names = VARIANTS[variant]
    filled = [d for d in names if sizes[d]]
    reason = None
    if not filled:
        reason = f"no training examples: {', '.join(names)} {'is' if len(names) == 1 else 'are all'} empty"
    elif budget == 0:
        reason = "no step budget: HEAL's datasets (stage1, stage2, stage3) are all empty"
    elif budget < len(filled):
        reason = (
            f"a step budget of {budget} (HEAL's stages at pace.epochs={cfg.epochs}) is below its "
            f"{len(filled)} non-empty stages"
        )
    if reason is not None:
        return VariantPlan(variant, budget, tuple(StagePlan(d, sizes[d], 0) for d in names), reason)
    steps = dict(zip(filled, split_budget(budget, [stage_steps(sizes[d], cfg) for d in filled]), strict=True))
    return VariantPlan(variant, budget, tuple(StagePlan(d, sizes[d], steps.get(d, 0)) for d in names))
