"""Finished runs side by side: the settings that differ, every summary figure, and pass@1 per variant.

Two runs are compared to learn what one setting (a λ, a teacher) does, so the table leads with the config keys
whose values differ, flattened to dotted keys as ``--set`` spells them, and then shows every figure of the
runs' summaries in the labels the report uses. The plot puts each variant's held-out pass@1 with its interval
next to the same variant of the other runs, one colour per run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from heal_core.config import HealConfig
from heal_core.plots import figure, to_png
from heal_core.report import flat_summary
from heal_core.summary import Summary


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(configs: Sequence[HealConfig]) -> list[tuple[str, list[str]]]:
    """(dotted key, each run's value as JSON) for every key whose value is not the same in all runs."""
    flat = [_flatten(cfg.model_dump(mode="json")) for cfg in configs]
    keys = sorted(set().union(*flat))
    shown = [[json.dumps(f.get(key)) for f in flat] for key in keys]
    return [(key, values) for key, values in zip(keys, shown, strict=True) if len(set(values)) > 1]


def summary_rows(summaries: Sequence[Summary]) -> list[tuple[str, list[str]]]:
    """(label, each run's value, "—" where a run has none) for every figure of any run, in first-seen order."""
    by_run = [dict(flat_summary(summary)) for summary in summaries]
    labels = list(dict.fromkeys(label for figures in by_run for label in figures))
    return [(label, [figures.get(label, "—") for figures in by_run]) for label in labels]


def pass_at_1_plot(names: Sequence[str], summaries: Sequence[Summary]) -> bytes:
    """Held-out pass@1 of each variant, with its interval, one colour per run (a run without variant figures,
    or a skipped variant, leaves its place empty)."""
    variants = list(dict.fromkeys(v for s in summaries for v in (s.variants.by_variant if s.variants else {})))
    fig, ax = figure("held-out pass@1 per variant")
    width = 0.8 / max(1, len(summaries))
    for i, (name, summary) in enumerate(zip(names, summaries, strict=True)):
        found = summary.variants.by_variant if summary.variants else {}
        points = [
            (x, figures)
            for x, v in enumerate(variants)
            if v in found and not found[v].skip_reason and (figures := found[v].pass_at_1_held_out) is not None
        ]
        xs = [x - 0.4 + width * (i + 0.5) for x, _ in points]
        ys = [p.estimate for _, p in points]
        spread = [[p.estimate - p.low for _, p in points], [p.high - p.estimate for _, p in points]]
        ax.errorbar(xs, ys, yerr=spread, fmt="o", capsize=4, label=name)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("pass@1 (bars: each run's CI)")
    ax.set_ylim(-0.02, 1.02)  # the whole scale: a probability, and points at 0 stay visible
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return to_png(fig)
