import math

import pytest

from heal_core.config import PureConfig
from heal_core.pure import forced_answer_ratio, judge, leap_step

CFG = PureConfig()


def test_ratio_formula():
    assert forced_answer_ratio([2.0, 1.0, 0.2], 0.01) == pytest.approx(0.2 / 2.01)


def test_supported_answer_is_kept():
    result = judge([3.0, 2.0, 1.2, 0.3], [2.0, 2.5, 2.2, 1.8, 1.5], CFG)
    assert result.verdict == "keep" and result.kept
    assert result.ratio == pytest.approx(0.3 / 3.01)


def test_forced_answer_is_rejected_at_lambda():
    result = judge([3.0, 2.9, 2.8, 2.7], [2.0, 2.0, 2.0, 2.0, 2.0], CFG)
    assert result.verdict == "reject_ratio" and not result.kept
    # exactly at the boundary: R == lambda is kept, just above is not
    at = judge([1.0 - CFG.eps, 0.2], [1.0, 1.0, 1.0], CFG)
    assert at.ratio == pytest.approx(0.2) and at.kept
    above = judge([1.0 - CFG.eps, 0.2001], [1.0, 1.0, 1.0], CFG)
    assert above.verdict == "reject_ratio"


def test_leap_step_is_rejected():
    # step 3 removes nearly all uncertainty and is far more surprising than the median step
    u = [3.0, 2.9, 2.85, 0.1]
    ppl = [2.0, 2.1, math.exp(math.log(2.0) + 2.5), 2.0, 1.9]
    assert leap_step(u, ppl, CFG) == 3
    assert judge(u, ppl, CFG).verdict == "reject_leap"
    # the same drop from an unsurprising step is fine
    assert leap_step(u, [2.0, 2.1, 2.2, 2.0, 1.9], CFG) is None


def test_single_step_is_unscorable_not_a_crash():
    result = judge([], [], CFG)
    assert result.verdict == "reject_unscorable" and "step boundary" in result.reason
