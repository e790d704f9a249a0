"""Cards that travel with a run's data and students: what they are, where they came from, how they score.

The dataset card is an HF datasets ``README.md`` (YAML metadata first) for the run's curriculum, one split per
dataset (``data/<name>-00000-of-00001.parquet``, the file names ``datasets.load_dataset("parquet",
data_dir=...)`` takes split names from). The model card is an HF model ``README.md`` for one trained student,
its evaluation results in the metadata as ``model-index`` (what the Hub shows as a results table). Both are built
with ``huggingface_hub``'s card classes, so the metadata is what the Hub parses; both are written by the run's
report step, from what the run stored, and copied by ``heal export``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import DatasetCardData, EvalResult, ModelCardData

from heal_core.config import HealConfig
from heal_core.evaluate import HELD_OUT
from heal_core.report import interval_text
from heal_core.schema import CURRICULUM_SCHEMA
from heal_core.stages import Dataset
from heal_core.summary import Summary, VariantFigures
from heal_core.train import VariantResult
from heal_core.variants import VARIANTS


def split_file(name: str) -> str:
    return f"data/{name}-00000-of-00001.parquet"


def _named(model: str, role: str) -> str:
    return f"`{model}`" if model else f"the bundled demo {role}"


def _card_text(data: DatasetCardData | ModelCardData, body: list[str]) -> str:
    """A card's README: the card data's YAML as ``huggingface_hub`` writes it, then the Markdown body."""
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"


def _lineage(summary: Summary) -> list[str]:
    stage2, gear = summary.stage2_samples, summary.gear_samples
    return [
        f"- problems: {summary.problems}, teacher samples: {summary.samples}",
        f"- never solved by the unaided teacher: {summary.teacher_ceiling}; rescued by hints or GEAR: "
        f"{summary.problems_rescued}",
        f"- Stage II (hinted) samples generated / kept: {stage2.generated} / {stage2.kept}; GEAR repairs: "
        f"{gear.generated} / {gear.kept}",
        f"- rejected for leaking the hint: {summary.hint_leaks_rejected}; rejected by PURE: {summary.pure_rejections}",
        f"- training problems dropped as copies of evaluation items: {summary.contaminated_dropped or 0}",
    ]


def dataset_card(run_id: str, summary: Summary, sizes: Mapping[str, int], cfg: HealConfig) -> str:
    """``sizes``: examples per dataset (every ``Dataset``)."""
    data = DatasetCardData(
        pretty_name=f"HEAL curriculum, run {run_id}",
        task_categories=["text-generation"],
        tags=["heal", "distillation", "math", "reasoning"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": str(name), "path": split_file(name)} for name in Dataset],
            }
        ],
    )
    lines = [
        f"# HEAL curriculum of run {run_id}",
        "",
        f"Teacher {_named(cfg.teacher.model, 'teacher')} (reasoning format "
        f"{cfg.teacher.reasoning_format}); config fingerprint `{cfg.config_hash()}`. Each split is one "
        "training set in TRL's conversational prompt-completion format, every example with the lineage of "
        "the teacher sample it came from.",
        "",
        "| split | examples | used by variants |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {sizes[name]} | {', '.join(v for v, sets in VARIANTS.items() if name in sets) or '—'} |"
        for name in Dataset
    ]
    lines += ["", "## Lineage", "", *_lineage(summary), "", "## Features", "", "| column | type |", "|---|---|"]
    lines += [f"| {field.name} | {field.type} |" for field in CURRICULUM_SCHEMA]
    return _card_text(data, lines)


def _held_out(variant: str, summary: Summary) -> VariantFigures | None:
    return summary.variants.by_variant.get(variant) if summary.variants else None


def _evaluation_lines(variant: str, summary: Summary, benchmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    """The variant's held-out intervals (the report's) and its per-benchmark rows (mean over its seeds)."""
    lines = []
    held_out = _held_out(variant, summary)
    if held_out is not None and summary.variants is not None:
        lines += [
            f"Held-out pass@1, all seeds of the variant ({summary.variants.confidence:.0%} CI over problems and "
            f"seeds): {interval_text(held_out.pass_at_1_held_out)}; hard problems: "
            f"{interval_text(held_out.pass_at_1_hard)}.",
            "",
        ]
    rows = [r for r in benchmarks if r["model"] == variant and r["group_field"] is None]
    if rows:
        lines += ["| benchmark | problems | pass@1 | pass@k (k) |", "|---|---|---|---|"]
        lines += [
            f"| {r['benchmark']} | {r['problems']} | {r['pass_at_1']:.3f} | {r['pass_at_k']:.3f} ({r['samples']}) |"
            for r in rows
        ]
    return lines


def model_card(
    run_id: str,
    result: VariantResult,
    summary: Summary,
    benchmarks: Sequence[Mapping[str, Any]],
    cfg: HealConfig,
) -> str:
    """One trained student: ``benchmarks`` are rows of EVALUATION_SUMMARY_SCHEMA (the variant's mean over its
    seeds per benchmark); the held-out intervals are the report's (``summary.variants``). ``base_model`` is
    in the metadata only for a hub or local checkpoint, not for the bundled demo student."""
    pace = cfg.pace
    title = f"{result.variant} student of HEAL run {run_id} (seed {result.seed})"
    data = ModelCardData(
        base_model=cfg.student.model or None,  # a hub or local checkpoint; not the bundled demo student
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(["heal", "distillation", "math", "reasoning", result.variant])),
        model_name=title,
        eval_results=eval_results(result.variant, summary, benchmarks) or None,
    )
    lines = [
        f"# {result.variant} student of HEAL run {run_id} (seed {result.seed})",
        "",
        f"Fine-tuned from {_named(cfg.student.model, 'student')} with TRL's SFTTrainer, stage after stage, "
        f"each stage starting from the previous stage's weights; teacher {_named(cfg.teacher.model, 'teacher')}, "
        f"config fingerprint `{cfg.config_hash()}`.",
        "",
        "## Training",
        "",
        "| stage | examples | optimizer steps |",
        "|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.examples} | {s.steps} |" for s in result.stages]
    lines += [
        "",
        f"Learning rate {pace.learning_rate} ({pace.lr_scheduler_type}, warm-up {pace.warmup_ratio:.0%}), "
        f"effective batch {pace.batch_size}, max length {pace.max_length}, budget {result.budget} steps "
        f"(every variant of the run gets the same), training seed {result.seed}.",
        "",
        "## Evaluation",
        "",
        *_evaluation_lines(result.variant, summary, benchmarks),
    ]
    lines += [
        "",
        "## Data",
        "",
        f"The run's curriculum splits {', '.join(s.name for s in result.stages)} "
        "(its dataset card says how each was made).",
    ]
    return _card_text(data, lines)


def eval_results(variant: str, summary: Summary, benchmarks: Sequence[Mapping[str, Any]]) -> list[EvalResult]:
    """The card's ``model-index``: per benchmark, pass@1 (the mean over samples and the variant's seeds) and
    pass@k; on the held-out set's hard problems, the report's pass@1 estimate. Each names the benchmark as its
    dataset (heal's names: a benchmark file is not a Hub dataset id)."""

    def result(dataset: str, metric: str, value: float, split: str | None = None) -> EvalResult:
        return EvalResult(
            task_type="text-generation",
            task_name="math reasoning",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric,
            metric_name=metric,
            metric_value=round(float(value), 4),
        )

    out = []
    for row in (r for r in benchmarks if r["model"] == variant and r["group_field"] is None):
        out += [
            result(row["benchmark"], "pass@1", row["pass_at_1"]),
            result(row["benchmark"], f"pass@{row['samples']}", row["pass_at_k"]),
        ]
    held_out = _held_out(variant, summary)
    if held_out is not None and held_out.pass_at_1_hard is not None:
        out.append(result(HELD_OUT, "pass@1", held_out.pass_at_1_hard.estimate, split="hard"))
    return out
