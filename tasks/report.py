"""Prefect task: the run's summary as report.md, PNG plots, summary.json and Prefect artifacts."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import cards, duck, plots, report, storage, truth
from heal_core import summary as summaries
from heal_core.config import HealConfig
from heal_core.run import Run
from heal_core.schema import CURRICULUM_SCHEMA, EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, TRAJECTORY_SCHEMA
from heal_core.stages import Dataset, Stage
from heal_core.trajectory import Trajectory, from_table
from heal_core.variants import VARIANTS
from tasks.curriculum import read_samples
from tasks.generate import read_shard_problems
from tasks.models import resolve_model
from tasks.training import local_model


def ground_truth(run: Run, shards: int, cfg: HealConfig) -> truth.Truth | None:
    """What grading the run against a step checker needs (``heal_core/truth.py``); None when its task has none."""
    problems = [p for shard in range(shards) for p in read_shard_problems(run, shard)]
    check = truth.checker_for(problems)
    if check is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_model(resolve_model(cfg.teacher.model, "teacher"), cfg))
    return truth.Truth(
        {p.problem_id: p for p in problems}, check, lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)
    )


def training_sets(run: Run, cfg: HealConfig) -> dict[str, Iterator[dict[str, Any]]]:
    """The training examples the audit grades (named as ``heal_core.truth.TruthAudit`` says), each set a stream of
    its examples' ``problem_id`` and ``completion``: each stage's own new ones (I, II, III, and II, III without
    PURE), and each configured variant's over all its stages (an example in two of its datasets once)."""

    def examples(names: Sequence[str], stage: Stage | None = None) -> Iterator[dict[str, Any]]:
        uris = [run.curriculum(name) for name in dict.fromkeys(names)]
        where = None if stage is None else ds.field("stage") == int(stage)
        seen: set[str] = set()  # a variant's sample ids, ~50 bytes an example: its datasets overlap
        for batch in storage.scan(
            uris, CURRICULUM_SCHEMA, ["sample_id", "problem_id", "completion"], run.options, where
        ):
            for example in batch.to_pylist():
                if example["sample_id"] not in seen:
                    if len(uris) > 1:
                        seen.add(example["sample_id"])
                    yield example

    graded = [(Dataset.STAGE3, stage, "") for stage in Stage] + [
        (Dataset.STAGE3_NO_PURE, stage, "_no_pure") for stage in (Stage.HINT, Stage.REPAIR)
    ]
    out = {f"{stage.key}{suffix}": examples([name], stage) for name, stage, suffix in graded}
    for variant in cfg.pace.variants:
        out[variant] = examples(VARIANTS[variant])
    return out


def trajectory(run: Run, shards: int, sample_id: str) -> Trajectory:
    """One trajectory, whole: the shards are searched one at a time on their ``sample_id`` column, and the shard
    that holds it is scanned for that row alone."""
    for shard in range(shards):
        ids = storage.read_parquet(run.shard_samples(shard), TRAJECTORY_SCHEMA, run.options, ["sample_id"])
        if ids.column("sample_id").index(sample_id).as_py() >= 0:
            found = storage.scan(
                [run.shard_samples(shard)],
                TRAJECTORY_SCHEMA,
                TRAJECTORY_SCHEMA.names,
                run.options,
                ds.field("sample_id") == sample_id,
            ).read_all()
            return Trajectory.from_record(found.to_pylist()[0])
    raise KeyError(f"{run.root}: no trajectory {sample_id}")


def shard_rows(run: Run, shards: int) -> Iterator[list[Trajectory]]:
    """The run's trajectories a shard at a time, whole (the audit grades their texts and token ids)."""
    for shard in range(shards):
        yield from_table(storage.read_parquet(run.shard_samples(shard), TRAJECTORY_SCHEMA, run.options))


def repaired(run: Run, shards: int) -> dict[str, Any] | None:
    """The GEAR repair whose parent the breakpoint plot shows: the first kept one, or the first one when none was
    kept; None without repairs. Stage III rows stream past on three columns."""
    first = None
    columns = ["kept", "parent_sample_id", "breakpoint_token"]
    for batch in read_samples(run, shards, columns, ds.field("stage") == int(Stage.REPAIR)):
        for row in batch.to_pylist():
            if row["kept"]:
                return row
            first = first or row
    return first


def draw_plots(
    run: Run,
    shards: int,
    figures: dict[str, Any],
    stats: list[dict[str, Any]],
    graded: truth.Truth | None,
    cfg: HealConfig,
) -> dict[str, bytes]:
    """Write the run's PNGs; return them by name: the pass rates, PURE's ratios, the training curves and the
    breakpoint. The breakpoint plot shows the first kept GEAR repair's parent
    (or the first repair's, when none was kept), with the truth's wrong tokens where the task has a checker."""
    pngs = {
        "pass_rate_histogram": plots.pass_rate_histogram(stats),
        "pure_ratio": plots.pure_ratio_plot(figures["pure_ratios"], cfg.pure.lam),
    }
    repair = repaired(run, shards)
    if repair is not None:
        parent = trajectory(run, shards, repair["parent_sample_id"])
        pngs["entropy_breakpoint"] = plots.entropy_trace(
            parent.entropy,
            repair["breakpoint_token"],
            cfg.gear.search_fraction,
            graded.wrong_tokens(parent) if graded is not None else None,
        )
    curves = plots.training_curves(run.variants(cfg))
    if curves is not None:
        pngs["training_curves"] = curves
    for name, png in pngs.items():
        storage.write_bytes(png, run.plot(name), run.options)
    return pngs


def gear_examples(run: Run) -> int:
    """GEAR's examples in PACE's stage3 dataset: its kept repairs that deduplication left new."""
    where = ds.field("stage") == int(Stage.REPAIR)
    found = storage.scan([run.curriculum(Dataset.STAGE3)], CURRICULUM_SCHEMA, ["stage"], run.options, where)
    return sum(batch.num_rows for batch in found)


def write_cards(
    run: Run, summary: summaries.Summary, sizes: dict[str, int], benchmarks: list[dict[str, Any]], cfg: HealConfig
) -> None:
    """The curriculum's dataset card and every trained student's model card (``heal_core/cards.py``)."""
    storage.write_bytes(cards.dataset_card(run.run_id, summary, sizes, cfg).encode(), run.dataset_card, run.options)
    for result in run.variants(cfg):
        if result.model_dir is not None:
            card = cards.model_card(run.run_id, result, summary, benchmarks, cfg)
            storage.write_bytes(card.encode(), run.model_card(result.variant, result.seed), run.options)


def export_run(run: Run, dest: Path, variant: str, seed: int, cfg: HealConfig) -> None:
    """``dest/dataset``: the curriculum, one split per dataset, and its card; ``dest/model``: the (variant, seed)'s
    final model, without training checkpoints, and its card. ``dest`` must not exist yet: nothing is overwritten."""
    result = run.variant(variant, seed)
    if result is None or result.model_dir is None:
        raise ValueError(
            f"{run.root}: no trained model of variant {variant}, seed {seed}"
            + (f" ({result.skip_reason})" if result is not None else "")
        )
    if not storage.exists(run.dataset_card, run.options):
        raise ValueError(f"{run.root}: no dataset card; the run's report step has not finished (heal resume)")
    if dest.exists():
        raise FileExistsError(f"{dest} exists: export writes a new folder")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for name in Dataset:
        (staging / "dataset" / cards.split_file(name)).parent.mkdir(parents=True, exist_ok=True)
        storage.get_file(run.curriculum(name), staging / "dataset" / cards.split_file(name), run.options)
    (staging / "dataset" / "README.md").write_bytes(storage.read_bytes(run.dataset_card, run.options))
    shutil.copytree(local_model(result.model_dir, cfg), staging / "model", ignore=shutil.ignore_patterns("checkpoints"))
    (staging / "model" / "README.md").write_bytes(storage.read_bytes(run.model_card(variant, seed), run.options))
    staging.rename(dest)


@task(cache_policy=NO_CACHE)
def write_report(run: Run, shards: int, sizes: dict[str, int], cfg: HealConfig) -> dict[str, Any]:
    """The run's summary from what its steps stored: samples and lineage, the (variant, seed) results (skipped
    ones included) and the evaluation, whose per-benchmark table is ``eval/summary.parquet`` as it stands."""
    graded = ground_truth(run, shards, cfg)
    records = run.shard_records(shards)
    stats = [s for record in records for s in record["stats"]]
    evaluation = storage.read_parquet(run.evaluation, EVALUATION_SCHEMA, run.options).to_pylist()
    benchmarks = storage.read_parquet(run.evaluation_summary, EVALUATION_SUMMARY_SCHEMA, run.options).to_pylist()
    storage.cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="report-", dir=storage.cache_dir()) as work:
        con = duck.connect(Path(work), cfg.orchestration.memory_limit)
        figures = summaries.sample_figures(
            read_samples(run, shards, summaries.REPORTED), {s["problem_id"] for s in stats if s["correct"] == 0}, con
        )
        con.close()
    summary = summaries.summarize(figures, stats, sizes, evaluation)
    summary.gear_samples.new_examples = gear_examples(run)
    summary.generation = summaries.generation_sources(records)
    pngs = draw_plots(run, shards, figures, stats, graded, cfg)
    contaminated = (
        storage.read_json(run.contamination, run.options) if storage.exists(run.contamination, run.options) else []
    )
    if contaminated:
        summary.contaminated_dropped = len(contaminated)
    summary.variants = summaries.variant_summary(run.variants(cfg), evaluation, sizes, cfg)
    audit = truth.audit(shard_rows(run, shards), training_sets(run, cfg), graded, cfg) if graded is not None else None
    if audit is not None:
        summary.ground_truth = audit.summary()
        create_table_artifact(
            key="heal-ground-truth",
            description=f"HEAL run {run.run_id}: components against the truth",
            table=[{"check": k, "value": v} for k, v in truth.figures(summary.ground_truth)],
        )

    def page(images: dict[str, str]) -> str:
        return report.markdown(
            run.run_id,
            run.root,
            summary,
            images,
            contaminated,
            benchmarks,
            audit.markdown() if audit is not None else (),
        )

    storage.write_bytes(page(plots.plot_files(list(pngs))).encode(), run.report, run.options)
    write_cards(run, summary, sizes, benchmarks, cfg)
    written = summary.to_json()
    storage.write_json(written, run.summary, run.options)
    create_table_artifact(
        key="heal-run-summary",
        table=[{"metric": k, "value": v} for k, v in report.flat_summary(summary)],
        description=f"HEAL run {run.run_id}",
    )
    create_markdown_artifact(
        key="heal-run-report", markdown=page(plots.inline_plots(pngs)), description=f"HEAL run {run.run_id}"
    )
    return written
