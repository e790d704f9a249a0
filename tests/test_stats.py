"""Bootstrap intervals over problems and seeds, on hand-built per-(seed, problem) evaluation rows."""

import numpy as np
import pytest

from heal_core.stats import bootstrap, pass_at_1_matrix


def _rows(model: str, table: dict[int, list[float]]) -> list[dict]:
    """Evaluation rows of one model: training seed -> pass@1 of problems p0, p1, ..."""
    return [
        {"model": model, "train_seed": seed, "problem_id": f"p{j}", "pass_at_1": value}
        for seed, values in table.items()
        for j, value in enumerate(values)
    ]


def _scores(tables: dict[str, dict[int, list[float]]]) -> dict[str, np.ndarray]:
    problems = [f"p{j}" for j in range(len(next(iter(next(iter(tables.values())).values()))))]
    return {model: pass_at_1_matrix(_rows(model, table), problems) for model, table in tables.items()}


def _mixed(problems: int, offset: float = 0.0, seeds: int = 3) -> dict[int, list[float]]:
    """Problems alternating hard and easy, each seed a little different."""
    return {
        s: [min(1.0, (0.75 if j % 2 else 0.0) + offset + 0.25 * ((j + s) % 2) * (j % 3 == 0)) for j in range(problems)]
        for s in range(seeds)
    }


def test_rows_become_a_seeds_by_problems_matrix_and_a_missing_cell_is_an_error():
    rows = _rows("heal", {1: [0.5, 1.0], 0: [0.0, 0.25]})
    assert pass_at_1_matrix(rows, ["p1", "p0"]).tolist() == [[0.25, 0.0], [1.0, 0.5]]
    with pytest.raises(ValueError, match=r"\(train_seed, problem\) \[\(0, 'p1'\)\]"):
        pass_at_1_matrix([r for r in rows if (r["train_seed"], r["problem_id"]) != (0, "p1")], ["p0", "p1"])


def test_the_interval_holds_the_estimate_and_is_deterministic():
    scores = _scores({"heal": _mixed(40), "rs_sft": _mixed(40, offset=-0.1)})
    level, delta = bootstrap(scores, "rs_sft", resamples=2000, confidence=0.95)
    heal = level["heal"]
    assert heal.estimate == pytest.approx(scores["heal"].mean())
    assert heal.low < heal.estimate < heal.high and heal.low >= 0.0 and heal.high <= 1.0
    assert set(delta) == {"heal"}
    again = bootstrap(scores, "rs_sft", resamples=2000, confidence=0.95)
    assert (level, delta) == again
    # A variant's interval does not depend on which other variants are compared with it.
    alone, _ = bootstrap({"heal": scores["heal"]}, None, resamples=2000, confidence=0.95)
    assert alone["heal"] == heal
    wider, _ = bootstrap(scores, "rs_sft", resamples=2000, confidence=0.99)
    assert wider["heal"].low <= heal.low and wider["heal"].high >= heal.high


def test_a_dominating_variant_has_a_difference_interval_above_zero():
    base = _mixed(30)
    better = {s: [min(1.0, v + 0.2) for v in values] for s, values in base.items()}
    _, delta = bootstrap(_scores({"heal": better, "rs_sft": base}), "rs_sft", resamples=2000, confidence=0.95)
    assert 0.0 < delta["heal"].low <= delta["heal"].estimate <= delta["heal"].high
    # The same two variants unpaired over problems would overlap: the pairing is what separates them.
    level, _ = bootstrap(_scores({"heal": better, "rs_sft": base}), "rs_sft", resamples=2000, confidence=0.95)
    assert level["heal"].low < level["rs_sft"].high


def test_more_problems_narrow_the_interval():
    width = {}
    for problems in (12, 120):
        level, _ = bootstrap(_scores({"heal": _mixed(problems)}), None, resamples=2000, confidence=0.95)
        width[problems] = level["heal"].high - level["heal"].low
    assert width[120] < width[12] / 2  # ~ 1 / sqrt(problems): a tenth of the problems, about 3x wider


def test_seed_noise_widens_the_interval():
    steady = {s: [0.25, 0.75] * 10 for s in range(4)}
    noisy = {s: [v + (0.2 if s % 2 else -0.2) for v in [0.25, 0.75] * 10] for s in range(4)}  # same problem means
    level, _ = bootstrap(_scores({"steady": steady, "noisy": noisy}), None, resamples=2000, confidence=0.95)
    assert level["noisy"].high - level["noisy"].low > level["steady"].high - level["steady"].low


def test_variants_must_share_their_problems():
    with pytest.raises(ValueError, match="same, non-zero number of problems"):
        bootstrap({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))}, None, resamples=100, confidence=0.95)
