"""Generate once, train many (issue I): what a second run costs when the generation store has most of its problems.

On the embedded default (bundled teacher, N = 8, hints.n = 8, GEAR 2 x 2, shards of 64), through the shard chain
and the store as ``heal run`` drives them (``heal_core.generation_store.generate_stored``), against a fresh store:

1. a first run on the first 90 % of the demo's generation problems;
2. a second run on all of them (10 % new): the store answers the rest;
3. a training-only change (``pace.learning_rate``): no fingerprint of generation changes;
4. a new ``pure.lam``: every problem re-selected from the stored completions and PURE scores.

Each pass builds its own teacher backend when it first needs one, as a fresh run's worker does. Prints each pass's
wall time, its sources and the teacher's tokens, and the second run's time as a share of the first's.

    python bench/reuse.py --threads 2          # the figures in BENCHMARKS.md
    python bench/reuse.py --quick              # 20 problems: a smoke run
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import torch

from heal_core import fingerprints
from heal_core.backends.factory import build_backend
from heal_core.config import parse_config
from heal_core.demo import bundled_model, demo_defaults, demo_problems
from heal_core.generation_store import GenerationStore, generate_stored


def run_pass(problems, cfg, store_uri: str, teacher: str) -> dict:
    """Every shard of ``problems`` through the store; the pass's wall time, sources and teacher usage."""
    store = GenerationStore.under(store_uri, {}, fingerprints.generation(cfg, fingerprints.model_identity(teacher)))
    backend = functools.cache(lambda: build_backend(cfg.teacher, teacher))
    size = cfg.orchestration.shard_size
    totals = {"seconds": 0.0, "reused": 0, "reselected": 0, "sampled": 0, "tokens": 0, "requests": 0}
    started = time.perf_counter()
    for i in range(0, len(problems), size):
        out = generate_stored(
            problems[i : i + size], cfg, store, fingerprints.selection(cfg), teacher, backend, lambda: None
        )
        for key in ("reused", "reselected", "sampled"):
            totals[key] += getattr(out, key)
        totals["tokens"] += out.usage.tokens
        totals["requests"] += out.usage.requests
    totals["seconds"] = time.perf_counter() - started
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20 problems")
    parser.add_argument("--new-share", type=float, default=0.1, help="share of the second run's problems that are new")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problems = demo_problems("generation")[: 20 if args.quick else None]
    old = problems[: round(len(problems) * (1 - args.new_share))]
    cfg = parse_config(demo_defaults())
    teacher = str(bundled_model("teacher"))
    with tempfile.TemporaryDirectory() as store:
        passes = {
            f"first run ({len(old)} problems)": run_pass(old, cfg, store, teacher),
            f"second run ({len(problems)} problems, {len(problems) - len(old)} new)": run_pass(
                problems, cfg, store, teacher
            ),
            "training-only change (pace.learning_rate)": run_pass(
                problems, parse_config(demo_defaults(), ["pace.learning_rate=1e-3"]), store, teacher
            ),
            "new λ (pure.lam=0.1)": run_pass(problems, parse_config(demo_defaults(), ["pure.lam=0.1"]), store, teacher),
        }
    print("| pass | re-used / re-selected / sampled | teacher requests | teacher tokens | generation time |")
    print("|---|---|---|---|---|")
    for name, p in passes.items():
        print(
            f"| {name} | {p['reused']} / {p['reselected']} / {p['sampled']} | {p['requests']} | {p['tokens']:,} "
            f"| {p['seconds']:.1f} s |"
        )
    first, second, *_ = passes.values()
    print(
        f"second run with {args.new_share:.0%} new problems: {second['seconds'] / first['seconds']:.1%} of the first "
        f"run's generation time"
    )


if __name__ == "__main__":
    main()
