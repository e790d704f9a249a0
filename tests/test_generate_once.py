"""Generate once, train many (issue I), end to end on the reduced config through a real Prefect API server.

Every test counts the teacher's calls: every ``generate`` call of an HF backend serving the bundled teacher (the
shards' and the teacher's evaluation), recorded on the real backend class.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rows import problems_file, reduced_config
from typer.testing import CliRunner

from heal_core.derived import trained_models
from heal_core.run import Run
from heal_core.trajectory import from_table

pytestmark = pytest.mark.slow


_config = reduced_config


@pytest.fixture(scope="module")
def first(prefect_api, tmp_path_factory):
    """A finished run on 10 problems: what the later runs re-use."""
    from flows.pipeline import heal_pipeline

    root = tmp_path_factory.mktemp("once")
    cfg = _config(root, 10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEAL_CACHE_DIR", str(root / "cache"))
        summary = heal_pipeline(cfg, "first")
    return root, cfg, summary


def _rows(store: Path, run_id: str) -> list:
    return [
        r
        for path in sorted((store / "runs" / run_id / "samples").glob("*.parquet"))
        for r in from_table(pq.read_table(path))
    ]


def test_a_run_with_ten_percent_new_problems_samples_only_those(first, teacher_calls, monkeypatch):
    from flows.pipeline import heal_pipeline

    root, _cfg, summary = first
    assert summary["generation"]["sampled"] == 10 and summary["generation"]["teacher_tokens"] > 0
    monkeypatch.setenv("HEAL_CACHE_DIR", str(root / "cache"))
    grown = _config(root, 11)
    again = heal_pipeline(grown, "grown")
    eleventh = [json.loads(line) for line in (root / "problems-11.jsonl").read_text().splitlines()][10]
    asked = [r for call in teacher_calls for r in call]
    assert asked and all(eleventh["problem"] in r.prompt for r in asked), "the teacher saw an old problem"
    assert {k: again["generation"][k] for k in ("reused", "reselected", "sampled")} == {
        "reused": 10,
        "reselected": 0,
        "sampled": 1,
    }
    old = {r.sample_id: r for r in _rows(root / "store", "first")}
    kept = [r for r in _rows(root / "store", "grown") if r.problem_id != eleventh["id"]]
    assert sorted(r.sample_id for r in kept) == sorted(old) and all(r == old[r.sample_id] for r in kept)
    report = (root / "store" / "runs" / "grown" / "report.md").read_text()
    assert "| problems re-used / re-selected / sampled | 10 / 0 / 1 |" in report


def test_a_learning_rate_change_trains_a_new_model_without_the_teacher(first, teacher_calls, monkeypatch):
    from flows.cli import app

    root, _cfg, _ = first
    monkeypatch.setenv("HEAL_CACHE_DIR", str(root / "cache"))
    result = CliRunner().invoke(
        app, ["train", "first", "--storage", str(root / "store"), "--set", "pace.learning_rate=1e-3"]
    )
    assert result.exit_code == 0, result.output
    assert teacher_calls == []
    derived = [p for p in (root / "store" / "runs").iterdir() if p.name.startswith("first.train-")]
    assert len(derived) == 1
    summary = json.loads((derived[0] / "summary.json").read_text())
    assert summary["generation"]["teacher_tokens"] == 0 and summary["generation"]["reused"] == 10
    stage = json.loads((derived[0] / "models" / "heal" / "seed-0" / "variant.json").read_text())["stages"][-1]
    assert str(derived[0]) in stage["model_dir"]  # trained here, not adopted from the first run
    assert (Path(stage["model_dir"]) / "heal_stage.json").exists()
    # the examples' Arrow files and TRL's tokenized caches beside them are gone once training is done
    assert list((root / "cache" / "datasets").iterdir()) == []
    listing = CliRunner().invoke(app, ["report", "first", "--storage", str(root / "store")])
    assert listing.exit_code == 0, listing.output
    assert derived[0].name in listing.output
    run, stored = Run.stored("first", str(root / "store"))
    rows = {(r[0], r[2]): r for r in trained_models(run, stored)}
    assert set(rows) == {(run_id, v) for run_id in ("first", derived[0].name) for v in ("heal", "rs_sft")}
    assert rows[(derived[0].name, "heal")][1] == "train: pace.learning_rate=1e-3"
    assert rows[(derived[0].name, "heal")][5] == derived[0].name  # trained by the derived run
    # its samples and its curriculum (a learning rate does not change the datasets) are the first run's,
    # referenced: none copied; and removing the derived run leaves the first run's objects as they were
    parent = root / "store" / "runs" / "first"
    assert not list((derived[0] / "samples").glob("*.parquet"))
    assert not list((derived[0] / "curriculum").glob("*.parquet"))
    run_d, _ = Run.stored(derived[0].name, str(root / "store"))
    assert run_d.curriculum("stage3") == str(parent / "curriculum" / "stage3.parquet")
    assert summary["pace_examples"] == json.loads((parent / "summary.json").read_text())["pace_examples"]
    before = {p.name: p.read_bytes() for p in sorted((parent / "samples").iterdir())}
    (derived[0] / "samples" / "shard-00001.json").unlink()  # as if interrupted while it recorded the parent's shards
    resumed = CliRunner().invoke(app, ["resume", derived[0].name, "--storage", str(root / "store")])
    assert (
        resumed.exit_code != 0
        and "run the same heal train or heal eval again" in f"{resumed.output}{resumed.exception}"
    )
    shutil.rmtree(derived[0])
    assert {p.name: p.read_bytes() for p in sorted((parent / "samples").iterdir())} == before
    listing = CliRunner().invoke(app, ["report", "first", "--storage", str(root / "store")])
    assert listing.exit_code == 0, listing.output
    assert derived[0].name not in listing.output  # its record stays with the parent; the listing passes it by


def test_eval_adds_a_benchmark_asking_the_teacher_only_about_it_and_retraining_nothing(
    first, teacher_calls, monkeypatch
):
    from flows.cli import app

    root, _, _ = first
    monkeypatch.setenv("HEAL_CACHE_DIR", str(root / "cache"))
    extra = [json.loads(line) for line in problems_file(root / "all-eval.jsonl", "eval", 5).read_text().splitlines()][
        3:
    ]
    (root / "extra.jsonl").write_text("".join(json.dumps(p) + "\n" for p in extra))
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "first",
            "--storage",
            str(root / "store"),
            "--set",
            f"evaluation.benchmarks=[{{uri: {root / 'extra.jsonl'}}}]",
        ],
    )
    assert result.exit_code == 0, result.output
    asked = [r for call in teacher_calls for r in call]
    assert asked and all(any(p["problem"] in r.prompt for p in extra) for r in asked)  # the held-out set: stored
    derived = next(p for p in (root / "store" / "runs").iterdir() if p.name.startswith("first.eval-"))
    assert not list(derived.glob("models/*/seed-*/*/heal_stage.json"))  # every model adopted, none trained
    results = pq.read_table(derived / "eval" / "results.parquet").to_pylist()
    assert {(r["model"], r["benchmark"]) for r in results} == {
        (m, b) for m in ("teacher", "student_base", "heal", "rs_sft") for b in ("held_out", "extra")
    }
    held_out = pq.read_table(root / "store" / "runs" / "first" / "eval" / "results.parquet").to_pylist()
    key = ("model", "train_seed", "problem_id", "pass_at_1")
    assert sorted(tuple(r[k] for k in key) for r in results if r["benchmark"] == "held_out") == sorted(
        tuple(r[k] for k in key) for r in held_out
    )


def test_a_new_lambda_makes_no_sampling_call_and_re_judges_where_r_crosses_it(first, teacher_calls, monkeypatch):
    from flows.pipeline import heal_pipeline

    root, _cfg, _ = first
    monkeypatch.setenv("HEAL_CACHE_DIR", str(root / "cache"))
    before = {r.sample_id: r for r in _rows(root / "store", "first") if r.pure is not None and r.pure.ratio is not None}
    ratios = sorted({r.pure.ratio for r in before.values()})
    # about half of the scored rows' R lie above it, and none on it: a stored R is float32, the judged one float64
    lam = (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
    summary = heal_pipeline(_config(root, 10, f"pure.lam={lam}"), "lam")
    assert teacher_calls == []  # PURE may score rows it never scored; the teacher samples nothing
    assert summary["generation"]["reselected"] == 10 and summary["generation"]["teacher_tokens"] == 0
    crossed = 0
    for row in _rows(root / "store", "lam"):
        if row.pure is not None and row.sample_id in before and row.pure.ratio is not None:
            assert (row.pure.verdict == "reject_ratio") == (row.pure.ratio > lam)
            crossed += row.pure.verdict != before[row.sample_id].pure.verdict
    assert crossed > 0


def test_train_on_a_run_whose_generation_did_not_finish_names_the_shards_and_starts_nothing(first):
    from flows.cli import app

    root, _, _ = first
    runs = root / "store" / "runs"
    shutil.copytree(runs / "first", runs / "half")
    (runs / "half" / "samples" / "shard-00001.json").unlink()
    result = CliRunner().invoke(app, ["train", "half", "--storage", str(root / "store"), "--set", "pace.epochs=2"])
    assert result.exit_code == 2, result.output
    assert "generation has not finished (shards without samples: 1)" in result.output
    assert "heal resume half" in result.output
    assert not [p for p in runs.iterdir() if p.name.startswith("half.")]


def test_train_refuses_a_setting_that_changes_the_data(first):
    from flows.cli import app

    root, _, _ = first
    result = CliRunner().invoke(app, ["train", "first", "--storage", str(root / "store"), "--set", "pure.lam=0.5"])
    assert result.exit_code == 2 and "heal train changes only pace.*, student.*" in result.output
