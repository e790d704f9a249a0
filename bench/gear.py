"""The generation chain's cost on the embedded demo: per-stage teacher throughput against full batches, and
teacher tokens per kept Stage III sample.

One shard of the demo's generation problems goes through ``heal_core.shard.generate_shard`` (Stage I
sampling, buckets, Stage II hints in waves, GEAR in waves, PURE) with the bundled teacher and the embedded default
config, exactly as ``heal run`` does it. Every teacher call is metered by stage: generation (I, II, III) in tokens
generated per second, PURE and breakpoint scoring in trajectories per second. Then a second, bare backend on the
same model does each stage's work again in full batches: all of the stage's requests (or queries) in one call,
which it splits into calls of ``teacher.max_batch_sequences`` rows. Rows are seeded by what they are
(``heal_core/seeds.py``), so the replay generates the very same tokens (checked), and the ratio shard / full batch
is like for like. The whole shard's ratio is over all generation.

Cost of repair = Stage III tokens generated / kept Stage III samples (and per rescued problem: an extremely
hard problem that ends with at least one kept repair). The Stage I samples GEAR repairs were paid for by Stage I
and are not counted again. ``--all-at-once`` also runs the shard with every failed path in one wave and checks that
the kept repairs are the same rows.

    python bench/gear.py [--problems 64] [--set gear.failed_paths=10 --set gear.continuations=20 ...] [--all-at-once]

Last line: the headline figure, teacher tokens generated per kept Stage III sample.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import torch

import heal_core.shard
from heal_core.backends.hf import HFBackend
from heal_core.config import parse_config
from heal_core.demo import bundled_model
from heal_core.demo.teacher import demo_config, split
from heal_core.shard import generate_shard

STAGES = {"sample_stage1": "I", "sample_hinted": "II", "repair": "III"}


class MeteredBackend(HFBackend):
    """HFBackend that records every call (its stage, inputs and seconds); ``stage`` is set by ``tag``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stage = "I"
        self.calls: list[tuple[str, list, float]] = []

    def _timed(self, kind: str, fn, work: list, *args):
        start = time.perf_counter()
        try:
            return fn(work, *args)
        finally:
            self.calls.append((kind, list(work), time.perf_counter() - start))

    def generate(self, requests, sampling):
        return self._timed(self.stage, super().generate, requests, sampling)

    def score_prefixes(self, queries):
        return self._timed("PURE scoring", super().score_prefixes, queries)

    def exact_entropy(self, traces, temperature):
        return self._timed("breakpoint scoring", super().exact_entropy, traces, temperature)


def tag(backend: MeteredBackend) -> None:
    """Set ``backend.stage`` around the shard's Stage I, II and III steps."""
    for module in (heal_core.shard, heal_core.shard.hints, heal_core.shard.gear):
        for name, stage in STAGES.items():
            if hasattr(module, name):
                setattr(module, name, _tagged(backend, stage, getattr(module, name)))


def _tagged(backend: MeteredBackend, stage: str, fn):
    def run(*args, **kwargs):
        backend.stage = stage
        return fn(*args, **kwargs)

    return run


def replay(bare: HFBackend, calls: list[tuple[str, list, float]], sampling) -> dict[str, tuple[float, float, float]]:
    """kind -> (work done in the shard, its seconds there, the same work's seconds in full batches). Work is
    tokens generated for generation, trajectories for scoring."""
    out = {}
    for kind in ("I", "II", "III", "PURE scoring", "breakpoint scoring"):
        work = [item for k, items, _ in calls if k == kind for item in items]
        if not work:
            continue
        seconds = sum(t for k, _, t in calls if k == kind)
        start = time.perf_counter()
        if kind in ("I", "II", "III"):
            result = bare.generate(work, sampling)
            done = sum(len(g.token_ids) for gens in result for g in gens)
        elif kind == "PURE scoring":
            done = len(bare.score_prefixes(work))
        else:
            done = len(bare.exact_entropy(work, sampling.temperature))
        out[kind] = (done, seconds, time.perf_counter() - start)
    return out


def run_shard(args, overrides: list[str]):
    cfg = parse_config(demo_config().model_dump(mode="json"), overrides)
    # The hardest problems first, so a small --problems still reaches GEAR (long chains are the ones that fail).
    worked = sorted(split("generation"), key=lambda w: -w.steps)[: args.problems]
    backend = MeteredBackend(args.model, "float32", "cpu", cfg.teacher.max_batch_sequences)
    tag(backend)
    started = time.perf_counter()
    out = generate_shard(backend, [w.problem for w in worked], cfg)
    return cfg, worked, backend, out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64, help="demo generation problems, longest chains first")
    parser.add_argument("--model", default=str(bundled_model("teacher")), help="teacher (default: the bundled one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, k=v")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--all-at-once", action="store_true", help="also run GEAR in one wave and compare")
    parser.add_argument("--quick", action="store_true", help="smallest settings (CI): checks the script runs")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        args.problems, args.threads = 3, 1  # one thread: a tiny model gains nothing, and threads stall on a busy box
        overrides = [
            "teacher.sampling.n=3",
            "hints.n=2",
            "gear.failed_paths=1",
            "gear.continuations=2",
            "teacher.sampling.max_new_tokens=96",
            *overrides,
        ]
    torch.set_num_threads(args.threads)
    cfg, worked, backend, out, wall = run_shard(args, overrides)
    bare = HFBackend(args.model, "float32", "cpu", cfg.teacher.max_batch_sequences)
    measured = replay(bare, backend.calls, cfg.teacher.sampling)
    rows = out.trajectories
    stage_tokens = {
        str(n): sum(r.num_tokens for r in rows if r.stage == i) for i, n in ((1, "I"), (2, "II"), (3, "III"))
    }
    for kind in ("I", "II", "III"):
        if kind in measured and measured[kind][0] != stage_tokens[kind]:
            raise SystemExit(
                f"stage {kind}: the full-batch replay generated {measured[kind][0]} tokens, the shard "
                f"{stage_tokens[kind]}: not the same rows, so not like for like"
            )
    buckets = defaultdict(int)
    for stats in out.stats.values():
        buckets[stats.bucket] += 1
    stage3 = [r for r in rows if r.stage == 3]
    kept3 = [r for r in stage3 if r.kept]
    extreme = [p for p, s in out.stats.items() if s.bucket == "extremely_hard"]
    rescued = {r.problem_id for r in kept3}
    repaired_parents = {r.repair.parent_sample_id for r in stage3 if r.repair}
    tokens3 = sum(r.num_tokens for r in stage3)

    print(
        f"{len(worked)} demo problems ({min(w.steps for w in worked)}-{max(w.steps for w in worked)} steps), "
        f"teacher {args.model}; N={cfg.teacher.sampling.n}, hints.n={cfg.hints.n}, GEAR "
        f"{cfg.gear.failed_paths} paths x {cfg.gear.continuations} continuations, waves of "
        f"{cfg.gear.wave_paths} path(s); {wall:.0f} s wall on {torch.get_num_threads()} threads"
    )
    print(f"buckets: {dict(buckets)}")
    print()
    print(
        "| teacher work | calls | done in the shard | shard s | shard rate | full-batch s | full-batch rate | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, (done, shard_s, full_s) in measured.items():
        unit = "tokens" if kind in ("I", "II", "III") else "trajectories"
        name = f"Stage {kind} generation" if unit == "tokens" else kind
        calls = sum(k == kind for k, _, _ in backend.calls)
        print(
            f"| {name} | {calls} | {done:,} {unit} | {shard_s:.1f} | {done / shard_s:,.0f}/s | {full_s:.1f} | "
            f"{done / full_s:,.0f}/s | {full_s / shard_s:.2f} |"
        )
    generation = [measured[k] for k in ("I", "II", "III") if k in measured]
    total, shard_s, full_s = (sum(x[i] for x in generation) for i in range(3))
    print(
        f"| all generation | {sum(k in ('I', 'II', 'III') for k, _, _ in backend.calls)} | {total:,} tokens | "
        f"{shard_s:.1f} | {total / shard_s:,.0f}/s | {full_s:.1f} | {total / full_s:,.0f}/s | {full_s / shard_s:.2f} |"
    )
    print()
    print("| stage | samples | tokens generated | verified | kept | tokens per kept sample |")
    print("|---|---|---|---|---|---|")
    for stage, name in ((1, "I (unaided)"), (2, "II (hint)"), (3, "III (GEAR)")):
        these = [r for r in rows if r.stage == stage]
        tokens = sum(r.num_tokens for r in these)
        kept = sum(r.kept for r in these)
        per_kept = f"{tokens / kept:,.0f}" if kept else "n/a"
        print(f"| {name} | {len(these)} | {tokens:,} | {sum(r.verified for r in these)} | {kept} | {per_kept} |")
    print()
    print("| GEAR | count |")
    print("|---|---|")
    print(f"| extremely hard problems | {len(extreme)} |")
    print(f"| failed trajectories repaired (breakpoint found) | {len(repaired_parents)} |")
    print(f"| waves | {1 + max((r.hint.wave for r in stage3 if r.hint), default=-1)} |")
    print(f"| skipped (reason in lineage) | {len(out.skips)} |")
    print(f"| continuations | {len(stage3)} |")
    print(f"| verified | {sum(r.verified for r in stage3)} |")
    print(
        f"| verified but leaking the hint | {sum(r.verified and bool(r.hint and r.hint.leaked_hint) for r in stage3)} |"
    )
    print(f"| rejected by PURE | {sum(r.pure is not None and not r.pure.kept for r in stage3)} |")
    print(f"| kept | {len(kept3)} |")
    print(f"| problems rescued (>= 1 kept repair) | {len(rescued)} of {len(extreme)} |")
    if rescued:
        print(f"| teacher tokens per rescued problem | {tokens3 / len(rescued):,.0f} |")
    if args.all_at_once:
        _, _, _, once, once_wall = run_shard(args, [*overrides, f"gear.wave_paths={cfg.gear.failed_paths}"])
        once3 = [r for r in once.trajectories if r.stage == 3]
        same = sorted(r.sample_id for r in once3 if r.kept) == sorted(r.sample_id for r in kept3)
        once_tokens = sum(r.num_tokens for r in once3)
        print(f"| all paths in one wave: continuations, tokens, s | {len(once3)}, {once_tokens:,}, {once_wall:.0f} |")
        print(
            f"| all paths in one wave: teacher tokens per kept repair | "
            f"{once_tokens / max(1, sum(r.kept for r in once3)):,.0f} |"
        )
        print(f"| kept repairs the same rows as in one wave | {'yes' if same else 'NO'} |")
        if not same:
            raise SystemExit("waves changed the kept repairs")
    print()
    if kept3:
        print(f"teacher tokens per kept Stage III sample: {tokens3 / len(kept3):,.0f}")
    else:
        print(
            f"teacher tokens per kept Stage III sample: n/a (0 kept of {len(stage3)} continuations, {tokens3} tokens)"
        )


if __name__ == "__main__":
    main()
