"""The run's plots, as PNG bytes, so the caller decides where they go (the run's storage, an artifact, a page).

Headless matplotlib (Agg): workers and CI have no display.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


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
