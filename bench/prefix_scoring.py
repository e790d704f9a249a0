"""PURE's scoring cost: packed cached-prefix scoring vs one forward pass vs the naive K+1 passes.

For a trajectory of K steps, PURE needs the answer's log-probs after every step prefix. Naive: one full
forward per prefix, O(K * L) tokens. Ours (``HFBackend.score_prefixes``): one pass that fills the KV cache,
then packed passes over the answers, O(L + K * A). The table shows both against a single forward over the
whole trajectory (the floor); the last line is the headline ratio at the largest K.

    python bench/prefix_scoring.py [--model PATH] [--ks 5 10 20 40] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from heal_core.backends.hf import HFBackend
from heal_core.testing import build_tiny_model

LEAD, ANSWER, PROMPT = "\n\nThe final answer is \\boxed{", "1234", "Start with 7, then apply 40 operations."


def best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def naive(backend: HFBackend, segments: list[str]) -> None:
    """The reference: score the answer after each prefix with its own full forward pass."""
    for k in range(len(segments) + 1):
        backend.score(PROMPT, "".join(segments[:k]) + LEAD + ANSWER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: a tiny random Qwen2 built locally")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = args.model or str(build_tiny_model(tempfile.mkdtemp(), "qwen2", hidden_size=128, layers=4))
    backend = HFBackend(model, dtype="float32" if args.device == "cpu" else "bfloat16", device=args.device)
    rng = np.random.default_rng(0)
    print(f"{'K':>4} {'tokens':>7} {'one pass ms':>12} {'packed ms':>10} {'naive ms':>9} {'packed/one':>11} {'naive/one':>10}")
    for k in args.ks:
        segments = [("\n\n" if j else "") + f"{rng.integers(10, 99)} * {rng.integers(2, 9)} = {rng.integers(100, 999)}."
                    for j in range(k)]
        text = "".join(segments)
        tokens = len(backend.tokenizer.encode(text))
        one = best(lambda: backend.score(PROMPT, text))
        packed = best(lambda: backend.score_prefixes(PROMPT, segments, LEAD, ANSWER))
        slow = best(lambda: naive(backend, segments))
        print(f"{k:>4} {tokens:>7} {one * 1e3:>12.1f} {packed * 1e3:>10.1f} {slow * 1e3:>9.1f} "
              f"{packed / one:>11.2f} {slow / one:>10.2f}")
    print(f"naive/packed at K={k}: {slow / packed:.1f}x")


if __name__ == "__main__":
    main()
