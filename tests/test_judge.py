"""The optional LLM judge: which rejections it sees, how a reply becomes a verdict, and a real model judging."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from prefect import flow
from rows import trajectory

from heal_core.backends.hf import HFBackend
from heal_core.config import JudgeConfig, PaceConfig, parse_config
from heal_core.demo import demo_defaults, demo_problems
from heal_core.judge import judge_rows, parse_reply, worth_judging
from heal_core.train import train_stage


@pytest.mark.parametrize(
    ("status", "extracted", "gold", "judged"),
    [
        ("wrong", "4\\text{ days}", "4", True),
        ("wrong", "x = 3", "3", True),
        ("unparseable", "four", "4", True),
        ("timeout", "\\frac{1}{2}", "0.5", True),
        ("wrong", "7", "8", False),  # two plain numbers that differ: the rules are exact there
        ("wrong", "1,000", "1000", True),  # equal numbers the rules rejected: worth a second look
        ("no_answer", None, "4", False),
        ("truncated", "4", "4", False),
        ("correct", "4", "4", False),
        ("wrong", "  ", "4", False),
    ],
)
def test_only_rejections_that_are_not_trivially_different_are_judged(status, extracted, gold, judged):
    assert worth_judging(status, extracted, gold) is judged


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("yes", "equivalent"),
        ("Yes, they are equal.", "equivalent"),
        (" no.", "different"),
        ("No", "different"),
        ("maybe", "unclear"),
        ("", "unclear"),
        ("yesterday", "unclear"),
    ],
)
def test_the_first_word_of_the_reply_decides(reply, verdict):
    assert parse_reply(reply) == verdict


def _row(i: int, status: str, extracted: str | None, gold: str):
    return trajectory(
        f"s{i}", 1, gold_answer=gold, verified=status == "correct", verify_status=status, extracted_answer=extracted
    )


def test_a_real_judge_model_accepts_a_rejection_and_the_rules_verdict_is_kept(tiny_model_dirs, tmp_path):
    """A tiny model fine-tuned (with heal's own PACE stage runner) to answer "yes" to the judge's prompt."""
    cfg = JudgeConfig(enabled=True)
    examples = [
        {
            "prompt": [{"role": "user", "content": cfg.template.format(prediction=p, gold=g)}],
            "completion": [{"role": "assistant", "content": "yes"}],
        }
        for p, g in [("four", "4"), ("x=3", "3"), ("1/2", "0.5"), ("\\pi", "3.14159")] * 8
    ]
    judge = train_stage(
        "judge",
        str(tiny_model_dirs["qwen2"]),
        examples,
        tmp_path / "judge",
        PaceConfig(epochs=1, learning_rate=5e-3, batch_size=8),
        seed=0,
        max_steps=40,
    )
    rows = [
        _row(0, "wrong", "four", "4"),
        _row(1, "wrong", "7", "8"),
        _row(2, "no_answer", None, "4"),
        _row(3, "correct", "4", "4"),
    ]

    judged = judge_rows(rows, HFBackend(judge.model_dir, "float32", "cpu"), cfg)

    assert [r.judge_verdict for r in judged] == ["equivalent", None, None, None]
    assert [r.verified for r in judged] == [True, False, False, True]
    assert judged[0].verify_status == "wrong"  # the rules' verdict stays: judge-accepted samples can be audited
    assert judged[1:] == rows[1:]


def test_a_shard_with_the_judge_enabled_records_the_column(prefect_api, tmp_path):
    from heal_core.run import Run
    from tasks.generate import run_shard, write_shards

    cfg = parse_config(
        demo_defaults(), [f"storage.uri={tmp_path}", "judge.enabled=true", "teacher.sampling.n=2", "hints.n=2"]
    )
    layout = Run.of(cfg, "judged")

    @flow
    def shard() -> dict:
        from heal_core.demo import bundled_model

        write_shards(layout, demo_problems("generation")[:2], cfg)
        return run_shard(layout, 0, cfg, str(bundled_model("teacher")))

    shard()
    table = pq.read_table(layout.shard_samples(0))
    assert "judge_verdict" in table.schema.names
    rows = table.to_pylist()
    for row in rows:  # the demo teacher's wrong answers are numbers: every one is trivially different
        assert row["judge_verdict"] is None or worth_judging(
            row["verify_status"], row["extracted_answer"], row["gold_answer"]
        )
