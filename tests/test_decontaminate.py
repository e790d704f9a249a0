"""Decontamination: copies of evaluation problems are dropped with their match; boilerplate is not a copy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from heal_core.config import ProblemsConfig, parse_config
from heal_core.datasets import load_problem_set
from heal_core.decontaminate import decontaminate, words
from heal_core.problems import Problem


def _load(benchmarks_dir: Path, name: str, fmt: str) -> list[Problem]:
    return load_problem_set(ProblemsConfig(uri=str(benchmarks_dir / f"{name}.jsonl"), format=fmt))[0]


def test_exactly_the_seeded_math500_copies_are_removed(benchmarks_dir: Path) -> None:
    math500 = _load(benchmarks_dir, "math500_test", "math")
    train = _load(benchmarks_dir, "gsm8k_test", "gsm8k")
    seeded = random.Random(5).sample(math500, 5)
    copies = [Problem(f"copy-{i}", p.problem, p.answer) for i, p in enumerate(seeded)]
    for i, copy in enumerate(copies):
        train.insert(200 * (i + 1), copy)

    kept, dropped = decontaminate(train, {"math500": math500})

    assert [d.problem.problem_id for d in dropped] == [c.problem_id for c in copies]
    assert [(d.eval_set, d.eval_id, d.overlap) for d in dropped] == [("math500", p.problem_id, 1.0) for p in seeded]
    for d, original in zip(dropped, seeded):
        assert d.ngram in " ".join(words(original.problem))
    assert len(kept) == 1319 and all(not p.problem_id.startswith("copy-") for p in kept)


def test_competition_boilerplate_is_not_a_copy(benchmarks_dir: Path) -> None:
    """AIME/AMC problems share phrases such as "m/n where m and n are relatively prime positive integers" with
    MATH-500 items but copy none of them: one shared 8-gram (min_overlap=0) flags many, the default none."""
    math500 = _load(benchmarks_dir, "math500_test", "math")
    competition = [
        p
        for name, fmt in [("aime2024_test", "aime"), ("aime2025_test", "aime"), ("amc2023_test", "amc")]
        for p in _load(benchmarks_dir, name, fmt)
    ]
    kept, dropped = decontaminate(competition, {"math500": math500})
    assert dropped == [] and len(kept) == 100
    _, any_gram = decontaminate(competition, {"math500": math500}, min_overlap=0.0)
    assert len(any_gram) >= 10 and max(d.overlap for d in any_gram) < 0.2
    assert any("relatively prime" in d.ngram for d in any_gram)


EVAL = {
    "bench": [
        Problem("short", "Evaluate $\\log_264$.", "6"),
        Problem(
            "long",
            "Let $x$ and $y$ be real numbers such that $x + y = 10$ and $xy = 21$. "
            "Find the value of $x^2 + y^2$ given these two conditions.",
            "58",
        ),
    ],
    "other": [Problem("o1", "A train leaves the station at noon traveling sixty miles per hour toward the city.", "1")],
}


def test_copies_are_found_through_notation_case_and_spacing() -> None:
    train = [
        Problem("t1", "EVALUATE:  \\( \\log_264 \\) !", "6"),  # a short eval item, verbatim up to case and markup
        Problem(
            "t2",
            "Warm-up first. let x and y be real numbers such that x+y=10 and xy=21; find the value of "
            "x^2+y^2 given these two conditions. Then rest.",
            "58",
        ),
        Problem("t3", "Let $x$ and $y$ be real numbers such that $x - y = 4$. Find $x$.", "4"),  # one shared 8-gram
        Problem("t4", "Evaluate $\\log_3 81$.", "4"),
    ]
    kept, dropped = decontaminate(train, EVAL)
    assert [p.problem_id for p in kept] == ["t3", "t4"]
    assert [d.record() for d in dropped] == [
        {"problem_id": "t1", "eval_set": "bench", "eval_id": "short", "ngram": "evaluate log 264", "overlap": 1.0},
        {
            "problem_id": "t2",
            "eval_set": "bench",
            "eval_id": "long",
            "ngram": "let x and y be real numbers such",
            "overlap": 1.0,
        },
    ]
    kept, dropped = decontaminate(train, EVAL, min_overlap=0.0)
    assert [p.problem_id for p in kept] == ["t4"] and dropped[-1].problem.problem_id == "t3"
    assert 0 < dropped[-1].overlap < 0.5


def test_n_is_configurable_and_checked() -> None:
    train = [Problem("t", "a train leaves the station at noon", "1")]  # 7 words of a longer eval item
    assert decontaminate(train, EVAL, n=8, min_overlap=0.0)[1] == []
    assert decontaminate(train, EVAL, n=7, min_overlap=0.0)[1][0].eval_id == "o1"
    assert decontaminate(train, {}, n=8) == (train, [])
    with pytest.raises(ValueError, match="min_overlap"):
        decontaminate(train, EVAL, min_overlap=1.5)
    with pytest.raises(ValueError, match="n >= 1"):
        decontaminate(train, EVAL, n=0)


def test_config_keys() -> None:
    cfg = parse_config({"decontamination": {"ngram": 13, "against": [{"uri": "m.jsonl", "format": "math"}]}})
    assert (cfg.decontamination.ngram, cfg.decontamination.min_overlap) == (13, 0.5)
    assert cfg.decontamination.against[0].format == "math"
    assert parse_config({}).decontamination.against == []
