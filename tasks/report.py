"""Prefect task: the run's summary as report.md, PNG plots, summary.json and Prefect artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import report, storage, truth
from heal_core.config import HealConfig
from heal_core.evaluate import summarize as summarize_evaluation
from heal_core.pace import DATASETS
from heal_core.train import VariantResult
from heal_core.variants import VARIANTS
from tasks.curriculum import read_dataset, read_samples
from tasks.generate import read_shard_problems
from tasks.layout import RunLayout
from tasks.models import resolve_model
from tasks.training import local_model


def ground_truth(layout: RunLayout, shards: int, cfg: HealConfig) -> truth.Truth | None:
    """What grading the run against a step checker needs (``heal_core/truth.py``); None when its task has none."""
    problems = [p for shard in range(shards) for p in read_shard_problems(layout, shard, cfg)]
    check = truth.checker_for(problems)
    if check is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_model(resolve_model(cfg.teacher.model, "teacher"), cfg))
    return truth.Truth({p.problem_id: p for p in problems}, check,
                       lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True))


def training_sets(layout: RunLayout, cfg: HealConfig) -> dict[str, list[dict[str, Any]]]:
    """The training examples the audit grades: each stage's own new ones (I, II, III, and II, III without PURE),
    and each configured variant's over all its stages."""
    datasets = {name: read_dataset(layout, name, cfg) for name in DATASETS}
    out = {f"stage {roman} examples{suffix}": [e for e in datasets[name] if e["stage"] == stage]
           for name, roman, stage, suffix in (("stage3", "I", 1, ""), ("stage3", "II", 2, ""), ("stage3", "III", 3, ""),
                                              ("stage3_no_pure", "II", 2, " (no PURE)"),
                                              ("stage3_no_pure", "III", 3, " (no PURE)"))}
    for variant in cfg.pace.variants:
        out[f"variant {variant}"] = list({e["sample_id"]: e for name in VARIANTS[variant] for e in datasets[name]}.values())
    return out


@task(cache_policy=NO_CACHE)
def write_report(
    layout: RunLayout, run_id: str, shards: int, sizes: dict[str, int], evaluation: list[dict[str, Any]],
    variants: Sequence[VariantResult], cfg: HealConfig,
) -> dict[str, Any]:
    """``variants``: the stored (variant, seed) results, skipped ones included."""
    options = cfg.storage.storage_options
    samples = read_samples(layout, shards, cfg).to_pylist()
    stats = [s for shard in range(shards) for s in storage.read_json(layout.shard_lineage(shard), options)["stats"]]
    summary = report.summarize(samples, stats, sizes, evaluation)

    plots = {"pass_rate_histogram": report.pass_rate_histogram(stats), "pure_ratio": report.pure_ratio_plot(samples, cfg.pure.lam)}
    repaired = next((r for r in samples if r["stage"] == 3 and r["kept"]), None) or next(
        (r for r in samples if r["stage"] == 3), None)
    graded = ground_truth(layout, shards, cfg)
    if repaired is not None:
        parent = next(r for r in samples if r["sample_id"] == repaired["parent_sample_id"])
        plots["entropy_breakpoint"] = report.entropy_trace(
            parent["entropy"], repaired["breakpoint_token"], cfg.gear.search_fraction,
            graded.wrong_tokens(parent) if graded is not None else None)
    for name, png in plots.items():
        storage.write_bytes(png, layout.plot(name), options)

    contaminated = storage.read_json(layout.contamination, options) if storage.exists(layout.contamination, options) else []
    if contaminated:
        summary["contaminated problems dropped"] = len(contaminated)
    summary["variants"] = report.variant_summary(variants, evaluation, sizes, cfg)
    audit = truth.audit(samples, training_sets(layout, cfg), graded, cfg) if graded is not None else None
    if audit is not None:
        summary["ground truth"] = audit.summary()
        create_table_artifact(key="heal-ground-truth", description=f"HEAL run {run_id}: components against the truth",
                              table=[{"check": k, "value": str(v)} for k, v in summary["ground truth"].items()])
    text = report.markdown(run_id, layout.root, summary, list(plots), contaminated, summarize_evaluation(evaluation),
                           audit.markdown() if audit is not None else ())
    storage.write_bytes(text.encode(), layout.report, options)
    storage.write_json(summary, layout.path("summary.json"), options)
    create_table_artifact(key="heal-run-summary", table=[{"metric": k, "value": v} for k, v in report.flat_summary(summary)],
                          description=f"HEAL run {run_id}")
    create_markdown_artifact(key="heal-run-report", markdown=text, description=f"HEAL run {run_id}")
    return summary
