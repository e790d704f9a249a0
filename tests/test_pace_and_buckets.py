from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rows import built_datasets, trajectory

from heal_core.config import HealConfig, parse_config
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
    assert teacher_ceiling(s.correct for s in stats.values()) == 1  # c: a has 1 verified
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
    return trajectory(sid, stage, pid, text=text, kept=True)


def test_curriculum_membership_cumulative_and_incremental(tmp_path):
    kept = [
        _row("a1", 1, "a", "x"),
        _row("a2", 1, "a", "y"),
        _row("b1", 2, "b", "z"),
        _row("a3", 2, "a", "x"),  # a3 duplicates a1's text: not new
        _row("c1", 3, "c", "w"),
    ]
    cum = built_datasets(kept, CFG, tmp_path / "cumulative")
    assert [e["sample_id"] for e in cum["stage1"]] == ["a1", "a2"]
    assert [e["sample_id"] for e in cum["stage2"]] == ["a1", "a2", "b1"]
    assert [e["sample_id"] for e in cum["stage3"]] == ["a1", "a2", "b1", "c1"]
    inc = built_datasets(kept, parse_config({}, ["pace.mode=incremental"]), tmp_path / "incremental")
    assert {k: [e["sample_id"] for e in inc[k]] for k in ("stage1", "stage2", "stage3")} == {
        "stage1": ["a1", "a2"],
        "stage2": ["b1"],
        "stage3": ["c1"],
    }
    example = cum["stage3"][-1]
    assert example["prompt"] == [{"role": "user", "content": "Pc"}]
    assert example["completion"] == [{"role": "assistant", "content": "w"}]
    assert example["stage"] == 3 and example["problem_id"] == "c"


def test_baselines(tmp_path):
    rows = [
        _row("a1", 1, "a", "x"),
        replace(_row("a2", 1, "a", "y"), kept=False),
        replace(_row("a3", 1, "a", "x"), kept=False),
    ]
    built = built_datasets(rows, CFG, tmp_path)
    assert [e["sample_id"] for e in built["rs_sft"]] == ["a1"]
    assert [e["sample_id"] for e in built["keep_all"]] == ["a1", "a2"]


def _hinted(pid, stage, index, verified=True, leaked=False, pure="keep", parent=None):
    return trajectory(
        f"{pid}|s{stage}|{parent + '|' if parent else ''}{index}",
        stage,
        pid,
        sample_index=index,
        text=f"{pid}-{stage}-{parent}-{index}",
        verified=verified,
        leaked=leaked,
        pure=pure if stage > 1 else None,
        **({"parent": parent} if parent else {}),
    )


def _no_pure_rows():
    """Stage I (a: one verified, b: failed twice), Stage II for a, Stage III repairs of b's two failed paths, stored
    out of generation order; PURE rejected some of them."""
    stage1 = [_hinted("a", 1, 0), _hinted("b", 1, 0, verified=False), _hinted("b", 1, 1, verified=False)]
    stage2 = [
        _hinted("a", 2, 3),
        _hinted("a", 2, 0, pure="reject_ratio"),
        _hinted("a", 2, 1, verified=False),
        _hinted("a", 2, 2, leaked=True),
        _hinted("a", 2, 4, pure=None),
    ]
    stage3 = [
        _hinted("b", 3, 0, parent="b|s1|1"),
        _hinted("b", 3, 1, parent="b|s1|0", pure="reject_leap"),
        _hinted("b", 3, 0, parent="b|s1|0"),
    ]
    return stage1 + stage3 + stage2


def _no_pure_selection(rows, tmp_path, *overrides):
    """The Stage II and III rows of the no-PURE datasets: what HEAL's rule keeps with PURE left out."""
    cfg = parse_config({}, ["pace.mode=incremental", *overrides])
    built = built_datasets(rows, cfg, tmp_path / "-".join(overrides))
    return [e["sample_id"] for name in ("stage2_no_pure", "stage3_no_pure") for e in built[name]]


def test_no_pure_selection_is_heals_rule_without_pure(tmp_path):
    picked = _no_pure_selection(_no_pure_rows(), tmp_path, "hints.max_per_problem=2", "gear.max_per_problem=2")
    # Stage II: the first two verified, non-leaking samples by index, PURE's verdict ignored (index 0 was rejected,
    # index 4 never scored); Stage III: parent b|s1|0's repairs before b|s1|1's, the PURE-rejected one included.
    assert picked == ["a|s2|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|0|1"]
    assert _no_pure_selection(_no_pure_rows(), tmp_path, "hints.max_per_problem=9", "gear.max_per_problem=1") == [
        "a|s2|0",
        "a|s2|3",
        "a|s2|4",
        "b|s3|b|s1|0|0",
    ]


def _generation_order(rows):
    """Stage II/III rows in the order a shard generates and filters them: per problem, by repaired parent (Stage
    III repairs failed paths lowest sample index first), then by sample index."""
    parent_index = {r.sample_id: r.sample_index for r in rows if r.stage == 1}
    return sorted(
        (r for r in rows if r.stage > 1),
        key=lambda r: (
            r.stage,
            r.problem_id,
            parent_index.get(r.repair.parent_sample_id, -1) if r.repair else -1,
            r.sample_index,
        ),
    )


def test_the_shard_and_the_no_pure_datasets_share_one_rule(tmp_path):
    from heal_core.shard import apply_filters

    rows = _no_pure_rows()
    cfg = parse_config({}, ["pure.enabled=false", "hints.max_per_problem=2", "gear.max_per_problem=1"])
    ordered = _generation_order(rows)
    filtered = [
        r
        for stage, cap in ((2, cfg.hints.max_per_problem), (3, cfg.gear.max_per_problem))  # no backend:
        for r in apply_filters([r for r in ordered if r.stage == stage], None, cfg, cap)
    ]  # PURE is off
    assert sorted(r.sample_id for r in filtered if r.kept) == sorted(
        _no_pure_selection(rows, tmp_path, "hints.max_per_problem=2", "gear.max_per_problem=1")
    )


def test_datasets_hold_heal_its_ablations_and_the_baselines(tmp_path):
    from heal_core.stages import Dataset

    rows = _no_pure_rows()
    rows[0] = replace(rows[0], kept=True)  # Stage I's verified sample
    rows = [
        replace(
            r,
            kept=r.kept
            or (
                r.stage > 1
                and r.verified
                and not r.hint.leaked_hint  # HEAL's own
                and r.pure is not None
                and r.pure.kept
            ),
        )
        for r in rows
    ]  # selection: PURE-kept
    cfg = parse_config({}, ["hints.max_per_problem=2", "gear.max_per_problem=2"])
    built = {
        name: [e["sample_id"] for e in examples] for name, examples in built_datasets(rows, cfg, tmp_path / "c").items()
    }
    assert list(built) == list(Dataset)
    assert built["stage2"] == ["a|s1|0", "a|s2|3"]
    assert built["stage3"] == ["a|s1|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|1|0"]
    assert built["stage2_no_pure"] == ["a|s1|0", "a|s2|0", "a|s2|3"]
    assert built["stage3_no_pure"] == ["a|s1|0", "a|s2|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|0|1"]
    assert sorted(built["mixed"]) == sorted(built["stage3"])
    assert built["rs_sft"] == ["a|s1|0"] and built["keep_all"] == ["a|s1|0", "b|s1|0", "b|s1|1"]
    incremental = parse_config({}, ["pace.mode=incremental", "hints.max_per_problem=2", "gear.max_per_problem=2"])
    built = {
        name: [e["sample_id"] for e in examples]
        for name, examples in built_datasets(rows, incremental, tmp_path / "i").items()
    }
    assert built["stage2_no_pure"] == ["a|s2|0", "a|s2|3"] and built["stage3_no_pure"] == [
        "b|s3|b|s1|0|0",
        "b|s3|b|s1|0|1",
    ]
    assert sorted(built["mixed"]) == ["a|s1|0", "a|s2|3", "b|s3|b|s1|0|0", "b|s3|b|s1|1|0"]


def _reference(rows, cfg):
    """The datasets as heal assembled them in Python lists before DuckDB (commit f5f913c, ``heal_core/pace.py`` and
    ``selection.select_without_pure``): the naive reference the out-of-core assembly is held to."""
    from heal_core.selection import select_capped

    def dedupe(ordered):
        seen, out = set(), []
        for r in ordered:
            if (r.prompt, r.text) not in seen:
                seen.add((r.prompt, r.text))
                out.append(r.sample_id)
        return out

    def curriculum(pool, mode):
        new = {s: [] for s in (1, 2, 3)}
        by_id = {r.sample_id: r for r in pool}
        for sid in dedupe(sorted(pool, key=lambda r: (r.stage, r.problem_id, r.sample_id))):
            new[by_id[sid].stage].append(sid)
        return new if mode == "incremental" else {k: [x for s in (1, 2, 3) if s <= k for x in new[s]] for k in new}

    ordered = _generation_order(rows)
    no_pure = [
        r
        for stage, cap in ((2, cfg.hints.max_per_problem), (3, cfg.gear.max_per_problem))
        for r in select_capped((r for r in ordered if r.stage == stage), cap)
        if r.kept
    ]
    kept = [r for r in rows if r.kept]
    stage1 = [r for r in rows if r.stage == 1]
    heal = curriculum(kept, cfg.pace.mode)
    nop = curriculum([r for r in stage1 if r.kept] + no_pure, cfg.pace.mode)
    return {
        "stage1": heal[1],
        "stage2": heal[2],
        "stage3": heal[3],
        "stage2_no_pure": nop[2],
        "stage3_no_pure": nop[3],
        "mixed": curriculum(kept, "cumulative")[3],
        "rs_sft": dedupe(sorted((r for r in stage1 if r.kept), key=lambda r: (r.problem_id, r.sample_id))),
        "keep_all": dedupe(sorted(stage1, key=lambda r: (r.problem_id, r.sample_id))),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_assembly_equals_the_python_reference_on_random_runs(tmp_path, data):
    """Random runs with duplicate texts across stages and problems, unverified, leaking and PURE-rejected rows and
    repairs of several parents: every dataset is the reference's, row for row, in both modes."""
    rows, parents = [], {}
    for p in data.draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True)):
        for i in range(data.draw(st.integers(1, 4))):
            row = trajectory(
                f"{p}|s1|{i}",
                1,
                p,
                sample_index=i,
                text=data.draw(st.sampled_from("xyz")),
                verified=data.draw(st.booleans()),
            )
            rows.append(replace(row, kept=row.verified and data.draw(st.booleans())))
            parents.setdefault(p, []).append(row.sample_id)
        for stage in (2, 3):
            for i in range(data.draw(st.integers(0, 5))):
                parent = data.draw(st.sampled_from(parents[p])) if stage == 3 else None
                row = _hinted(
                    p,
                    stage,
                    i,
                    verified=data.draw(st.booleans()),
                    leaked=data.draw(st.booleans()),
                    pure=data.draw(st.sampled_from(["keep", "reject_ratio", None])),
                    parent=parent,
                )
                rows.append(replace(row, text=data.draw(st.sampled_from("xyzw")), kept=data.draw(st.booleans())))
    order = data.draw(st.permutations(range(len(rows))))
    rows = [rows[i] for i in order]  # storage order is not generation order
    caps = [
        f"hints.max_per_problem={data.draw(st.integers(1, 3))}",
        f"gear.max_per_problem={data.draw(st.integers(1, 3))}",
    ]
    for mode in ("cumulative", "incremental"):
        cfg = parse_config({}, [f"pace.mode={mode}", *caps])
        work = tmp_path / f"{mode}-{data.draw(st.uuids())}"
        built = {name: [e["sample_id"] for e in examples] for name, examples in built_datasets(rows, cfg, work).items()}
        assert built == _reference(rows, cfg)
