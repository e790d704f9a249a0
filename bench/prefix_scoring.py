"""PURE's scoring cost: packed cached-prefix scoring vs one forward pass vs the naive K+1 passes.

For a trajectory of K steps, PURE needs the answer's log-probs after every step prefix. Naive: one full
forward per prefix, O(K * L) tokens. Ours (``HFBackend.score_prefixes``): one pass that fills the KV cache,
then packed passes over the answers, O(L + K * A). The table shows both against a single forward over the
whole trajectory (the floor); the last line is the headline ratio at the largest K.

    python bench/prefix_scoring.py [--model PATH] [--ks 5 10 20 40] [--step-words 0] [--device cpu|cuda] [--quick]

Packed costs about (L + K * A) / L one passes for steps of L / K tokens and an answer probe of A tokens, so
it nears one pass once a step is several times longer than the probe; ``--step-words`` lengthens the steps.

Last line: packed / one pass at the largest K (goal <= 1.5x) and naive / packed there.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from heal_core.backends.base import PrefixQuery
from heal_core.backends.hf import HFBackend
from heal_core.testing import build_tiny_model

LEAD, ANSWER, PROMPT = "\n\nThe final answer is \\boxed{", "1234", "Start with 7, then apply 40 operations."
FILLER = "so we carry the digit , check the sum again and write the result down before the next step".split()  # noqa: SIM905


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
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best counts")
    parser.add_argument(
        "--step-words",
        type=int,
        default=0,
        help="explanatory words added to each step (default 0: bare 'a * b = c.' steps of ~12 tokens, "
        "shorter than the answer probe; real reasoning steps are longer)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="smallest settings (CI): checks the script runs")
    args = parser.parse_args()
    hidden, layers = 128, 4
    if args.quick:
        args.ks, args.repeats, hidden, layers = [2, 5], 1, 64, 2
        args.threads = 1  # a tiny model gains nothing from more, and threads stall on a busy machine
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or str(build_tiny_model(tempfile.mkdtemp(), "qwen2", hidden_size=hidden, layers=layers))
    backend = HFBackend(model, dtype="float32" if args.device == "cpu" else "bfloat16", device=args.device)
    rng = np.random.default_rng(0)
    print(f"{backend.device}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print()
    probe = len(backend.tokenizer.encode(LEAD + ANSWER, add_special_tokens=False))
    print(f"answer probe (lead + answer): {probe} tokens")
    print()
    print("| K | tokens | tokens/step | one pass ms | packed ms | naive ms | packed/one | naive/one |")
    print("|---|---|---|---|---|---|---|---|")
    for k in args.ks:
        segments = [
            ("\n\n" if j else "")
            + f"{rng.integers(10, 99)} * {rng.integers(2, 9)} = {rng.integers(100, 999)}"
            + "".join(f" {FILLER[(j + w) % len(FILLER)]}" for w in range(args.step_words))
            + "."
            for j in range(k)
        ]
        text = "".join(segments)
        tokens = len(backend.tokenizer.encode(text))
        for warm_up in (
            lambda text=text: backend.score(PROMPT, text),
            lambda segments=segments: backend.score_prefixes([PrefixQuery(PROMPT, tuple(segments), LEAD, ANSWER)]),
        ):
            warm_up()  # untimed
        one = best(lambda text=text: backend.score(PROMPT, text), args.repeats)
        packed = best(
            lambda segments=segments: backend.score_prefixes([PrefixQuery(PROMPT, tuple(segments), LEAD, ANSWER)]),
            args.repeats,
        )
        slow = best(lambda segments=segments: naive(backend, segments), args.repeats)
        print(
            f"| {k} | {tokens} | {tokens / k:.0f} | {one * 1e3:.1f} | {packed * 1e3:.1f} | {slow * 1e3:.1f} | "
            f"{packed / one:.2f} | {slow / one:.2f} |"
        )
    print()
    print(f"at K={k}: packed/one pass {packed / one:.2f}x (goal <= 1.5x), naive/packed {slow / packed:.1f}x")


if __name__ == "__main__":
    main()
