"""Training variants: the config's names, the shared step budget and how a variant splits it over its stages."""

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heal_core.config import ConfigError, PaceConfig, VariantName, parse_config
from heal_core.stages import Dataset
from heal_core.variants import VARIANTS, datasets_of, plan, split_budget, stage_steps, step_budget

CFG = PaceConfig(epochs=2, batch_size=4)


def _sizes(**sizes: int) -> dict[str, int]:
    return {name: sizes.get(name, 0) for name in Dataset}


def test_every_configurable_variant_is_defined_on_built_datasets():
    assert set(VARIANTS) == set(get_args(VariantName))
    assert {d for stages in VARIANTS.values() for d in stages} <= set(Dataset)
    assert datasets_of(["heal_mixed", "rs_sft"]) == ["stage1", "stage2", "stage3", "mixed", "rs_sft"]


def test_unknown_or_repeated_variants_and_seeds_are_config_errors():
    with pytest.raises(ConfigError) as err:
        parse_config({}, ["pace.variants=[heal, heal_no_hints]"])
    assert "'pace.variants.1'" in str(err.value) and "heal_no_hints" in str(err.value)
    assert all(name in str(err.value) for name in VARIANTS)  # the valid names are listed
    with pytest.raises(ConfigError, match=r"'pace.variants': .*listed more than once: rs_sft"):
        parse_config({}, ["pace.variants=[rs_sft, heal, rs_sft]"])
    with pytest.raises(ConfigError, match=r"'pace.seeds': .*listed more than once: 1"):
        parse_config({}, ["pace.seeds=[1, 2, 1]"])
    with pytest.raises(ConfigError, match="'pace.seeds'"):
        parse_config({}, ["pace.seeds=[]"])
    with pytest.raises(ConfigError, match="unknown key 'pace.seed'"):
        parse_config({}, ["pace.seed=3"])
    cfg = parse_config({})
    assert (cfg.pace.variants, cfg.pace.seeds) == (["heal", "rs_sft"], [0, 1, 2])
    assert (cfg.evaluation.bootstrap_resamples, cfg.evaluation.confidence) == (2000, 0.95)


def test_budget_split_is_proportional_at_least_one_and_exact():
    assert split_budget(8, [2, 3, 3]) == [2, 3, 3]  # HEAL splits its own budget into its own epochs
    assert split_budget(10, [2, 3, 3]) == [2, 4, 4]  # 2.5, 3.75, 3.75: the larger remainders get the two steps
    assert split_budget(9, [1, 1, 1]) == [3, 3, 3]
    assert split_budget(4, [1, 1, 1]) == [2, 1, 1]  # a tie goes to the earlier stage
    assert split_budget(3, [1, 100, 1]) == [1, 1, 1]  # every non-empty stage trains at least one step
    assert split_budget(5, [7]) == [5]
    with pytest.raises(ValueError, match="cannot give each of 3 stages a step"):
        split_budget(2, [1, 1, 1])


@given(st.lists(st.integers(1, 500), min_size=1, max_size=4), st.integers(0, 2000))
def test_budget_split_invariants(weights, extra):
    budget = len(weights) + extra
    steps = split_budget(budget, weights)
    assert sum(steps) == budget and min(steps) >= 1
    ideal = [budget * w / sum(weights) for w in weights]
    assert all(abs(s - x) < 1 + len(weights) for s, x in zip(steps, ideal, strict=True))


def test_every_variant_gets_heals_steps():
    sizes = _sizes(
        stage1=10, stage2=16, stage3=20, stage2_no_pure=24, stage3_no_pure=30, mixed=20, rs_sft=10, keep_all=40
    )
    budget = step_budget(sizes, CFG)
    assert budget == stage_steps(10, CFG) + stage_steps(16, CFG) + stage_steps(20, CFG) == 6 + 8 + 10
    plans = {name: plan(name, sizes, CFG) for name in VARIANTS}
    assert all(p.budget == budget and p.skip_reason is None for p in plans.values())
    assert all(sum(s.steps for s in p.stages) == budget for p in plans.values())
    assert [s.steps for s in plans["heal"].stages] == [6, 8, 10]  # exactly its epochs
    assert [(s.dataset, s.steps) for s in plans["rs_sft"].stages] == [("rs_sft", 24)]  # 8 passes over its 10
    assert [s.steps for s in plans["heal_no_gear"].stages] == [10, 14]  # 24 split 6 : 8
    assert [s.steps for s in plans["heal_no_pure"].stages] == [4, 9, 11]  # 24 split 6 : 12 : 16 = 4.2 : 8.5 : 11.3
    assert [s.examples for s in plans["heal_no_pure"].stages] == [10, 24, 30]


def test_empty_data_is_a_skip_with_its_reason_and_an_empty_stage_keeps_the_previous_model():
    no_stage1 = _sizes(stage2=8, stage3=8, mixed=8, keep_all=16, stage2_no_pure=8, stage3_no_pure=8)
    rs_sft = plan("rs_sft", no_stage1, CFG)
    assert rs_sft.skip_reason == "no training examples: rs_sft is empty" and rs_sft.budget == 8
    assert [s.steps for s in rs_sft.stages] == [0]
    heal = plan("heal", no_stage1, CFG)
    assert heal.skip_reason is None and [s.steps for s in heal.stages] == [0, 4, 4]
    nothing = plan("keep_all", _sizes(keep_all=12), CFG)  # unverified samples only: HEAL has nothing to train
    assert nothing.skip_reason == "no step budget: HEAL's datasets (stage1, stage2, stage3) are all empty"
    assert plan("heal", _sizes(), CFG).skip_reason == "no training examples: stage1, stage2, stage3 are all empty"
    tight = plan("heal_no_pure", _sizes(stage1=1, stage2_no_pure=1, stage3_no_pure=1), PaceConfig(epochs=0.1))
    assert (
        tight.budget == 1 and "budget of 1" in tight.skip_reason and "below its 3 non-empty stages" in tight.skip_reason
    )
