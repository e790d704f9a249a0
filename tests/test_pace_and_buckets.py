import pytest

from heal_core.config import HealConfig, parse_config
from heal_core.hints import leak
from heal_core.pace import baselines, curriculum
from heal_core.sampling import bucket_of, needs_hint, problem_stats, select_stage1, teacher_ceiling

CFG = HealConfig()


@pytest.mark.parametrize(
    ("correct", "bucket"),
    [(0, "extremely_hard"), (1, "extremely_hard"), (2, "hard"), (14, "hard"), (15, "solved"), (30, "solved")],
)
def test_bucket_edges_at_n_30(correct, bucket):
    assert bucket_of(correct, 30, CFG) == bucket


def test_stats_ceiling_and_hint_selection():
    rows = [{"problem_id": "a", "verified": i < 1} for i in range(30)]
    rows += [{"problem_id": "b", "verified": i < 15} for i in range(30)]
    rows += [{"problem_id": "c", "verified": False} for _ in range(30)]
    stats = problem_stats(rows, CFG)
    assert [s.bucket for s in stats.values()] == ["extremely_hard", "solved", "extremely_hard"]
    assert stats["b"].pass_rate == 0.5
    assert teacher_ceiling(stats) == pytest.approx(1 / 3)
    assert [needs_hint(s, CFG) for s in stats.values()] == [True, False, True]
    cfg = parse_config({}, ["hints.pass_rate_below=0.6"])
    assert needs_hint(problem_stats(rows, cfg)["b"], cfg)


def test_stage1_selection_caps_and_keeps_only_verified():
    rows = [{"problem_id": "a", "sample_index": i, "verified": i % 2 == 0} for i in range(10)]
    kept = select_stage1(rows, cap_per_problem=3)
    assert [r["sample_index"] for r in kept] == [0, 2, 4]
    assert all(r["kept"] for r in kept)


def test_hint_leakage_patterns():
    patterns = CFG.hints.leakage_patterns
    assert leak("Using the hint, the answer is 5.", patterns)
    assert leak("The GIVEN ANSWER says 5.", patterns)
    assert leak("7 * 3 = 21.\n\nSo \\boxed{21}.", patterns) is None
    assert leak("Think about it.", patterns) is None  # "think" is not "hint"


def _row(sid, stage, pid, text):
    return {"sample_id": sid, "stage": stage, "problem_id": pid, "prompt": f"P{pid}", "text": text,
            "verify_status": "correct", "teacher": "t", "config_hash": "h"}


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
