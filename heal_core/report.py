"""A run's summary rendered: the report's Markdown, and the (label, value) rows the CLI, the run's artifact and
``heal compare`` show. Every label is defined once, here; the figures are ``heal_core/summary.py``'s ``Summary``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from heal_core import truth
from heal_core.schema import SAMPLING_COLUMNS
from heal_core.summary import Figures, Repairs, Summary, VariantFigures, Variants

# Report columns: the models a HEAL run compares, in reading order; any other label follows as it is.
_MODEL_NAMES = {
    "teacher": "teacher",
    "student_base": "student base",
    "heal": "HEAL student",
    "rs_sft": "RS-SFT student",
    "keep_all": "keep-all student",
    "heal_no_pure": "HEAL without PURE",
    "heal_no_gear": "HEAL without GEAR",
    "heal_mixed": "HEAL mixed (no curriculum)",
}


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _repairs(gear: Repairs) -> str:
    verified = "—" if gear.verified is None else gear.verified
    return f"{gear.generated} / {verified} / {gear.kept}"


_HEADLINE: list[tuple[str, Callable[[Summary], str | None]]] = [
    ("problems", lambda s: str(s.problems)),
    ("samples", lambda s: str(s.samples)),
    ("teacher ceiling (0 correct)", lambda s: f"{s.teacher_ceiling} ({s.teacher_ceiling / max(1, s.problems):.0%})"),
    ("hard problems", lambda s: str(s.hard_problems)),
    ("extremely hard problems", lambda s: str(s.extremely_hard_problems)),
    ("stage II samples generated / kept", lambda s: f"{s.stage2_samples.generated} / {s.stage2_samples.kept}"),
    ("GEAR repairs generated / verified / kept", lambda s: _repairs(s.gear_samples)),
    ("GEAR's new examples in PACE stage3 (after deduplication)", lambda s: _text(s.gear_samples.new_examples)),
    ("problems only GEAR rescued (no kept Stage II sample)", lambda s: _text(s.gear_samples.rescued_beyond_hints)),
    ("hint leaks rejected", lambda s: str(s.hint_leaks_rejected)),
    ("PURE rejections", lambda s: str(s.pure_rejections)),
    ("problems rescued (0 correct -> kept)", lambda s: str(s.problems_rescued)),
    ("verifier rejections judged / accepted", lambda s: s.judge and f"{s.judge.judged} / {s.judge.accepted}"),
]
"""The headline's rows in order: a row whose value is None is one the run does not have."""

_SOURCES: list[tuple[str, Callable[[Summary], str | None]]] = [
    ("contaminated problems dropped", lambda s: _text(s.contaminated_dropped)),
    (
        "problems re-used / re-selected / sampled",
        lambda s: s.generation and f"{s.generation.reused} / {s.generation.reselected} / {s.generation.sampled}",
    ),
    ("teacher tokens drawn", lambda s: s.generation and str(s.generation.teacher_tokens)),
]

_VARIANT_FIGURES: list[tuple[str, Callable[[VariantFigures], Figures | None]]] = [
    ("pass@1 held-out", lambda v: v.pass_at_1_held_out),
    ("pass@1 hard held-out", lambda v: v.pass_at_1_hard),
    ("Δ vs {baseline} held-out", lambda v: v.delta_vs_baseline_held_out),
    ("Δ vs {baseline} hard held-out", lambda v: v.delta_vs_baseline_hard),
    ("Δ vs heal hard held-out", lambda v: v.delta_vs_heal_hard),
]
"""A variant's interval figures: the report's table columns and the flat rows' labels, with ``[95% CI]`` after."""


def headline(summary: Summary) -> list[tuple[str, str]]:
    """(label, value) rows of the headline figures, as the report, the CLI and the run's artifact show them."""
    rows = [(label, value) for label, read in _HEADLINE if (value := read(summary)) is not None]
    rows += [(f"PACE {name} examples", str(size)) for name, size in summary.pace_examples.items()]
    rows += [(f"held-out pass@1 {model}", str(acc)) for model, acc in summary.held_out_pass_at_1.items()]
    return rows + [(label, value) for label, read in _SOURCES if (value := read(summary)) is not None]


def interval_text(figures: Figures | None) -> str:
    return "—" if figures is None else f"{figures.estimate:.3f} [{figures.low:.3f}, {figures.high:.3f}]"


def _figure_labels(variants: Variants) -> list[str]:
    ci = f"[{variants.confidence:.0%} CI]"
    return [f"{label.format(baseline=variants.baseline)} {ci}" for label, _ in _VARIANT_FIGURES]


def variants_section(variants: Variants) -> list[str]:
    """Markdown lines of ``variant_summary``'s figures: the step budget, how the intervals are drawn, the table."""
    ci, base = f"[{variants.confidence:.0%} CI]", variants.baseline
    budget = (
        f"Every variant: {variants.step_budget} optimizer steps, the steps HEAL's stages take at "
        f"pace.epochs = {variants.epochs:g}; a multi-stage variant splits them over its non-empty stages in "
        "proportion to their epoch-based steps."
    )
    method = (
        f"pass@1: mean over training seeds and problems; {ci}: percentile bootstrap over problems and seeds "
        f"({variants.bootstrap_resamples} resamples); Δ vs {base}: paired over problems, seeds drawn per "
        f"variant. Hard held-out: the {variants.hard_problems} of {variants.held_out_problems} "
        f"held-out problems where the teacher's pass@1 is below {variants.hard_threshold:g} "
        "(hints.pass_rate_below)."
    )
    columns = ["variant", "seeds", "examples per stage", "steps", *_figure_labels(variants), "skipped / notes"]
    lines = ["## Variants", "", budget, "", method, "", f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
    for name, v in variants.by_variant.items():
        stages = " → ".join(f"{s.dataset} {s.examples}" for s in v.stages)
        steps = " + ".join(str(s.steps) for s in v.stages if s.steps) or "0"
        notes = "; ".join(([f"skipped: {v.skip_reason}"] if v.skip_reason else []) + v.notes)
        figures = " | ".join(interval_text(read(v)) for _, read in _VARIANT_FIGURES)
        lines.append(f"| {name} | {', '.join(map(str, v.seeds)) or '—'} | {stages} | {steps} | {figures} | {notes} |")
    return lines


def flat_summary(summary: Summary) -> list[tuple[str, str]]:
    """(metric, value) rows of a whole summary, the variants' figures one per line: the artifact's, the CLI's and
    ``heal compare``'s table."""
    pairs = headline(summary)
    if summary.ground_truth is not None:
        pairs += [(f"ground truth: {label}", value) for label, value in truth.figures(summary.ground_truth)]
    variants = summary.variants
    if variants:
        pairs.append(("variant step budget (optimizer steps, every variant)", str(variants.step_budget)))
        pairs.append(("hard held-out problems", f"{variants.hard_problems} of {variants.held_out_problems}"))
        labels = _figure_labels(variants)
        for name, v in variants.by_variant.items():
            if v.skip_reason:
                pairs.append((f"{name}: skipped", v.skip_reason))
                continue
            pairs += [(f"{name}: seeds", ", ".join(map(str, v.seeds))), (f"{name}: steps", str(v.steps))]
            pairs += [
                (f"{name}: {label}", interval_text(figures))
                for label, (_, read) in zip(labels, _VARIANT_FIGURES, strict=True)
                if (figures := read(v)) is not None
            ]
            pairs += [(f"{name}: note", note) for note in v.notes]
    return pairs


def benchmark_comparison(benchmarks: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per benchmark and group, one ``pass@1 / pass@k`` column per model (teacher,
    student base, HEAL student, RS-SFT student), from rows of EVALUATION_SUMMARY_SCHEMA; the sampling
    settings under the table, since the figures mean nothing without them."""
    models = sorted(
        dict.fromkeys(r["model"] for r in benchmarks),
        key=lambda m: list(_MODEL_NAMES).index(m) if m in _MODEL_NAMES else len(_MODEL_NAMES),
    )
    cells: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in benchmarks:
        cells[(row["benchmark"], row["group_field"], row["group_value"])][row["model"]] = row
    lines = [
        "## Evaluation per benchmark",
        "",
        "pass@1 (mean over the samples) / pass@k (k = samples) per problem set "
        "and, where its problems carry metadata (MATH-500: subject, level), per group.",
        "",
        f"| benchmark | group | problems | {' | '.join(_MODEL_NAMES.get(m, m) for m in models)} |",
        "|---|---|---|" + "---|" * len(models),
    ]
    for (benchmark, field, value), by_model in cells.items():
        group = f"{field} {value}" if field is not None else "all"
        problems = next(iter(by_model.values()))["problems"]
        scores = [
            f"{by_model[m]['pass_at_1']:.3f} / {by_model[m]['pass_at_k']:.3f}" if m in by_model else "—" for m in models
        ]
        lines.append(f"| {benchmark} | {group} | {problems} | {' | '.join(scores)} |")
    settings = dict.fromkeys(tuple((c, r[c]) for c in ("samples", *SAMPLING_COLUMNS)) for r in benchmarks)
    lines += ["", *("Sampling: " + ", ".join(f"{c}={v}" for c, v in s) + "." for s in settings)]
    return lines


def markdown(
    run_id: str,
    storage_uri: str,
    summary: Summary,
    plots: Mapping[str, str] | None = None,
    contaminated: Sequence[dict[str, Any]] = (),
    benchmarks: Sequence[dict[str, Any]] = (),
    audit: Sequence[str] = (),
) -> str:
    """``plots``: each plot's name and where its image is (``plot_files`` for report.md, ``inline_plots`` for
    a page that cannot resolve the run's files); ``benchmarks``: rows of EVALUATION_SUMMARY_SCHEMA
    (``heal_core.evaluate.summarize``); ``summary.variants``, when there, is ``variant_summary``'s; ``audit``:
    the ground-truth audit's lines (``heal_core.truth``)."""
    lines = [f"# HEAL run {run_id}", "", f"Outputs: `{storage_uri}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline(summary)]
    lines += ["", *(f"![{name}]({link})" for name, link in (plots or {}).items())]
    if summary.variants:
        lines += ["", *variants_section(summary.variants)]
    if audit:
        lines += ["", *audit]
    if benchmarks:
        lines += ["", *benchmark_comparison(benchmarks)]
    if contaminated:
        lines += [
            "",
            "## Dropped as copies of evaluation items",
            "",
            "| problem | eval set | eval item | shared n-grams | example n-gram |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['problem_id']} | {c['eval_set']} | {c['eval_id']} | {c['overlap']:.0%} | {c['ngram']} |"
            for c in contaminated
        ]
    return "\n".join(lines) + "\n"
