"""A run's summary: what the teacher could not do, what hints and repair rescued, what the students learned.

Plots come back as PNG bytes so the caller decides where they go (the run's storage, an artifact).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from heal_core.evaluate import HELD_OUT
from heal_core.schema import SAMPLING_COLUMNS

# Report columns: the models a HEAL run compares, in reading order; any other label follows as it is.
_MODEL_NAMES = {"teacher": "teacher", "student_base": "student base", "heal": "HEAL student", "rs_sft": "RS-SFT student"}


def summarize(
    samples: Sequence[dict[str, Any]],
    stats: Sequence[dict[str, Any]],
    dataset_sizes: dict[str, int],
    evaluation: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The headline figures; ``stats`` are per-problem dicts with ``correct`` and ``bucket``."""
    by_stage: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in samples:
        by_stage[row["stage"]].append(row)
    zero = {s["problem_id"] for s in stats if s["correct"] == 0}
    rescued = {r["problem_id"] for r in samples if r["stage"] > 1 and r["kept"] and r["problem_id"] in zero}
    summary: dict[str, Any] = {
        "problems": len(stats),
        "samples": len(samples),
        "teacher ceiling (0 correct)": f"{len(zero)} ({len(zero) / max(1, len(stats)):.0%})",
        "hard problems": sum(s["bucket"] == "hard" for s in stats),
        "extremely hard problems": sum(s["bucket"] == "extremely_hard" for s in stats),
        "stage II samples generated / kept": _generated_kept(by_stage[2]),
        "GEAR samples generated / kept": _generated_kept(by_stage[3]),
        "hint leaks rejected": sum(bool(r["leaked_hint"]) and r["verified"] for r in samples),
        "PURE rejections": sum((r["pure_verdict"] or "keep") != "keep" for r in samples),
        "problems rescued (0 correct -> kept)": len(rescued),
    }
    judged = [r for r in samples if r["judge_verdict"] is not None]
    if judged:  # only with judge.enabled: the default summary keeps its shape
        summary["verifier rejections judged / accepted"] = \
            f"{len(judged)} / {sum(r['judge_verdict'] == 'equivalent' for r in judged)}"
    for name in ("stage1", "stage2", "stage3", "rs_sft"):
        if name in dataset_sizes:
            summary[f"PACE {name} examples"] = dataset_sizes[name]
    for model, acc in accuracy(evaluation).items():
        summary[f"held-out pass@1 {model}"] = round(acc, 4)
    return summary


def _generated_kept(rows: Sequence[dict[str, Any]]) -> str:
    return f"{len(rows)} / {sum(bool(r['kept']) for r in rows)}"


def accuracy(evaluation: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean pass@1 per model label on the held-out set (benchmarks are compared in their own report section)."""
    per_model: dict[str, list[float]] = defaultdict(list)
    for row in evaluation:
        if row["benchmark"] == HELD_OUT:
            per_model[row["model"]].append(row["pass_at_1"])
    return {model: float(np.mean(values)) for model, values in per_model.items()}


def benchmark_comparison(benchmarks: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per benchmark and group, one ``pass@1 / pass@k`` column per model (teacher,
    student base, HEAL student, RS-SFT student), from rows of EVALUATION_SUMMARY_SCHEMA; the sampling
    settings under the table, since the figures mean nothing without them."""
    models = sorted(dict.fromkeys(r["model"] for r in benchmarks),
                    key=lambda m: list(_MODEL_NAMES).index(m) if m in _MODEL_NAMES else len(_MODEL_NAMES))
    cells: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in benchmarks:
        cells[(row["benchmark"], row["group_field"], row["group_value"])][row["model"]] = row
    lines = ["## Evaluation per benchmark", "", "pass@1 (mean over the samples) / pass@k (k = samples) per problem set "
             "and, where its problems carry metadata (MATH-500: subject, level), per group.", "",
             f"| benchmark | group | problems | {' | '.join(_MODEL_NAMES.get(m, m) for m in models)} |",
             "|---|---|---|" + "---|" * len(models)]
    for (benchmark, field, value), by_model in cells.items():
        group = f"{field} {value}" if field is not None else "all"
        problems = next(iter(by_model.values()))["problems"]
        scores = [f"{by_model[m]['pass_at_1']:.3f} / {by_model[m]['pass_at_k']:.3f}" if m in by_model else "—"
                  for m in models]
        lines.append(f"| {benchmark} | {group} | {problems} | {' | '.join(scores)} |")
    settings = dict.fromkeys(tuple((c, r[c]) for c in ("samples", *SAMPLING_COLUMNS)) for r in benchmarks)
    lines += ["", *("Sampling: " + ", ".join(f"{c}={v}" for c, v in s) + "." for s in settings)]
    return lines


def markdown(
    run_id: str, storage_uri: str, summary: dict[str, Any], plots: Sequence[str] = (),
    contaminated: Sequence[dict[str, Any]] = (), benchmarks: Sequence[dict[str, Any]] = (),
) -> str:
    """``benchmarks``: rows of EVALUATION_SUMMARY_SCHEMA (``heal_core.evaluate.summarize``)."""
    lines = [f"# HEAL run {run_id}", "", f"Outputs: `{storage_uri}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", *(f"![{p}](plots/{p}.png)" for p in plots)]
    if benchmarks:
        lines += ["", *benchmark_comparison(benchmarks)]
    if contaminated:
        lines += ["", "## Dropped as copies of evaluation items", "",
                  "| problem | eval set | eval item | shared n-grams | example n-gram |", "|---|---|---|---|---|"]
        lines += [f"| {c['problem_id']} | {c['eval_set']} | {c['eval_id']} | {c['overlap']:.0%} | {c['ngram']} |"
                  for c in contaminated]
    return "\n".join(lines) + "\n"


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _figure(title: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.set_title(title)
    return fig, ax


def pass_rate_histogram(stats: Sequence[dict[str, Any]]) -> bytes:
    fig, ax = _figure("Teacher pass rate per problem (Stage I)")
    rates = [s["correct"] / s["samples"] for s in stats if s["samples"]]
    ax.hist(rates, bins=np.linspace(0, 1, 11), edgecolor="black")
    ax.set_xlabel("pass rate")
    ax.set_ylabel("problems")
    return _png(fig)


def entropy_trace(entropy: Sequence[float], breakpoint: int) -> bytes:
    fig, ax = _figure("Entropy of a repaired trajectory")
    ax.plot(np.arange(len(entropy)), entropy, lw=1)
    ax.axvline(breakpoint, color="red", ls="--", label=f"breakpoint (token {breakpoint})")
    ax.axvspan(0, len(entropy) / 3, color="grey", alpha=0.15, label="search span (first third)")
    ax.set_xlabel("generated token")
    ax.set_ylabel("entropy (nats)")
    ax.legend(fontsize=8)
    return _png(fig)


def pure_ratio_plot(samples: Sequence[dict[str, Any]]) -> bytes:
    fig, ax = _figure("PURE forced-answer ratio R")
    kept = [r["pure_ratio"] for r in samples if r["pure_ratio"] is not None and r["pure_verdict"] == "keep"]
    rejected = [r["pure_ratio"] for r in samples if r["pure_ratio"] is not None and r["pure_verdict"] != "keep"]
    bins = np.linspace(0, max([1.0, *kept, *rejected]), 21)
    ax.hist([kept, rejected], bins=bins, label=["kept", "rejected"], stacked=True)
    ax.set_xlabel("R = U_{K-1} / (U_0 + eps)")
    ax.set_ylabel("trajectories")
    ax.legend()
    return _png(fig)
