"""Prefect task: the run's summary as report.md, PNG plots, summary.json and Prefect artifacts."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import report, storage
from heal_core.evaluate import summarize as summarize_evaluation
from heal_core.config import HealConfig
from tasks.curriculum import read_samples
from tasks.layout import RunLayout


@task(cache_policy=NO_CACHE)
def write_report(
    layout: RunLayout, run_id: str, shards: int, sizes: dict[str, int], evaluation: list[dict[str, Any]], cfg: HealConfig
) -> dict[str, Any]:
    options = cfg.storage.storage_options
    samples = read_samples(layout, shards, cfg).to_pylist()
    stats = [s for shard in range(shards) for s in storage.read_json(layout.shard_lineage(shard), options)["stats"]]
    summary = report.summarize(samples, stats, sizes, evaluation)

    plots = {"pass_rate_histogram": report.pass_rate_histogram(stats), "pure_ratio": report.pure_ratio_plot(samples)}
    repaired = next((r for r in samples if r["stage"] == 3 and r["kept"]), None) or next(
        (r for r in samples if r["stage"] == 3), None)
    if repaired is not None:
        parent = next(r for r in samples if r["sample_id"] == repaired["parent_sample_id"])
        plots["entropy_breakpoint"] = report.entropy_trace(parent["entropy"], repaired["breakpoint_token"])
    for name, png in plots.items():
        storage.write_bytes(png, layout.plot(name), options)

    contaminated = storage.read_json(layout.contamination, options) if storage.exists(layout.contamination, options) else []
    if contaminated:
        summary["contaminated problems dropped"] = len(contaminated)
    text = report.markdown(run_id, layout.root, summary, list(plots), contaminated, summarize_evaluation(evaluation))
    storage.write_bytes(text.encode(), layout.report, options)
    storage.write_json(summary, layout.path("summary.json"), options)
    create_table_artifact(key="heal-run-summary", table=[{"metric": k, "value": str(v)} for k, v in summary.items()],
                          description=f"HEAL run {run_id}")
    create_markdown_artifact(key="heal-run-report", markdown=text, description=f"HEAL run {run_id}")
    return summary
