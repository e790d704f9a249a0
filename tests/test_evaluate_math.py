import pytest

from heal_core import report
from heal_core import summary as summaries
from heal_core.evaluate import pass_at_k, summarize
from heal_core.schema import EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, to_table


def _no_samples() -> dict:
    """``summary.sample_figures`` of a run without samples."""
    import duckdb

    from heal_core.schema import TRAJECTORY_SCHEMA

    empty = TRAJECTORY_SCHEMA.empty_table().select(list(summaries.REPORTED))
    return summaries.sample_figures(empty, set(), duckdb.connect())


def test_pass_at_k_estimator():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def _row(
    model: str, benchmark: str, problem: str, correct: int, metadata=None, temperature: float = 0.7, backend: str = "hf"
) -> dict:
    return {
        "model": model,
        "model_path": f"/m/{model}",
        "backend": backend,
        "benchmark": benchmark,
        "problem_id": problem,
        "metadata": metadata or {},
        "samples": 2,
        "correct": correct,
        "pass_at_1": correct / 2,
        "pass_at_k": pass_at_k(2, correct, 2),
        "temperature": temperature,
        "top_p": 0.95,
        "top_k": 0,
        "max_new_tokens": 16,
        "seed": 0,
    }


def test_summary_per_benchmark_and_metadata_group_survives_parquet():
    rows = [
        _row("teacher", "held_out", "h1", 2),
        _row("teacher", "held_out", "h2", 0),
        _row("teacher", "math500_test", "a", 1, {"subject": "Algebra", "level": "10"}),
        _row("teacher", "math500_test", "b", 2, {"subject": "Algebra", "level": "2"}),
        _row("teacher", "math500_test", "c", 0, {"subject": "Geometry", "level": "2"}),
        _row("heal", "held_out", "h1", 1),
    ]
    # Through Parquet and back, as the report reads them: the metadata map comes back as (key, value) pairs.
    stored = to_table(rows, EVALUATION_SCHEMA).to_pylist()
    summary = to_table(summarize(stored), EVALUATION_SUMMARY_SCHEMA).to_pylist()
    keys = [(r["model"], r["benchmark"], r["group_field"], r["group_value"]) for r in summary]
    assert keys == [
        ("teacher", "held_out", None, None),
        ("teacher", "math500_test", None, None),
        ("teacher", "math500_test", "level", "2"),
        ("teacher", "math500_test", "level", "10"),
        ("teacher", "math500_test", "subject", "Algebra"),
        ("teacher", "math500_test", "subject", "Geometry"),
        ("heal", "held_out", None, None),
    ]
    by_key = dict(zip(keys, summary, strict=True))
    whole = by_key[("teacher", "math500_test", None, None)]
    assert (whole["problems"], whole["pass_at_1"], whole["pass_at_k"]) == (3, pytest.approx(0.5), pytest.approx(2 / 3))
    algebra = by_key[("teacher", "math500_test", "subject", "Algebra")]
    assert (algebra["problems"], algebra["pass_at_1"], algebra["pass_at_k"]) == (2, 0.75, 1.0)
    assert by_key[("teacher", "held_out", None, None)]["pass_at_1"] == 0.5
    assert {
        (r["samples"], r["temperature"], r["top_p"], r["top_k"], r["max_new_tokens"], r["seed"]) for r in summary
    } == {(2, 0.7, 0.95, 0, 16, 0)}


def test_summary_never_averages_rows_drawn_with_other_settings():
    rows = [
        _row("teacher", "gsm8k_test", "a", 2, temperature=0.7),
        _row("teacher", "gsm8k_test", "b", 0, temperature=1.0),
    ]
    summary = summarize(rows)
    assert [(r["temperature"], r["problems"], r["pass_at_1"]) for r in summary] == [(0.7, 1, 1.0), (1.0, 1, 0.0)]
    rows = [_row("heal", "held_out", "a", 2), _row("heal", "held_out", "a", 0, backend="openai")]  # nor other backends
    assert [(r["backend"], r["problems"], r["pass_at_1"]) for r in summarize(rows)] == [
        ("hf", 1, 1.0),
        ("openai", 1, 0.0),
    ]


def test_headline_accuracy_is_the_held_out_set_and_the_report_compares_models_per_benchmark():
    rows = [
        _row("rs_sft", "held_out", "h1", 0),
        _row("heal", "held_out", "h1", 2),
        _row("heal", "aime2024_test", "x", 0),
        _row("teacher", "aime2024_test", "x", 1),
        _row("teacher", "held_out", "h1", 1),
    ]
    assert summaries.accuracy(rows) == {"rs_sft": 0.0, "heal": 1.0, "teacher": 0.5}
    text = report.markdown(
        "r1", "/store/runs/r1", summaries.summarize(_no_samples(), [], {}, rows), benchmarks=summarize(rows)
    )
    assert "| held-out pass@1 heal | 1.0 |" in text
    section = text.split("## Evaluation per benchmark", 1)[1]
    assert "| benchmark | group | problems | teacher | HEAL student | RS-SFT student |" in section
    assert "| held_out | all | 1 | 0.500 / 1.000 | 1.000 / 1.000 | 0.000 / 0.000 |" in section
    assert "| aime2024_test | all | 1 | 0.500 / 1.000 | 0.000 / 0.000 | — |" in section
    assert "Sampling: samples=2, temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=16, seed=0." in section


def test_a_variants_summary_averages_over_its_training_seeds_and_counts_each_problem_once():
    rows = [
        {**_row("heal", "held_out", problem, correct), "train_seed": seed}
        for seed, problem, correct in [(0, "h1", 2), (1, "h1", 0), (0, "h2", 1), (1, "h2", 1)]
    ]
    rows.append(_row("teacher", "held_out", "h1", 2))  # no training seed: stored as null
    stored = to_table(rows, EVALUATION_SCHEMA).to_pylist()
    assert [r["train_seed"] for r in stored] == [0, 1, 0, 1, None]
    heal = next(r for r in summarize(stored) if r["model"] == "heal")
    assert (heal["problems"], heal["pass_at_1"]) == (2, 0.5)
