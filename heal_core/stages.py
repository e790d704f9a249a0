"""The names a run gives its stages and datasets: one spelling each, used by every module that names them.

``Stage`` is what the ``stage`` column of a trajectory row holds; ``Dataset`` names the training sets PACE
builds (``heal_core/pace.py``) and the variants train on (``heal_core/variants.py``). Both are ``str``/``int``
enums, so a name stored in Parquet, JSON or a path is the plain value it always was.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Stage(IntEnum):
    BASE = 1  # Stage I: rejection sampling of the unaided teacher
    HINT = 2  # Stage II: global hindsight, the gold answer as a hint
    REPAIR = 3  # Stage III: GEAR, a failed path continued from its breakpoint

    @property
    def key(self) -> str:
        """``stage1``..``stage3``: the stage's dataset, and the stage's share of a request's seed identity."""
        return f"stage{self.value}"

    @property
    def roman(self) -> str:
        return ("I", "II", "III")[self.value - 1]


class Dataset(StrEnum):
    STAGE1 = Stage.BASE.key  # PACE stage I: Stage I's kept samples
    STAGE2 = Stage.HINT.key  # PACE stage II: stage I's and Stage II's (cumulative) or Stage II's alone
    STAGE3 = Stage.REPAIR.key  # PACE stage III, likewise with GEAR's
    STAGE2_NO_PURE = "stage2_no_pure"  # stage II as HEAL selects it, PURE left out (an ablation)
    STAGE3_NO_PURE = "stage3_no_pure"
    MIXED = "mixed"  # everything HEAL kept, for one SFT run without the curriculum
    RS_SFT = "rs_sft"  # the baseline: Stage I's kept samples only, plain rejection-sampling SFT
    KEEP_ALL = "keep_all"  # every Stage I sample, unverified

    @classmethod
    def of(cls, stage: Stage) -> Dataset:
        """PACE's dataset for ``stage``."""
        return cls(stage.key)
