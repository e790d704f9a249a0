"""A run's summary: what the teacher could not do, what hints and repair rescued, what the students learned.

Plots come back as PNG bytes so the caller decides where they go (the run's storage, an artifact).
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from heal_core import truth
from heal_core.config import HealConfig
from heal_core.evaluate import HELD_OUT
from heal_core.sampling import teacher_ceiling
from heal_core.schema import SAMPLING_COLUMNS
from heal_core.stages import Dataset
from heal_core.stats import Interval, bootstrap, pass_at_1_matrix
from heal_core.train import VariantResult
from heal_core.variants import BASELINE, step_budget

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


REPORTED = ("problem_id", "stage", "kept", "verified", "leaked_hint", "pure_ratio", "pure_verdict", "judge_verdict")
"""What the headline figures and the PURE plot read of every trajectory: not its text, token ids or entropy trace."""


def sample_figures(
    samples: pa.RecordBatchReader | pa.Table, zero: Collection[str], con: duckdb.DuckDBPyConnection
) -> dict[str, Any]:
    """The run's per-sample counts, aggregated by DuckDB as ``samples`` (``REPORTED`` columns) stream past, with
    PURE's ratios (float32, for ``pure_ratio_plot``): memory holds counts and one float per PURE-scored row, not the
    rows. ``zero``: the problems the unaided teacher never solved."""
    unsolved = pa.table({"problem_id": pa.array(sorted(zero), pa.string())})  # noqa: F841 (read by name)
    row = con.sql("""SELECT count(*), count(*) FILTER (stage = 2), count(*) FILTER (stage = 2 AND kept),
                       count(*) FILTER (stage = 3), count(*) FILTER (stage = 3 AND kept),
                       count(*) FILTER (coalesce(leaked_hint, false) AND verified),
                       count(*) FILTER (coalesce(pure_verdict, 'keep') <> 'keep'),
                       count(*) FILTER (judge_verdict IS NOT NULL), count(*) FILTER (judge_verdict = 'equivalent'),
                       count(DISTINCT problem_id) FILTER (stage > 1 AND kept AND problem_id IN (
                         SELECT problem_id FROM unsolved)),
                       list(pure_ratio) FILTER (pure_ratio IS NOT NULL AND pure_verdict = 'keep'),
                       list(pure_ratio) FILTER (pure_ratio IS NOT NULL AND pure_verdict <> 'keep')
                     FROM samples""").fetchall()[0]
    return {
        "samples": row[0],
        "stage2_samples": {"generated": row[1], "kept": row[2]},
        "gear_samples": {"generated": row[3], "kept": row[4]},
        "hint_leaks_rejected": row[5],
        "pure_rejections": row[6],
        "judged": row[7],
        "accepted": row[8],
        "problems_rescued": row[9],
        "pure_ratios": {
            "kept": np.asarray(row[10] or [], np.float32),
            "rejected": np.asarray(row[11] or [], np.float32),
        },
    }


def summarize(
    figures: Mapping[str, Any],
    stats: Sequence[dict[str, Any]],
    dataset_sizes: dict[str, int],
    evaluation: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The headline figures of ``summary.json``, as numbers under snake_case keys (``headline`` shows them);
    ``figures`` are ``sample_figures``'s, ``stats`` per-problem dicts with ``correct`` and ``bucket``.

    ``teacher_ceiling``: problems the unaided teacher never solved; ``problems_rescued``: those of them that
    Stage II or III kept a sample of; ``*_samples``: generated and kept; ``judge`` (only with judge.enabled):
    the verifier's rejections it judged and accepted."""
    summary: dict[str, Any] = {
        "problems": len(stats),
        "samples": figures["samples"],
        "teacher_ceiling": teacher_ceiling(s["correct"] for s in stats),
        "hard_problems": sum(s["bucket"] == "hard" for s in stats),
        "extremely_hard_problems": sum(s["bucket"] == "extremely_hard" for s in stats),
        **{
            key: figures[key]
            for key in ("stage2_samples", "gear_samples", "hint_leaks_rejected", "pure_rejections", "problems_rescued")
        },
    }
    if figures["judged"]:
        summary["judge"] = {"judged": figures["judged"], "accepted": figures["accepted"]}
    summary["pace_examples"] = {name: dataset_sizes[name] for name in _PACE_SIZES if name in dataset_sizes}
    summary["held_out_pass_at_1"] = {model: round(acc, 4) for model, acc in accuracy(evaluation).items()}
    return summary


_PACE_SIZES = (Dataset.STAGE1, Dataset.STAGE2, Dataset.STAGE3, Dataset.RS_SFT)  # the headline's dataset sizes


def headline(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of ``summarize``'s figures, as the report, the CLI and the run's artifact show them."""
    problems, ceiling = summary["problems"], summary["teacher_ceiling"]
    rows = [
        ("problems", str(problems)),
        ("samples", str(summary["samples"])),
        ("teacher ceiling (0 correct)", f"{ceiling} ({ceiling / max(1, problems):.0%})"),
        ("hard problems", str(summary["hard_problems"])),
        ("extremely hard problems", str(summary["extremely_hard_problems"])),
        *(
            (f"{name} samples generated / kept", f"{summary[key]['generated']} / {summary[key]['kept']}")
            for name, key in (("stage II", "stage2_samples"), ("GEAR", "gear_samples"))
        ),
        ("hint leaks rejected", str(summary["hint_leaks_rejected"])),
        ("PURE rejections", str(summary["pure_rejections"])),
        ("problems rescued (0 correct -> kept)", str(summary["problems_rescued"])),
    ]
    if "judge" in summary:
        rows.append(
            ("verifier rejections judged / accepted", f"{summary['judge']['judged']} / {summary['judge']['accepted']}")
        )
    rows += [(f"PACE {name} examples", str(size)) for name, size in summary["pace_examples"].items()]
    rows += [(f"held-out pass@1 {model}", str(acc)) for model, acc in summary["held_out_pass_at_1"].items()]
    if "contaminated_dropped" in summary:
        rows.append(("contaminated problems dropped", str(summary["contaminated_dropped"])))
    if "generation" in summary:
        sources = summary["generation"]
        rows += [
            (
                "problems re-used / re-selected / sampled",
                f"{sources['reused']} / {sources['reselected']} / {sources['sampled']}",
            ),
            ("teacher tokens drawn", str(sources["teacher_tokens"])),
        ]
    return rows


def generation_sources(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Where the run's problems came from, over its shards' lineage records: the generation store as stored
    (re-used), the store replayed under a new selection (re-selected), or the teacher (sampled); and the tokens
    the teacher drew for the run (``heal_core/generation_store.py``)."""
    return {
        **{key: sum(r["generation"][key] for r in records) for key in ("reused", "reselected", "sampled")},
        "teacher_tokens": sum(r["generation"]["teacher"]["tokens"] for r in records),
    }


def accuracy(evaluation: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean pass@1 per model label on the held-out set (benchmarks are compared in their own report section)."""
    per_model: dict[str, list[float]] = defaultdict(list)
    for row in evaluation:
        if row["benchmark"] == HELD_OUT:
            per_model[row["model"]].append(row["pass_at_1"])
    return {model: float(np.mean(values)) for model, values in per_model.items()}


def _figures(interval: Interval | None) -> dict[str, float] | None:
    return None if interval is None else {k: round(getattr(interval, k), 4) for k in ("estimate", "low", "high")}


def _stage_notes(stages: Sequence[dict[str, Any]]) -> list[str]:
    """An empty stage inside a trained variant: which model the variant kept instead."""
    notes, previous = [], "the student base"
    for stage in stages:
        if stage["steps"]:
            previous = f"{stage['dataset']}'s model"
        else:
            notes.append(f"{stage['dataset']} is empty: keeps {previous}")
    return notes


def _trained(variant: str, results: Sequence[VariantResult]) -> dict[str, Any]:
    """A variant's training as the summary states it: its seeds, its first seed's stages, why it was skipped."""
    mine = sorted((r for r in results if r.variant == variant), key=lambda r: r.seed)
    stages = [{"dataset": s.name, "examples": s.examples, "steps": s.steps} for s in (mine[0].stages if mine else ())]
    skip = mine[0].skip_reason if mine else "not trained: no result in the run's storage"
    return {
        "seeds": [r.seed for r in mine if r.skip_reason is None],
        "stages": stages,
        "steps": sum(s["steps"] for s in stages),
        "skip_reason": skip,
        "notes": [] if skip else _stage_notes(stages),
    }


def variant_summary(
    results: Sequence[VariantResult],
    evaluation: Sequence[dict[str, Any]],
    dataset_sizes: dict[str, int],
    cfg: HealConfig,
) -> dict[str, Any]:
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
        variant: {
            **_trained(variant, results),
            "pass_at_1_held_out": _figures(whole[0].get(variant)),
            "pass_at_1_hard": _figures(harder[0].get(variant)),
            "delta_vs_baseline_held_out": _figures(whole[1].get(variant)),
            "delta_vs_baseline_hard": _figures(harder[1].get(variant)),
            "delta_vs_heal_hard": _figures(against_heal.get(variant)),
        }
        for variant in cfg.pace.variants
    }
    return {
        "step_budget": step_budget(dataset_sizes, cfg.pace),
        "epochs": cfg.pace.epochs,
        "confidence": cfg.evaluation.confidence,
        "bootstrap_resamples": cfg.evaluation.bootstrap_resamples,
        "baseline": BASELINE,
        "held_out_problems": len(problems),
        "hard_problems": len(hard),
        "hard_threshold": threshold,  # hard: the teacher's held-out pass@1 below this (hints.pass_rate_below)
        "by_variant": by_variant,
    }


def interval_text(figures: dict[str, float] | None) -> str:
    return "—" if figures is None else f"{figures['estimate']:.3f} [{figures['low']:.3f}, {figures['high']:.3f}]"


def variants_section(variants: dict[str, Any]) -> list[str]:
    """Markdown lines of ``variant_summary``'s figures: the step budget, how the intervals are drawn, the table."""
    ci, base = f"[{variants['confidence']:.0%} CI]", variants["baseline"]
    budget = (
        f"Every variant: {variants['step_budget']} optimizer steps, the steps HEAL's stages take at "
        f"pace.epochs = {variants['epochs']:g}; a multi-stage variant splits them over its non-empty stages in "
        "proportion to their epoch-based steps."
    )
    method = (
        f"pass@1: mean over training seeds and problems; {ci}: percentile bootstrap over problems and seeds "
        f"({variants['bootstrap_resamples']} resamples); Δ vs {base}: paired over problems, seeds drawn per "
        f"variant. Hard held-out: the {variants['hard_problems']} of {variants['held_out_problems']} "
        f"held-out problems where the teacher's pass@1 is below {variants['hard_threshold']:g} "
        "(hints.pass_rate_below)."
    )
    header = (
        f"| variant | seeds | examples per stage | steps | pass@1 held-out {ci} | pass@1 hard held-out {ci} "
        f"| Δ vs {base} held-out {ci} | Δ vs {base} hard {ci} | Δ vs heal hard {ci} | skipped / notes |"
    )
    lines = ["## Variants", "", budget, "", method, "", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in variants["by_variant"].items():
        stages = " → ".join(f"{s['dataset']} {s['examples']}" for s in v["stages"])
        steps = " + ".join(str(s["steps"]) for s in v["stages"] if s["steps"]) or "0"
        notes = "; ".join(([f"skipped: {v['skip_reason']}"] if v["skip_reason"] else []) + v["notes"])
        lines.append(
            f"| {name} | {', '.join(map(str, v['seeds'])) or '—'} | {stages} | {steps} "
            f"| {interval_text(v['pass_at_1_held_out'])} | {interval_text(v['pass_at_1_hard'])} "
            f"| {interval_text(v['delta_vs_baseline_held_out'])} | {interval_text(v['delta_vs_baseline_hard'])} "
            f"| {interval_text(v['delta_vs_heal_hard'])} | {notes} |"
        )
    return lines


def flat_summary(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of a whole summary, the variants' figures one per line: the artifact's and the CLI's
    table."""
    pairs = headline(summary)
    if "ground_truth" in summary:
        pairs += [(f"ground truth: {label}", value) for label, value in truth.figures(summary["ground_truth"])]
    variants = summary.get("variants")
    if variants:
        ci, base = f"[{variants['confidence']:.0%} CI]", variants["baseline"]
        pairs.append(("variant step budget (optimizer steps, every variant)", str(variants["step_budget"])))
        pairs.append(("hard held-out problems", f"{variants['hard_problems']} of {variants['held_out_problems']}"))
        for name, v in variants["by_variant"].items():
            if v["skip_reason"]:
                pairs.append((f"{name}: skipped", v["skip_reason"]))
                continue
            pairs += [
                (f"{name}: seeds", ", ".join(map(str, v["seeds"]))),
                (f"{name}: steps", str(v["steps"])),
                (f"{name}: pass@1 held-out {ci}", interval_text(v["pass_at_1_held_out"])),
                (f"{name}: pass@1 hard held-out {ci}", interval_text(v["pass_at_1_hard"])),
            ]
            against = {base: v["delta_vs_baseline_hard"], "heal": v["delta_vs_heal_hard"]}
            pairs += [
                (f"{name}: Δ vs {other} hard held-out {ci}", interval_text(delta))
                for other, delta in against.items()
                if delta is not None
            ]
            pairs += [(f"{name}: note", note) for note in v["notes"]]
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
    summary: dict[str, Any],
    plots: Mapping[str, str] | None = None,
    contaminated: Sequence[dict[str, Any]] = (),
    benchmarks: Sequence[dict[str, Any]] = (),
    audit: Sequence[str] = (),
) -> str:
    """``plots``: each plot's name and where its image is (``plot_files`` for report.md, ``inline_plots`` for
    a page that cannot resolve the run's files); ``benchmarks``: rows of EVALUATION_SUMMARY_SCHEMA
    (``heal_core.evaluate.summarize``); ``summary["variants"]``, when there, is ``variant_summary``'s; ``audit``:
    the ground-truth audit's lines (``heal_core.truth``)."""
    lines = [f"# HEAL run {run_id}", "", f"Outputs: `{storage_uri}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline(summary)]
    lines += ["", *(f"![{name}]({link})" for name, link in (plots or {}).items())]
    if summary.get("variants"):
        lines += ["", *variants_section(summary["variants"])]
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


def plot_files(names: Sequence[str]) -> dict[str, str]:
    """Links to the run's PNGs, relative to report.md."""
    return {name: f"plots/{name}.png" for name in names}


def inline_plots(pngs: Mapping[str, bytes]) -> dict[str, str]:
    """The PNGs as data URIs: the Prefect UI renders an artifact's markdown on its own page, where the run's
    relative ``plots/`` paths lead nowhere (the images showed as broken). Three plots are about 90 KB of base64;
    Prefect 3.9 limits an artifact's metadata, not its markdown."""
    return {name: "data:image/png;base64," + base64.b64encode(png).decode() for name, png in pngs.items()}


def to_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def figure(title: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.set_title(title)
    return fig, ax


def pass_rate_histogram(stats: Sequence[dict[str, Any]]) -> bytes:
    fig, ax = figure("Teacher pass rate per problem (Stage I)")
    rates = [s["correct"] / s["samples"] for s in stats if s["samples"]]
    ax.hist(rates, bins=np.linspace(0, 1, 11), edgecolor="black")
    ax.set_xlabel("pass rate")
    ax.set_ylabel("problems")
    return to_png(fig)


def entropy_trace(
    entropy: Sequence[float], breakpoint: int, fraction: float, wrong_step: tuple[int, int] | None = None
) -> bytes:
    """``wrong_step``: the tokens [start, end) of the trajectory's first wrong step, where a step checker knows it."""
    fig, ax = figure("Entropy of a repaired trajectory")
    ax.plot(np.arange(len(entropy)), entropy, lw=1)
    ax.axvline(breakpoint, color="red", ls="--", label=f"breakpoint (token {breakpoint})")
    ax.axvspan(0, len(entropy) * fraction, color="grey", alpha=0.15, label=f"search span (first {fraction:.0%})")
    if wrong_step is not None:
        ax.axvspan(*wrong_step, color="orange", alpha=0.35, label="first wrong step (step checker)")
    ax.set_xlabel("generated token")
    ax.set_ylabel("entropy (nats)")
    ax.legend(fontsize=8)
    return to_png(fig)


def pure_ratio_plot(ratios: Mapping[str, np.ndarray], lam: float) -> bytes:
    """``ratios``: PURE's R of the rows it kept and of those it rejected (``sample_figures``). Log-scaled: R spans
    orders of magnitude (a genuine trajectory sits near 0.001, a forced answer near 1 and beyond), and a linear
    axis squeezes every genuine one into its first bin. Rejections left of lambda are the leap rule's."""
    fig, ax = figure("PURE forced-answer ratio R")
    floor = 1e-8  # R is an NLL ratio, so >= 0: a zero (no uncertainty left at all) goes in the first bin
    kept, rejected = (np.maximum(np.asarray(ratios[k], np.float64), floor) for k in ("kept", "rejected"))
    values = np.concatenate([kept, rejected]) if len(kept) + len(rejected) else np.array([lam])
    bins = np.geomspace(min(values.min(), lam) / 1.5, max(values.max(), lam) * 1.5, 31)
    ax.hist([kept, rejected], bins=bins, label=["kept", "rejected"], stacked=True)
    ax.axvline(lam, color="black", ls="--", lw=1, label=f"lambda = {lam:g}")
    ax.set_xscale("log")
    ax.set_xlabel("R = U_{K-1} / (U_0 + eps)")
    ax.set_ylabel("trajectories")
    ax.legend(fontsize=8)
    return to_png(fig)


def training_curves(results: Sequence[Any]) -> bytes | None:
    """Each (variant, seed)'s logged training loss against its optimizer steps, stage after stage on one axis
    (``heal_core.train.VariantResult``s): a stage that diverged or a seed that trained on nothing shows here before
    any evaluation. Dotted lines: where each of the first curve's stages ends. None when nothing was logged (every
    result from before curves were recorded, or every variant skipped)."""
    trained = [r for r in results if any(stage.losses for stage in r.stages)]
    if not trained:
        return None
    fig, ax = figure("Training loss per (variant, seed), stages in order")
    colours = {variant: f"C{i}" for i, variant in enumerate(dict.fromkeys(r.variant for r in trained))}
    for result in trained:
        offset, steps, losses = 0, [], []
        for stage in result.stages:
            steps += [offset + step for step, _ in stage.losses]
            losses += [loss for _, loss in stage.losses]
            offset += stage.steps
        ax.plot(
            steps,
            losses,
            color=colours[result.variant],
            lw=1,
            alpha=0.8,
            label=result.variant
            if result.seed == min(r.seed for r in trained if r.variant == result.variant)
            else None,
        )
    ends = np.cumsum([stage.steps for stage in trained[0].stages])[:-1]
    for i, end in enumerate(ends):
        ax.axvline(end, color="grey", ls=":", lw=1, label=f"{trained[0].variant}'s stage ends" if i == 0 else None)
    ax.set_xlabel("optimizer step (stages in order)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return to_png(fig)
