"""heal-train and heal-eval over variants x seeds on hand-built datasets: tiny models, a real Prefect API server.

What is checked: every (variant, seed) leaves its stage models and its result in the run's storage and its
evaluation rows; the seed reaches the trainer; a run interrupted inside one variant retrains only that
variant's unfinished stage; a variant without data is a recorded skip with its reason, through to the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from heal_core import report, storage
from heal_core import summary as summaries
from heal_core.config import HealConfig, parse_config
from heal_core.run import Run
from heal_core.schema import CURRICULUM_SCHEMA, to_table
from heal_core.stages import Dataset
from heal_core.train import MARKER

SIZES = {"stage1": 4, "stage2": 6, "stage3": 8}  # cumulative: 4 -> +2 -> +2; at batch 4, 1 + 2 + 2 = 5 steps


def _no_samples() -> dict:
    """``summary.sample_figures`` of a run without samples."""
    import duckdb

    from heal_core.schema import TRAJECTORY_SCHEMA

    empty = TRAJECTORY_SCHEMA.empty_table().select(list(summaries.REPORTED))
    return summaries.sample_figures(empty, set(), duckdb.connect())


def _examples(count: int, stage: int) -> list[dict]:
    """``count`` worked additions, distinct per stage."""
    pairs = [(stage * 10 + i, i + 2) for i in range(count)]
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
            "completion": [
                {"role": "assistant", "content": f"{a} + {b} = {a + b}.\n\nThe answer is \\boxed{{{a + b}}}."}
            ],
            "sample_id": f"p{a}-{b}|s{stage}|0",
            "problem_id": f"p{a}-{b}",
            "stage": stage,
            "verify_status": "correct",
            "teacher": "t",
            "config_hash": "h",
        }
        for a, b in pairs
    ]


def _config(tmp_path: Path, tiny_model_dirs: dict[str, Path], variants: list[str], seeds: list[int]) -> HealConfig:
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(
            json.dumps({"id": f"h{i}", "problem": f"What is {i} + 7?", "answer": str(i + 7)}) + "\n" for i in range(3)
        )
    )
    return parse_config(
        {
            "teacher": {"model": str(tiny_model_dirs["qwen2"]), "sampling": {"max_new_tokens": 8}},
            "student": {"model": str(tiny_model_dirs["llama"])},
            "pace": {
                "epochs": 1,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "max_length": 256,
                "variants": variants,
                "seeds": seeds,
            },
            "evaluation": {"uri": str(held_out), "samples": 1, "bootstrap_resamples": 200},
            "storage": {"uri": str(tmp_path / "store")},
        }
    )


def _write_datasets(layout: Run, datasets: dict[str, list[dict]]) -> None:
    for name in Dataset:
        storage.write_parquet(to_table(datasets.get(name, []), CURRICULUM_SCHEMA), layout.curriculum(name))


def _sizes(layout: Run) -> dict[str, int]:
    return {name: pq.read_metadata(layout.curriculum(name)).num_rows for name in Dataset}


def _mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*.safetensors"))}


def test_variants_by_seeds_train_evaluate_and_resume(prefect_api, tiny_model_dirs, tmp_path, monkeypatch):
    from flows.evaluate import heal_eval
    from flows.train import heal_train
    from tasks.training import TrainedModel, local_model_dir

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _config(tmp_path, tiny_model_dirs, ["heal", "rs_sft", "heal_mixed"], [0, 1])
    layout = Run.of(cfg, "variants")
    stage1, new2, new3 = _examples(4, 1), _examples(2, 2), _examples(2, 3)
    _write_datasets(
        layout,
        {
            "stage1": stage1,
            "stage2": stage1 + new2,
            "stage3": stage1 + new2 + new3,
            "mixed": stage1 + new2 + new3,
            "rs_sft": stage1,
        },
    )

    first = heal_train(layout.root, cfg)
    assert [(r["variant"], r["seed"]) for r in first] == [
        (v, s) for v in ("heal", "rs_sft", "heal_mixed") for s in (0, 1)
    ]
    assert all(r["budget"] == 5 and r["skip_reason"] is None for r in first)
    assert not any(s["resumed"] for r in first for s in r["stages"])
    assert {r["variant"]: [(s["name"], s["examples"], s["steps"]) for s in r["stages"]] for r in first} == {
        "heal": [("stage1", 4, 1), ("stage2", 6, 2), ("stage3", 8, 2)],
        "rs_sft": [("rs_sft", 4, 5)],
        "heal_mixed": [("mixed", 8, 5)],
    }
    models = Path(layout.root) / "models"
    for variant, stages in (
        ("heal", ("stage1", "stage2", "stage3")),
        ("rs_sft", ("rs_sft",)),
        ("heal_mixed", ("mixed",)),
    ):
        for seed in (0, 1):
            assert all((models / variant / f"seed-{seed}" / stage / MARKER).exists() for stage in stages)
            record = json.loads((models / variant / f"seed-{seed}" / "variant.json").read_text())
            assert record["stages"][-1]["model_dir"] == layout.model(variant, seed, stages[-1])  # stored, not cached
    seed0, seed1 = (load_file(str(models / "rs_sft" / f"seed-{s}" / "rs_sft" / "model.safetensors")) for s in (0, 1))
    assert any(not seed0[k].equal(seed1[k]) for k in seed0)  # the seed reached the trainer: other batches

    # A (variant, seed) interrupted in its last stage, retried alone (as a deployment run of its own is): only that
    # stage is trained again; a (variant, seed) outside the config is refused.
    heal1 = models / "heal" / "seed-1"
    (heal1 / "variant.json").unlink()
    (heal1 / "stage3" / MARKER).unlink()
    (local_model_dir(layout.model("heal", 1, "stage3")) / MARKER).unlink()  # and in the worker's cache
    before = _mtimes(models)
    again = {
        (r["variant"], r["seed"]): [s["resumed"] for s in r["stages"]] for r in heal_train(layout.root, cfg, "heal", 1)
    }
    assert again == {("heal", 1): [True, True, False]}
    with pytest.raises(ValueError, match="seed 7"):
        heal_train(layout.root, cfg, "heal", 7)
    after = _mtimes(models)
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed == {"heal/seed-1/stage3/model.safetensors"}
    assert (heal1 / "variant.json").exists()

    results = layout.variants(cfg)
    trained = [TrainedModel(r.variant, r.seed, r.model_dir) for r in results]
    assert heal_eval(layout.root, cfg, trained) == (2 + 6) * 3
    rows = pq.read_table(layout.evaluation).to_pylist()
    assert {(r["model"], r["train_seed"]) for r in rows} == {
        ("teacher", None),
        ("student_base", None),
        *((v, s) for v in ("heal", "rs_sft", "heal_mixed") for s in (0, 1)),
    }
    assert len({(r["model"], r["train_seed"], r["problem_id"]) for r in rows}) == len(rows)
    assert {(r["temperature"], r["seed"], r["samples"]) for r in rows} == {(0.6, 0, 1)}  # evaluation.temperature, all

    summary = summaries.variant_summary(results, rows, _sizes(layout), cfg)
    assert summary.step_budget == 5 and summary.held_out_problems == 3
    heal = summary.by_variant["heal"]
    assert heal.seeds == [0, 1] and heal.steps == 5 and heal.skip_reason is None
    figures = heal.pass_at_1_held_out
    assert figures.low <= figures.estimate <= figures.high
    assert (
        heal.delta_vs_baseline_held_out is not None and summary.by_variant["rs_sft"].delta_vs_baseline_held_out is None
    )
    assert summary.hard_problems == 3  # a random tiny teacher solves none
    assert heal.delta_vs_heal_hard is None  # each ablation is also compared with HEAL itself
    assert summary.by_variant["heal_mixed"].delta_vs_heal_hard is not None
    assert "| heal | 0, 1 | stage1 4 → stage2 6 → stage3 8 | 1 + 2 + 2 |" in "\n".join(report.variants_section(summary))


def test_a_variant_without_data_is_a_recorded_skip_shown_in_the_report(
    prefect_api, tiny_model_dirs, tmp_path, monkeypatch
):
    from flows.evaluate import heal_eval
    from flows.train import heal_train
    from tasks.training import TrainedModel

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _config(tmp_path, tiny_model_dirs, ["rs_sft", "heal_no_gear"], [0])
    layout = Run.of(cfg, "skip")
    hinted = _examples(4, 2)  # Stage I kept nothing; hints rescued four problems
    _write_datasets(layout, {"stage2": hinted, "stage3": hinted, "mixed": hinted})

    results = {r["variant"]: r for r in heal_train(layout.root, cfg)}
    assert results["rs_sft"]["skip_reason"] == "no training examples: rs_sft is empty"
    assert [(s["name"], s["steps"]) for s in results["heal_no_gear"]["stages"]] == [("stage1", 0), ("stage2", 2)]
    record = json.loads((Path(layout.root) / "models" / "rs_sft" / "seed-0" / "variant.json").read_text())
    assert record["skip_reason"] == "no training examples: rs_sft is empty"
    assert not (Path(layout.root) / "models" / "rs_sft" / "seed-0" / "rs_sft").exists()

    stored = layout.variants(cfg)
    trained = [TrainedModel(r.variant, r.seed, r.model_dir) for r in stored if r.model_dir is not None]
    assert [m.variant for m in trained] == ["heal_no_gear"]
    heal_eval(layout.root, cfg, trained)
    rows = pq.read_table(layout.evaluation).to_pylist()
    summary = summaries.summarize(_no_samples(), [], _sizes(layout), rows)
    summary.variants = summaries.variant_summary(stored, rows, _sizes(layout), cfg)
    by_variant = summary.variants.by_variant
    assert by_variant["rs_sft"].skip_reason == "no training examples: rs_sft is empty"
    assert by_variant["rs_sft"].seeds == [] and by_variant["rs_sft"].pass_at_1_held_out is None
    assert by_variant["heal_no_gear"].notes == ["stage1 is empty: keeps the student base"]
    assert by_variant["heal_no_gear"].delta_vs_baseline_held_out is None  # no baseline to compare with
    text = report.markdown("skip", layout.root, summary)
    assert "skipped: no training examples: rs_sft is empty" in text
    assert "| heal_no_gear | 0 | stage1 0 → stage2 4 | 2 |" in text and "| rs_sft | — | rs_sft 0 | 0 |" in text
    assert ("rs_sft: skipped", "no training examples: rs_sft is empty") in report.flat_summary(summary)
