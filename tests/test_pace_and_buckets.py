from dataclasses import replace

import pytest
from rows import trajectory

from heal_core.config import HealConfig, parse_config
from heal_core.pace import baselines, curriculum
from heal_core.sampling import bucket_of, needs_hint, problem_stats, select_stage1, teacher_ceiling
from heal_core.trajectory import mentions_hint

CFG = HealConfig()


@pytest.mark.parametrize(
    ("correct", "bucket"),
    [(0, "extremely_hard"), (1, "extremely_hard"), (2, "hard"), (14, "hard"), (15, "solved"), (30, "solved")],
)
def test_bucket_edges_at_n_30(correct, bucket):
    assert bucket_of(correct, 30, CFG) == bucket


def test_stats_ceiling_and_hint_selection():
    rows = [trajectory(f"a{i}", 1, "a", verified=i < 1) for i in range(30)]
    rows += [trajectory(f"b{i}", 1, "b", verified=i < 15) for i in range(30)]
    rows += [trajectory(f"c{i}", 1, "c", verified=False) for i in range(30)]
    stats = problem_stats(rows, CFG)
    assert [s.bucket for s in stats.values()] == ["extremely_hard", "solved", "extremely_hard"]
    assert stats["b"].pass_rate == 0.5
    assert teacher_ceiling(stats) == pytest.approx(1 / 3)
    assert [needs_hint(s, CFG) for s in stats.values()] == [True, False, True]
    cfg = parse_config({}, ["hints.pass_rate_below=0.6"])
    assert needs_hint(problem_stats(rows, cfg)["b"], cfg)


def test_stage1_selection_caps_and_keeps_only_verified():
    rows = [trajectory(f"a{i}", 1, "a", sample_index=i, verified=i % 2 == 0) for i in reversed(range(10))]
    selected = select_stage1(rows, cap_per_problem=3)
    assert [r.sample_id for r in selected] == [r.sample_id for r in rows]  # every row, in its order
    assert sorted(r.sample_index for r in selected if r.kept) == [0, 2, 4]


def test_hint_leakage_patterns():
    patterns = CFG.hints.leakage_patterns
    assert mentions_hint("Using the hint, the answer is 5.", patterns)
    assert mentions_hint("The GIVEN ANSWER says 5.", patterns)
    assert mentions_hint("7 * 3 = 21.\n\nSo \\boxed{21}.", patterns) is None
    assert mentions_hint("Think about it.", patterns) is None  # "think" is not "hint"


def _row(sid, stage, pid, text):
    return trajectory(sid, stage, pid, text=text)


def test_curriculum_membership_cumulative_and_incremental():
    kept = [
        _row("a1", 1, "a", "x"), _row("a2", 1, "a", "y"),
        _row("b1", 2, "b", "z"), _row("a3", 2, "a", "x"),  # a3 duplicates a1's text: not new
        _row("c1", 3, "c", "w"),
    ]
    cum = curriculum(kept)
    assert [e["sample_id"] for e in cum[1]] == ["a1", "a2"]
    assert [e["sample_id"] for e in cum[2]] == ["a1", "a2", "b1"]
    assert [e["sample_id"] for e in cum[3]] == ["a1", "a2", "b1", "c1"]
    inc = curriculum(kept, mode="incremental")
    assert {k: [e["sample_id"] for e in v] for k, v in inc.items()} == {1: ["a1", "a2"], 2: ["b1"], 3: ["c1"]}
    all_ids = [e["sample_id"] for v in inc.values() for e in v]
    assert len(all_ids) == len(set(all_ids))
    example = cum[3][-1]
    assert example["prompt"] == [{"role": "user", "content": "Pc"}]
    assert example["completion"] == [{"role": "assistant", "content": "w"}]
    assert example["stage"] == 3 and example["problem_id"] == "c"


def test_baselines():
    all_rows = [_row("a1", 1, "a", "x"), _row("a2", 1, "a", "y"), _row("a3", 1, "a", "x")]
    base = baselines(all_rows, all_rows[:1])
    assert [e["sample_id"] for e in base["rs_sft"]] == ["a1"]
    assert [e["sample_id"] for e in base["keep_all"]] == ["a1", "a2"]


def _hinted(pid, stage, index, verified=True, leaked=False, pure="keep", parent=None):
    return trajectory(f"{pid}|s{stage}|{parent + '|' if parent else ''}{index}", stage, pid, sample_index=index,
                      text=f"{pid}-{stage}-{parent}-{index}", verified=verified, leaked=leaked,
                      pure=pure if stage > 1 else None, **({"parent": parent} if parent else {}))


def _no_pure_rows():
    """Stage I (a: one verified, b: failed twice), Stage II for a, Stage III repairs of b's two failed paths, stored
    out of generation order; PURE rejected some of them."""
    stage1 = [_hinted("a", 1, 0), _hinted("b", 1, 0, verified=False), _hinted("b", 1, 1, verified=False)]
    stage2 = [_hinted("a", 2, 3), _hinted("a", 2, 0, pure="reject_ratio"), _hinted("a", 2, 1, verified=False),
              _hinted("a", 2, 2, leaked=True), _hinted("a", 2, 4, pure=None)]
    stage3 = [_hinted("b", 3, 0, parent="b|s1|1"), _hinted("b", 3, 1, parent="b|s1|0", pure="reject_leap"),
              _hinted("b", 3, 0, parent="b|s1|0")]
    return stage1 + stage3 + stage2


def test_no_pure_selection_is_heals_rule_without_pure():
    from heal_core.selection import select_without_pure

    cfg = parse_config({}, ["hints.max_per_problem=2", "gear.max_per_problem=2"])
    picked = select_without_pure(_no_pure_rows(), cfg)
    # Stage II: the first two verified, non-leaking samples by index, PURE's verdict ignored (index 0 was rejected,
    # index 4 never scored); Stage III: parent b|s1|0's repairs before b|s1|1's, the PURE-rejected one included.
    assert [r.sample_id for r in picked] == ["a|s2|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|0|1"]
    cfg = parse_config({}, ["hints.max_per_problem=9", "gear.max_per_problem=1"])
    assert [r.sample_id for r in select_without_pure(_no_pure_rows(), cfg)] == [
        "a|s2|0", "a|s2|3", "a|s2|4", "b|s3|b|s1|0|0"]


def test_the_shard_and_the_no_pure_datasets_share_one_rule():
    from heal_core.selection import generation_order, select_without_pure
    from heal_core.shard import apply_filters

    rows = _no_pure_rows()
    cfg = parse_config({}, ["pure.enabled=false", "hints.max_per_problem=2", "gear.max_per_problem=1"])
    ordered = generation_order(rows)  # the order the shard generated them in
    filtered = [r for stage, cap in ((2, cfg.hints.max_per_problem), (3, cfg.gear.max_per_problem))  # no backend:
                for r in apply_filters([r for r in ordered if r.stage == stage], None, cfg, cap)]  # PURE is off
    assert sorted(r.sample_id for r in filtered if r.kept) == sorted(r.sample_id for r in select_without_pure(rows, cfg))


def test_datasets_hold_heal_its_ablations_and_the_baselines():
    from heal_core.pace import datasets
    from heal_core.stages import Dataset

    rows = _no_pure_rows()
    rows[0] = replace(rows[0], kept=True)  # Stage I's verified sample
    rows = [replace(r, kept=r.kept or (r.stage > 1 and r.verified and not r.hint.leaked_hint  # HEAL's own
                                       and r.pure is not None and r.pure.kept)) for r in rows]  # selection: PURE-kept
    cfg = parse_config({}, ["hints.max_per_problem=2", "gear.max_per_problem=2"])
    built = {name: [e["sample_id"] for e in examples] for name, examples in datasets(rows, cfg).items()}
    assert list(built) == list(Dataset)
    assert built["stage2"] == ["a|s1|0", "a|s2|3"]
    assert built["stage3"] == ["a|s1|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|1|0"]
    assert built["stage2_no_pure"] == ["a|s1|0", "a|s2|0", "a|s2|3"]
    assert built["stage3_no_pure"] == ["a|s1|0", "a|s2|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|0|1"]
    assert sorted(built["mixed"]) == sorted(built["stage3"])
    assert built["rs_sft"] == ["a|s1|0"] and built["keep_all"] == ["a|s1|0", "b|s1|0", "b|s1|1"]
    incremental = parse_config({}, ["pace.mode=incremental", "hints.max_per_problem=2", "gear.max_per_problem=2"])
    built = {name: [e["sample_id"] for e in examples] for name, examples in datasets(rows, incremental).items()}
    assert built["stage2_no_pure"] == ["a|s2|0", "a|s2|3"] and built["stage3_no_pure"] == ["b|s3|b|s1|0|0", "b|s3|b|s1|0|1"]
    assert sorted(built["mixed"]) == ["a|s1|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|1|0"]
