import numpy as np
import pytest

from heal_core.entropy import find_breakpoint, split_steps, step_start, surges


def test_planted_surge_in_first_third_is_found():
    rng = np.random.default_rng(0)
    h = 0.5 + 0.05 * rng.random(300)
    h[40] = 3.0
    bp = find_breakpoint(h, window=16, fraction=1 / 3)
    assert bp is not None and bp.token == 40
    assert bp.surge == pytest.approx(3.0 - h[24:40].mean())


def test_surge_outside_first_third_is_ignored():
    rng = np.random.default_rng(1)
    h = 0.5 + 0.05 * rng.random(300)
    h[30] = 1.5  # modest surge inside the first third
    h[200] = 6.0  # bigger surge, but late
    bp = find_breakpoint(h, window=16, fraction=1 / 3)
    assert bp is not None and bp.token == 30


def test_surge_is_relative_to_the_recent_level():
    # A long high plateau is not a surge; the jump onto it is.
    h = np.concatenate([np.full(20, 0.2), np.full(40, 2.0)])
    assert find_breakpoint(h, window=8, fraction=1.0).token == 20


def test_no_breakpoint_for_empty_flat_or_tiny_traces():
    assert find_breakpoint(np.array([]), 16, 1 / 3) is None
    assert find_breakpoint(np.array([1.0]), 16, 1 / 3) is None
    assert find_breakpoint(np.full(90, 0.7), 16, 1 / 3) is None
    assert np.isnan(surges(np.array([1.0, 2.0]), 4)[0])


def test_split_steps_keeps_text_exact():
    text = "Start.\n\nStep one.\n \nStep two.\n\n\nSo \\boxed{3}."
    parts = split_steps(text)
    assert "".join(parts) == text
    assert len(parts) == 4
    assert parts[1].startswith("\n\n")
    assert split_steps("one line only") == ["one line only"]
    assert split_steps("\n\nleading and trailing\n\n") == ["\n\nleading and trailing\n\n"]


def test_step_start_lands_on_a_step_boundary():
    text = "Alpha beta.\n\nGamma delta.\n\nEpsilon."
    gamma = text.index("delta")
    start, step = step_start(text, gamma)
    assert text[start:].startswith("Gamma") and text[:start].endswith("\n\n") and step == 1
    assert step_start(text, 3) == (0, 0)
    eps = text.index("Epsilon")
    assert step_start(text, eps) == (eps, 2)
