"""GEAR's cost: teacher tokens generated per kept Stage III sample, on the embedded demo.

One shard of the demo's generation problems goes through ``heal_core.shard.generate_shard`` (Stage I
sampling, buckets, Stage II hints, GEAR, PURE) with the bundled teacher and the embedded default config,
exactly as ``heal run`` does it. The counts come from the trajectories' lineage: a Stage III row is one
continuation (its ``num_tokens`` are the tokens the teacher generated after the kept prefix) with its
parent, breakpoint, verdict, leakage flag and PURE verdict. The teacher's time is metered per backend call
(sampling, continuation, PURE scoring).

Cost of repair = Stage III tokens generated / kept Stage III samples (and per rescued problem: an extremely
hard problem that ends with at least one kept repair). Stage I and II figures are shown for comparison.
The Stage I samples GEAR repairs were paid for by Stage I anyway and are not counted again.

    python bench/gear.py [--problems 96] [--set gear.failed_paths=10 --set gear.continuations=20 ...] [--quick]

Last line: the headline figure, teacher tokens generated per kept Stage III sample.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import torch

from heal_core.backends.hf import HFBackend
from heal_core.config import parse_config
from heal_core.demo import bundled_model
from heal_core.demo.teacher import demo_config, split
from heal_core.shard import generate_shard


class MeteredBackend(HFBackend):
    """HFBackend that adds up the seconds spent in each kind of teacher call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = defaultdict(float)

    def _timed(self, kind: str, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[kind] += time.perf_counter() - start

    def sample(self, prompts, n, sampling):
        return self._timed("sample", super().sample, prompts, n, sampling)

    def continue_(self, prompt, prefix, n, sampling):
        return self._timed("continue", super().continue_, prompt, prefix, n, sampling)

    def score(self, prompt, continuation):
        return self._timed("score", super().score, prompt, continuation)

    def score_prefixes(self, prompt, segments, answer_lead, answer):
        return self._timed("score", super().score_prefixes, prompt, segments, answer_lead, answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=96, help="demo generation problems, longest chains first")
    parser.add_argument("--model", default=str(bundled_model("teacher")), help="teacher (default: the bundled one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, k=v")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="smallest settings (CI): checks the script runs")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        args.problems, args.threads = 3, 1  # one thread: a tiny model gains nothing, and threads stall on a busy box
        overrides = ["teacher.sampling.n=3", "hints.n=2", "gear.failed_paths=1", "gear.continuations=2",
                     "teacher.sampling.max_new_tokens=96", *overrides]
    torch.set_num_threads(args.threads)
    cfg = parse_config(demo_config().model_dump(mode="json"), overrides)
    # The hardest problems first, so a small --problems still reaches GEAR (long chains are the ones that fail).
    worked = sorted(split("generation"), key=lambda w: -w.steps)[: args.problems]
    problems = [w.problem for w in worked]
    backend = MeteredBackend(args.model, "float32", "cpu", cfg.teacher.max_batch_sequences)

    started = time.perf_counter()
    out = generate_shard(backend, problems, cfg, teacher=args.model)
    wall = time.perf_counter() - started
    rows = out.trajectories
    buckets = defaultdict(int)
    for stats in out.stats.values():
        buckets[stats.bucket] += 1
    stage3 = [r for r in rows if r["stage"] == 3]
    kept3 = [r for r in stage3 if r["kept"]]
    extreme = [p for p, s in out.stats.items() if s.bucket == "extremely_hard"]
    rescued = {r["problem_id"] for r in kept3}
    repaired_parents = {r["parent_sample_id"] for r in stage3}
    tokens3 = sum(r["num_tokens"] for r in stage3)

    print(f"{len(problems)} demo problems ({min(w.steps for w in worked)}-{max(w.steps for w in worked)} steps), "
          f"teacher {args.model}; N={cfg.teacher.sampling.n}, hints.n={cfg.hints.n}, GEAR "
          f"{cfg.gear.failed_paths} paths x {cfg.gear.continuations} continuations; {wall:.0f} s wall on "
          f"{torch.get_num_threads()} threads (teacher: " + ", ".join(f"{k} {v:.0f} s" for k, v in backend.seconds.items()) + ")")
    print(f"buckets: {dict(buckets)}")
    print()
    print("| stage | samples | tokens generated | verified | kept | tokens per kept sample |")
    print("|---|---|---|---|---|---|")
    for stage, name in ((1, "I (unaided)"), (2, "II (hint)"), (3, "III (GEAR)")):
        these = [r for r in rows if r["stage"] == stage]
        tokens = sum(r["num_tokens"] for r in these)
        kept = sum(r["kept"] for r in these)
        per_kept = f"{tokens / kept:,.0f}" if kept else "n/a"
        print(f"| {name} | {len(these)} | {tokens:,} | {sum(r['verified'] for r in these)} | {kept} | {per_kept} |")
    print()
    print("| GEAR | count |")
    print("|---|---|")
    print(f"| extremely hard problems | {len(extreme)} |")
    print(f"| failed trajectories repaired (breakpoint found) | {len(repaired_parents)} |")
    print(f"| skipped (reason in lineage) | {len(out.skips)} |")
    print(f"| continuations | {len(stage3)} |")
    print(f"| verified | {sum(r['verified'] for r in stage3)} |")
    print(f"| verified but leaking the hint | {sum(r['verified'] and bool(r['leaked_hint']) for r in stage3)} |")
    print(f"| rejected by PURE | {sum(r['pure_verdict'] not in (None, 'keep', 'skipped') for r in stage3)} |")
    print(f"| kept | {len(kept3)} |")
    print(f"| problems rescued (>= 1 kept repair) | {len(rescued)} of {len(extreme)} |")
    if rescued:
        print(f"| teacher tokens per rescued problem | {tokens3 / len(rescued):,.0f} |")
    print(f"| teacher seconds in continuations per kept repair | "
          f"{backend.seconds['continue'] / len(kept3):.2f} |" if kept3 else "| teacher seconds per kept repair | n/a |")
    print()
    if kept3:
        print(f"teacher tokens per kept Stage III sample: {tokens3 / len(kept3):,.0f}")
    else:
        print(f"teacher tokens per kept Stage III sample: n/a (0 kept of {len(stage3)} continuations, {tokens3} tokens)")


if __name__ == "__main__":
    main()
