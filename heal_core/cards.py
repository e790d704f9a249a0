"""Cards that travel with a run's data and students: what they are, where they came from, how they score.

The dataset card is an HF datasets ``README.md`` (YAML metadata first) for the run's curriculum, one split per
dataset (``data/<name>-00000-of-00001.parquet``, the file names ``datasets.load_dataset("parquet",
data_dir=...)`` takes split names from). The model card is an HF model ``README.md`` for one trained student.
Both are written by the run's report step, from what the run stored, and copied by ``heal export``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from heal_core.config import HealConfig
from heal_core.report import interval_text
from heal_core.schema import CURRICULUM_SCHEMA
from heal_core.stages import Dataset
from heal_core.train import VariantResult
from heal_core.variants import VARIANTS


def split_file(name: str) -> str:
    return f"data/{name}-00000-of-00001.parquet"


def _named(model: str, role: str) -> str:
    return f"`{model}`" if model else f"the bundled demo {role}"


def _front_matter(metadata: Mapping[str, Any]) -> list[str]:
    return ["---", yaml.safe_dump(dict(metadata), sort_keys=False).rstrip(), "---", ""]


def _lineage(summary: Mapping[str, Any]) -> list[str]:
    stage2, gear = summary["stage2_samples"], summary["gear_samples"]
    return [
        f"- problems: {summary['problems']}, teacher samples: {summary['samples']}",
        f"- never solved by the unaided teacher: {summary['teacher_ceiling']}; rescued by hints or GEAR: "
        f"{summary['problems_rescued']}",
        f"- Stage II (hinted) samples generated / kept: {stage2['generated']} / {stage2['kept']}; GEAR repairs: "
        f"{gear['generated']} / {gear['kept']}",
        f"- rejected for leaking the hint: {summary['hint_leaks_rejected']}; rejected by PURE: "
        f"{summary['pure_rejections']}",
        f"- training problems dropped as copies of evaluation items: {summary.get('contaminated_dropped', 0)}",
    ]


def dataset_card(run_id: str, summary: Mapping[str, Any], sizes: Mapping[str, int], cfg: HealConfig) -> str:
    """``sizes``: examples per dataset (every ``Dataset``)."""
    metadata = {
        "pretty_name": f"HEAL curriculum, run {run_id}",
        "task_categories": ["text-generation"],
        "tags": ["heal", "distillation", "math", "reasoning"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": str(name), "path": split_file(name)} for name in Dataset],
            }
        ],
    }
    lines = [
        *_front_matter(metadata),
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
    return "\n".join(lines) + "\n"


def _evaluation_lines(variant: str, summary: Mapping[str, Any], benchmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    """The variant's held-out intervals (the report's) and its per-benchmark rows (mean over its seeds)."""
    lines = []
    held_out = ((summary.get("variants") or {}).get("by_variant") or {}).get(variant)
    if held_out is not None:
        confidence = summary["variants"]["confidence"]
        lines += [
            f"Held-out pass@1, all seeds of the variant ({confidence:.0%} CI over problems and seeds): "
            f"{interval_text(held_out['pass_at_1_held_out'])}; "
            f"hard problems: {interval_text(held_out['pass_at_1_hard'])}.",
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
    summary: Mapping[str, Any],
    benchmarks: Sequence[Mapping[str, Any]],
    cfg: HealConfig,
) -> str:
    """One trained student: ``benchmarks`` are rows of EVALUATION_SUMMARY_SCHEMA (the variant's mean over its
    seeds per benchmark); the held-out intervals are the report's (``summary["variants"]``). ``base_model`` is
    in the metadata only for a hub or local checkpoint, not for the bundled demo student."""
    pace = cfg.pace
    metadata = {
        **({"base_model": cfg.student.model} if cfg.student.model else {}),
        "library_name": "transformers",
        "tags": list(dict.fromkeys(["heal", "distillation", "math", "reasoning", result.variant])),
    }
    lines = [
        *_front_matter(metadata),
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
    return "\n".join(lines) + "\n"
