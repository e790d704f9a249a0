"""The step checker and the ground-truth audit, on hand-built trajectories whose truth is known by construction."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rows import trajectory

from heal_core.config import HealConfig, PureConfig
from heal_core.demo.arithmetic import HARD_SYMBOL, Chain, Op, first_wrong_step, make_problems, solution
from heal_core.problems import Problem
from heal_core.pure import PureResult, judge, shortcut_score
from heal_core.truth import Truth, auroc, breakpoint_audit, checker_for, pure_audit, wrong_step_share

CHAIN = Chain(
    46,
    (
        Op(HARD_SYMBOL, 1),
        Op("+", 3),
        Op("-", 5),
        Op("+", 8),
        Op("-", 10),
        Op("-", 2),
        Op("+", 1),
        Op("-", 1),
        Op("-", 15),
        Op("-", 13),
    ),
)
PROBLEM = Problem("p", CHAIN.problem_text(), str(CHAIN.values()[-1]), source="arithmetic")


def test_the_step_checker_passes_a_correct_solution_and_finds_each_planted_wrong_step():
    right = solution(CHAIN)
    assert right.startswith("Start with 46.\n\n46#1=56.\n\n56+3=59.")
    assert first_wrong_step(PROBLEM.problem, right) is None
    assert first_wrong_step(PROBLEM.problem + "\nHint: the answer is 22.", right) is None  # a hinted prompt

    slipped = solution(CHAIN, CHAIN.values(first=47))  # read #1 as +1, then computed on correctly
    assert first_wrong_step(PROBLEM.problem, slipped) == 1
    values = CHAIN.values()
    boxed = solution(CHAIN, CHAIN.values(first=47), boxed=values[-1])  # a shortcut: boxes the gold anyway
    assert boxed.endswith(f"\\boxed{{{values[-1]}}}.") and first_wrong_step(PROBLEM.problem, boxed) == 1
    late = right.replace("50-15=35.", "50-15=36.")
    assert first_wrong_step(PROBLEM.problem, late) == 9
    leap = solution(CHAIN, [*values[:-1], 99])
    assert first_wrong_step(PROBLEM.problem, leap) == 10
    assert first_wrong_step(PROBLEM.problem, right.replace("The final answer is \\boxed{22}.", "")) == 11
    assert first_wrong_step(PROBLEM.problem, right + "\n\n22+0=22.") == 12  # an extra step after the answer
    assert first_wrong_step(PROBLEM.problem, right.replace("59-5=54.\n\n", "")) == 3  # a skipped step


def test_generated_problems_hold_their_hard_share_and_check_as_right():
    problems = make_problems(50, seed=7, hard_share=0.4)
    assert sum(w.hard for w in problems) == 20
    assert all(w.chain.ops[0].symbol == HARD_SYMBOL for w in problems if w.hard)
    assert all(first_wrong_step(w.problem.problem, w.solution) is None for w in problems)
    assert checker_for([w.problem for w in problems]) is first_wrong_step
    assert checker_for([Problem("x", "What is 1+1?", "2", source="gsm8k")]) is None


def _char_decode(ids):  # one token per character: a position is a character offset
    return "".join(map(chr, ids))


TRUTH = Truth({"p": PROBLEM}, first_wrong_step, _char_decode)


def _row(
    sample_id: str,
    stage: int,
    text: str,
    verified: bool,
    index: int = 0,
    breakpoint_step: int = 0,
    parent: str = "",
    pure: tuple[str, list[float], list[float]] | None = None,
):
    row = trajectory(
        sample_id,
        stage,
        "p",
        sample_index=index,
        text=text,
        token_ids=[ord(c) for c in text],
        verified=verified,
        parent=parent,
    )
    if row.repair is not None:
        row = replace(row, repair=replace(row.repair, breakpoint_step=breakpoint_step))
    return row if pure is None else replace(row, pure=PureResult(pure[0], "", pure[1], pure[2], None))


def test_breakpoint_audit_counts_hits_against_the_first_wrong_step_and_the_random_rate():
    cfg = HealConfig.model_validate({"teacher": {"sampling": {"n": 4}}, "gear": {"failed_paths": 2}})
    slipped = solution(CHAIN, CHAIN.values(first=47))
    late = solution(CHAIN).replace("50-15=35.", "50-15=36.").replace("\\boxed{22}", "\\boxed{21}")
    rows = [
        _row("a", 1, slipped, False, 0),
        _row("b", 1, slipped, False, 1),
        _row("c", 1, late, False, 2),
        _row("d", 1, slipped, False, 3),
        _row("a-r", 3, "x", True, parent="a", breakpoint_step=1),  # in the wrong step: a hit
        _row("b-r", 3, "x", True, parent="b", breakpoint_step=4),
    ]  # three steps late: a miss
    result = breakpoint_audit(rows, TRUTH, cfg)
    assert (result.failed, result.failed_located) == (4, 3)  # "late" goes wrong at step 9, past the first third
    assert (result.paths, result.hits, result.hit_rate) == (2, 1, 0.5)
    limit = math.ceil(len(slipped) / 3)
    second = slipped.index("\n\n", slipped.index("\n\n") + 2) + 2  # where step 2 begins
    assert result.random_rate == pytest.approx((second - 1) / (limit - 1))
    start = slipped.index("\n\n") + 2  # the first wrong step's tokens (one per character), for the entropy plot
    assert TRUTH.wrong_tokens(rows[0]) == (start, second)


def test_pure_audit_grades_rejections_and_ranks_by_the_shortcut_score():
    cfg = HealConfig()
    right, slipped = solution(CHAIN), solution(CHAIN, CHAIN.values(first=47), boxed=22)
    low, high = ([2.0, 1.9, 0.01], [1.0, 1.1, 1.0]), ([2.0, 1.9, 1.5], [1.0, 1.1, 1.0])
    rows = [
        _row("g1", 2, right, True, pure=("keep", *low)),
        _row("g2", 3, right, True, pure=("reject_ratio", *high)),
        _row("s1", 2, slipped, True, pure=("reject_ratio", *high)),
        _row("s2", 2, slipped, True, pure=("keep", *low)),
        _row("u", 2, slipped, False),  # unverified: never scored
        _row("n", 2, right, True),  # past the cap: never scored
    ]
    result = pure_audit(rows, TRUTH, cfg)
    assert (result.scored, result.wrong, result.rejected, result.true_rejections) == (4, 2, 2, 1)
    assert (result.precision, result.recall, result.wrong / result.scored) == (0.5, 0.5, 0.5)
    assert result.auroc == 0.5  # each shortcut ties one genuine sample and beats or loses to the other
    assert auroc([3.0, 2.0], [1.0, 0.0]) == 1.0 and auroc([1.0], [1.0]) == 0.5 and auroc([], [1.0]) is None


def test_the_shortcut_score_crosses_one_exactly_where_pure_rejects():
    cfg = PureConfig()
    cases = [
        ([2.0, 1.9, 1.8, 0.01], [1.0, 1.1, 1.0, 1.2]),  # supported
        ([2.0, 1.9, 1.8, 1.2], [1.0, 1.1, 1.0, 1.2]),  # answer still uncertain: ratio
        ([2.0, 1.9, 1.8, 0.01], [1.0, 1.1, 5.0, 1.2]),  # one implausible step makes the drop: leap
        ([2.0, 1.9, 1.8, 0.01], [1.0, 1.1, 2.0, 1.2]),
    ]  # the same step, plausible enough
    for nll, ppl in cases:
        assert (shortcut_score(nll, ppl, cfg) > 1) == (judge(nll, ppl, cfg).verdict != "keep"), (nll, ppl)
    assert shortcut_score([1.0], [2.0], cfg) == math.inf


def test_wrong_step_share_of_training_examples():
    examples = [
        {"problem_id": "p", "completion": [{"role": "assistant", "content": text}]}
        for text in (solution(CHAIN), solution(CHAIN, CHAIN.values(first=47), boxed=22), solution(CHAIN))
    ]
    assert wrong_step_share(examples, TRUTH) == pytest.approx(1 / 3)
    assert wrong_step_share([], TRUTH) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.lists(st.integers(0, 5), min_size=1, max_size=30))
def test_auroc_from_ranks_is_the_pairwise_definition(positive, negative):
    """The rank form (linear memory: 100k PURE-scored samples would be a 10^10-cell pairwise matrix) equals the
    definition, ties included."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    assert auroc(positive, negative) == pytest.approx(sum(pairs) / len(pairs))
