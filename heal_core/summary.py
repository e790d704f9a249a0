"""A run's summary: what the teacher could not do, what hints and repair rescued, what the students learned.

``Summary`` is ``summary.json``'s model: the report, the cards, ``heal compare`` and the CLI read it, typed, and
the report step writes it; the arithmetic that fills it from the run's samples, lineage records and evaluation
is here too (``heal_core/report.py`` renders it, ``heal_core/plots.py`` draws it). A summary written by an older
heal reads as one: a section it did not have is None.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from heal_core.config import HealConfig
from heal_core.evaluate import HELD_OUT
from heal_core.sampling import teacher_ceiling
from heal_core.stages import Dataset
from heal_core.stats import Interval, bootstrap, pass_at_1_matrix
from heal_core.train import VariantResult
from heal_core.variants import BASELINE, step_budget

# ---- the model ---------------------------------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer heal's figures survive a read and a rewrite


class Counts(_Part):
    generated: int
    kept: int


class Repairs(Counts):
    """GEAR's repairs, from drawn to what the curriculum gained (None in a summary from before heal 0.2)."""

    verified: int | None = None
    new_examples: int | None = None  # kept repairs left in PACE's stage3 dataset after deduplication
    rescued_beyond_hints: int | None = None  # problems with a kept repair and no kept Stage II sample


class Judged(_Part):
    judged: int  # the verifier's rejections the judge saw
    accepted: int  # of those, the ones it judged equivalent


class Sources(_Part):
    """Where the run's problems came from (``generation_sources``)."""

    reused: int
    reselected: int
    sampled: int
    teacher_tokens: int


class Figures(_Part):
    """An estimate with its bootstrap interval, rounded to 4 places."""

    estimate: float
    low: float
    high: float

    @classmethod
    def of(cls, interval: Interval | None) -> Figures | None:
        return (
            None
            if interval is None
            else cls(**{k: round(getattr(interval, k), 4) for k in ("estimate", "low", "high")})
        )


class StageFigures(_Part):
    dataset: str
    examples: int
    steps: int


class VariantFigures(_Part):
    """One variant over its seeds: how it was trained, and pass@1 on the held-out set against the baseline."""

    seeds: list[int]
    stages: list[StageFigures]
    steps: int
    pass_at_1_held_out: Figures | None
    pass_at_1_hard: Figures | None
    delta_vs_baseline_held_out: Figures | None
    delta_vs_baseline_hard: Figures | None
    delta_vs_heal_hard: Figures | None = None
    skip_reason: str | None
    notes: list[str] = []


class Variants(_Part):
    """The variants compared on the held-out set (``variant_summary``)."""

    step_budget: int
    epochs: float
    confidence: float
    bootstrap_resamples: int
    baseline: str
    held_out_problems: int
    hard_problems: int
    hard_threshold: float  # hard: the teacher's held-out pass@1 below this (hints.pass_rate_below)
    by_variant: dict[str, VariantFigures]


class Summary(_Part):
    """``summary.json``. ``teacher_ceiling``: problems the unaided teacher never solved; ``problems_rescued``:
    those of them that Stage II or III kept a sample of; ``*_samples``: generated and kept; ``judge`` (only with
    judge.enabled): the verifier's rejections it judged and accepted; ``ground_truth``: the step checker's audit
    (``heal_core/truth.py``'s figures), where the task has one."""

    problems: int
    samples: int
    teacher_ceiling: int
    hard_problems: int
    extremely_hard_problems: int
    stage2_samples: Counts
    gear_samples: Repairs
    hint_leaks_rejected: int
    pure_rejections: int
    problems_rescued: int
    judge: Judged | None = None
    pace_examples: dict[str, int]
    held_out_pass_at_1: dict[str, float]
    generation: Sources | None = None
    contaminated_dropped: int | None = None
    variants: Variants | None = None
    ground_truth: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """As ``summary.json`` holds it: a section the run does not have (an optional field, None) is left out,
        not null."""
        absent = {name for name, field in type(self).model_fields.items() if field.default is None}
        return {k: v for k, v in self.model_dump(mode="json").items() if not (k in absent and v is None)}


# ---- the arithmetic ------------------------------------------------------------------------------------------------


REPORTED = ("problem_id", "stage", "kept", "verified", "leaked_hint", "pure_ratio", "pure_verdict", "judge_verdict")
"""What the headline figures and the PURE plot read of every trajectory: not its text, token ids or entropy trace."""


def sample_figures(
    samples: pa.RecordBatchReader | pa.Table, zero: Collection[str], con: duckdb.DuckDBPyConnection
) -> dict[str, Any]:
    """The run's per-sample counts, aggregated by DuckDB as ``samples`` (``REPORTED`` columns) stream past, with
    PURE's ratios (float32, for ``pure_ratio_plot``): memory holds counts and one float per PURE-scored row, not the
    rows. ``zero``: the problems the unaided teacher never solved."""
    unsolved = pa.table({"problem_id": pa.array(sorted(zero), pa.string())})  # noqa: F841 (read by name)
    # One pass over the stream (a reader is read once), per problem; then the run's totals over the problems.
    per_problem = """SELECT problem_id, count(*) AS n,
                       count(*) FILTER (stage = 2) AS hinted, count(*) FILTER (stage = 2 AND kept) AS hinted_kept,
                       count(*) FILTER (stage = 3) AS repairs, count(*) FILTER (stage = 3 AND kept) AS repairs_kept,
                       count(*) FILTER (stage = 3 AND verified) AS repairs_verified,
                       count(*) FILTER (coalesce(leaked_hint, false) AND verified) AS leaks,
                       count(*) FILTER (coalesce(pure_verdict, 'keep') <> 'keep') AS pure_rejected,
                       count(*) FILTER (judge_verdict IS NOT NULL) AS judged,
                       count(*) FILTER (judge_verdict = 'equivalent') AS accepted,
                       bool_or(stage > 1 AND kept) AS rescued,
                       list(pure_ratio) FILTER (pure_ratio IS NOT NULL AND pure_verdict = 'keep') AS ratios_kept,
                       list(pure_ratio) FILTER (pure_ratio IS NOT NULL AND pure_verdict <> 'keep') AS ratios_rejected
                     FROM samples GROUP BY problem_id"""
    row = con.sql(f"""SELECT sum(n), sum(hinted), sum(hinted_kept), sum(repairs), sum(repairs_kept),
                       sum(repairs_verified), count(*) FILTER (repairs_kept > 0 AND hinted_kept = 0),
                       sum(leaks), sum(pure_rejected), sum(judged), sum(accepted),
                       count(*) FILTER (rescued AND problem_id IN (SELECT problem_id FROM unsolved)),
                       flatten(list(ratios_kept)), flatten(list(ratios_rejected))
                     FROM ({per_problem})""").fetchall()[0]
    row = [int(v or 0) for v in row[:12]] + list(row[12:])
    return {
        "samples": row[0],
        "stage2_samples": {"generated": row[1], "kept": row[2]},
        "gear_samples": {"generated": row[3], "kept": row[4], "verified": row[5], "rescued_beyond_hints": row[6]},
        "hint_leaks_rejected": row[7],
        "pure_rejections": row[8],
        "judged": row[9],
        "accepted": row[10],
        "problems_rescued": row[11],
        "pure_ratios": {
            "kept": np.asarray(row[12] or [], np.float32),
            "rejected": np.asarray(row[13] or [], np.float32),
        },
    }


def summarize(
    figures: Mapping[str, Any],
    stats: Sequence[dict[str, Any]],
    dataset_sizes: dict[str, int],
    evaluation: Sequence[dict[str, Any]],
) -> Summary:
    """The headline figures; ``figures`` are ``sample_figures``'s, ``stats`` per-problem dicts with ``correct``
    and ``bucket``. The sections only a whole run has (sources, variants, ground truth) are the caller's."""
    return Summary(
        problems=len(stats),
        samples=figures["samples"],
        teacher_ceiling=teacher_ceiling(s["correct"] for s in stats),
        hard_problems=sum(s["bucket"] == "hard" for s in stats),
        extremely_hard_problems=sum(s["bucket"] == "extremely_hard" for s in stats),
        **{
            key: figures[key]
            for key in ("stage2_samples", "gear_samples", "hint_leaks_rejected", "pure_rejections", "problems_rescued")
        },
        judge=Judged(judged=figures["judged"], accepted=figures["accepted"]) if figures["judged"] else None,
        pace_examples={name: dataset_sizes[name] for name in _PACE_SIZES if name in dataset_sizes},
        held_out_pass_at_1={model: round(acc, 4) for model, acc in accuracy(evaluation).items()},
    )


_PACE_SIZES = (Dataset.STAGE1, Dataset.STAGE2, Dataset.STAGE3, Dataset.RS_SFT)  # the headline's dataset sizes


def generation_sources(records: Sequence[dict[str, Any]]) -> Sources:
    """Where the run's problems came from, over its shards' lineage records: the generation store as stored
    (re-used), the store replayed under a new selection (re-selected), or the teacher (sampled); and the tokens
    the teacher drew for the run (``heal_core/generation_store.py``)."""
    return Sources(
        **{key: sum(r["generation"][key] for r in records) for key in ("reused", "reselected", "sampled")},
        teacher_tokens=sum(r["generation"]["teacher"]["tokens"] for r in records),
    )


def accuracy(evaluation: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean pass@1 per model label on the held-out set (benchmarks are compared in their own report section)."""
    per_model: dict[str, list[float]] = defaultdict(list)
    for row in evaluation:
        if row["benchmark"] == HELD_OUT:
            per_model[row["model"]].append(row["pass_at_1"])
    return {model: float(np.mean(values)) for model, values in per_model.items()}


def _stage_notes(stages: Sequence[StageFigures]) -> list[str]:
    """An empty stage inside a trained variant: which model the variant kept instead."""
    notes, previous = [], "the student base"
    for stage in stages:
        if stage.steps:
            previous = f"{stage.dataset}'s model"
        else:
            notes.append(f"{stage.dataset} is empty: keeps {previous}")
    return notes


def _trained(variant: str, results: Sequence[VariantResult]) -> dict[str, Any]:
    """A variant's training as the summary states it: its seeds, its first seed's stages, why it was skipped."""
    mine = sorted((r for r in results if r.variant == variant), key=lambda r: r.seed)
    stages = [
        StageFigures(dataset=s.name, examples=s.examples, steps=s.steps) for s in (mine[0].stages if mine else ())
    ]
    skip = mine[0].skip_reason if mine else "not trained: no result in the run's storage"
    return {
        "seeds": [r.seed for r in mine if r.skip_reason is None],
        "stages": stages,
        "steps": sum(s.steps for s in stages),
        "skip_reason": skip,
        "notes": [] if skip else _stage_notes(stages),
    }


def variant_summary(
    results: Sequence[VariantResult],
    evaluation: Sequence[dict[str, Any]],
    dataset_sizes: dict[str, int],
    cfg: HealConfig,
) -> Variants:
    """The variants compared on the held-out set: per variant its seeds, stages (examples, steps), pass@1 with a
    bootstrap interval over problems and seeds (``heal_core/stats.py``), and its difference from rs_sft, on all
    held-out problems and on the hard ones (teacher pass@1 below ``hints.pass_rate_below``, Stage II's rule).
    ``results`` are the stored (variant, seed) results, skipped ones with their reason."""
    held_out = [r for r in evaluation if r["benchmark"] == HELD_OUT]
    problems = sorted({r["problem_id"] for r in held_out})
    teacher = {r["problem_id"]: r["pass_at_1"] for r in held_out if r["model"] == "teacher"}
    threshold = cfg.hints.pass_rate_below
    hard = [i for i, p in enumerate(problems) if p in teacher and teacher[p] < threshold]
    scores = {}
    for variant in cfg.pace.variants:
        rows = [r for r in held_out if r["model"] == variant]
        if rows:
            scores[variant] = pass_at_1_matrix(rows, problems)
    settings = {
        "baseline": BASELINE,
        "resamples": cfg.evaluation.bootstrap_resamples,
        "confidence": cfg.evaluation.confidence,
    }
    whole = bootstrap(scores, **settings) if scores else ({}, {})
    harder = bootstrap({v: x[:, hard] for v, x in scores.items()}, **settings) if scores and hard else ({}, {})
    # Each ablation against HEAL itself: what leaving one ingredient out costs (or gains), on the hard problems.
    against_heal = (
        bootstrap({v: x[:, hard] for v, x in scores.items()}, **{**settings, "baseline": "heal"})[1]
        if "heal" in scores and hard
        else {}
    )

    by_variant = {
        variant: VariantFigures(
            **_trained(variant, results),
            pass_at_1_held_out=Figures.of(whole[0].get(variant)),
            pass_at_1_hard=Figures.of(harder[0].get(variant)),
            delta_vs_baseline_held_out=Figures.of(whole[1].get(variant)),
            delta_vs_baseline_hard=Figures.of(harder[1].get(variant)),
            delta_vs_heal_hard=Figures.of(against_heal.get(variant)),
        )
        for variant in cfg.pace.variants
    }
    return Variants(
        step_budget=step_budget(dataset_sizes, cfg.pace),
        epochs=cfg.pace.epochs,
        confidence=cfg.evaluation.confidence,
        bootstrap_resamples=cfg.evaluation.bootstrap_resamples,
        baseline=BASELINE,
        held_out_problems=len(problems),
        hard_problems=len(hard),
        hard_threshold=threshold,
        by_variant=by_variant,
    )
