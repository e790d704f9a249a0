"""Orchestration and storage overhead of ``heal run`` on the embedded default: where the wall time goes.

The whole embedded pipeline runs in this process, as ``heal run`` runs it (Prefect's temporary local API server
started on first use, local storage), with timers wrapped around the calls that do the work:

* backend compute: the teacher's and the students' generation (``HFBackend.generate_rows``) and teacher-forced
  scoring (PURE, GEAR breakpoints, exact entropy), plus model loading;
* training steps: ``transformers.Trainer.train`` inside each stage of each (variant, seed);
* training set-up: the rest of ``train_stage`` (SFTConfig, tokenizer and model load, dataset tokenisation,
  save);
* verification: ``check_many`` (the timeout-safe Math-Verify pool) in sampling and evaluation;
* storage: every ``heal_core.storage`` call (Parquet/JSON encode and decode, file writes, checkpoint copies);
* report: the summary markdown and PNG plots;
* Prefect and the rest: wall time minus all of the above (server start, flow and task engines, artifacts,
  logging, and heal's own Python between the calls).

Each timer counts only its outermost call (a storage call inside another storage call is not counted twice).

    python bench/overhead.py [--quick]

Last line: the headline, the share of wall time that is neither backend compute nor training steps.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

COMPUTE = ("backend: generation", "backend: scoring", "training steps")


class Clock:
    """Wall seconds per category; re-entrant calls of one category on one thread count once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = threading.local()

    def wrap(self, owner: object, name: str, category: str) -> None:
        original: Callable = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            depth = getattr(self._depth, category, 0)
            setattr(self._depth, category, depth + 1)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                setattr(self._depth, category, depth)
                if depth == 0:
                    self.seconds[category] += time.perf_counter() - start

        setattr(owner, name, timed)


def instrument(clock: Clock) -> None:
    import transformers

    import heal_core.evaluate
    import heal_core.plots
    import heal_core.report
    import heal_core.sampling
    import heal_core.train
    from heal_core import storage
    from heal_core.backends.hf import HFBackend

    clock.wrap(HFBackend, "generate_rows", "backend: generation")
    for method in ("teacher_forced", "score", "score_prefixes", "exact_entropy"):
        clock.wrap(HFBackend, method, "backend: scoring")
    clock.wrap(HFBackend, "__init__", "backend: model load")
    clock.wrap(transformers.Trainer, "train", "training steps")
    clock.wrap(heal_core.train, "train_stage", "training (whole stage)")
    for module in (heal_core.sampling, heal_core.evaluate):
        clock.wrap(module, "check_many", "verification")
    for name in (
        "write_bytes",
        "read_bytes",
        "exists",
        "list_files",
        "write_parquet",
        "read_parquet",
        "write_json",
        "read_json",
        "put_dir",
        "get_dir",
    ):
        clock.wrap(storage, name, "storage")
    clock.wrap(heal_core.report, "markdown", "report")
    for name in ("pass_rate_histogram", "entropy_trace", "pure_ratio_plot"):
        clock.wrap(heal_core.plots, name, "report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 problems, N=4: a smoke run of the mechanics")
    args = parser.parse_args()

    import torch

    from flows.pipeline import heal_pipeline
    from heal_core.config import parse_config
    from heal_core.demo import demo_defaults

    torch.set_num_threads(2)
    clock = Clock()
    instrument(clock)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HEAL_CACHE_DIR"] = str(Path(tmp) / "cache")
        overrides = [f"storage.uri={tmp}/store"]
        if args.quick:
            overrides += [
                "teacher.sampling.n=4",
                "hints.n=2",
                "pace.epochs=1",
                "pace.seeds=[0]",
                "pace.variants=[heal,rs_sft]",
                "evaluation.samples=1",
                "evaluation.max_problems=4",
                "orchestration.shard_size=4",
            ]
        if args.quick:
            from heal_core.demo import demo_problems

            problems = Path(tmp) / "problems.jsonl"
            problems.write_text(
                "".join(
                    json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}) + "\n"
                    for p in demo_problems("generation")[:8]
                )
            )
            overrides.append(f"problems.uri={problems}")
        cfg = parse_config(demo_defaults(), overrides)
        start = time.perf_counter()
        heal_pipeline(cfg, "overhead")
        wall = time.perf_counter() - start

    seconds = dict(clock.seconds)
    seconds["training set-up and save"] = seconds.pop("training (whole stage)", 0.0) - seconds.get(
        "training steps", 0.0
    )
    seconds["Prefect and the rest"] = wall - sum(seconds.values())
    print(f"heal run, embedded default{' (quick)' if args.quick else ''}: wall {wall:.1f} s")
    print("| part | seconds | share of wall |\n|---|---|---|")
    for part, value in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {value:.1f} | {value / wall:.1%} |")
    compute = sum(seconds.get(part, 0.0) for part in COMPUTE)
    print(f"compute (backend generation + scoring + training steps): {compute:.1f} s")
    print(f"overhead share of wall time (everything but compute): {(wall - compute) / wall:.3f}")


if __name__ == "__main__":
    main()
