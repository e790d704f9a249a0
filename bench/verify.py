"""Verification throughput: heal's timeout-safe ``check_many`` vs bare Math-Verify in the main thread.

The answers are trajectory-like texts (a few hundred characters of steps, then ``\\boxed{}``) over a mix of
answer forms (integers, fractions, roots, intervals, expressions, thousands separators), several samples per
problem, correct and wrong.

* bare: ``verify(parse(gold), parse(text))`` per answer in the main thread, as Math-Verify's README
  writes it (its own signal-based timeouts on), and a second bare row that parses each gold answer once;
* ``check_many``: heal's verifier (boxed-answer extraction, normalisation, one pebble task per answer on
  a spawned process pool with a hard per-answer timeout). ``cold`` includes starting the pool (the first
  call in a process), ``warm`` is every later call.

Verdicts of both are counted (they differ where heal's rules differ: no box, normalisation).

    python bench/verify.py [--answers 2000] [--samples 8] [--workers N] [--quick]

Last line: the headline ratio, warm ``check_many`` answers/s divided by bare answers/s.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time

from math_verify import parse, verify

from heal_core import verify as heal_verify
from heal_core.verify import check_many

# (gold, a correct rendering, wrong renderings)
FORMS = [
    ("72", "72", ["71", "720"]),
    ("\\frac{3}{4}", "\\dfrac{3}{4}", ["\\frac{4}{3}", "0.7"]),
    ("2\\sqrt{3}", "\\sqrt{12}", ["3\\sqrt{2}", "2\\sqrt{2}"]),
    ("(1, 2]", "(1,2]", ["[1, 2]", "(1, 2)"]),
    ("x^2 + 2x + 1", "(x+1)^2", ["x^2 + 1", "(x-1)^2"]),
    ("10080", "10,\\!080", ["10800", "1008"]),
    ("\\pi/2", "\\frac{\\pi}{2}", ["\\pi", "2\\pi"]),
    ("-5", "-5", ["5", "-6"]),
    ("0.25", "\\frac{1}{4}", ["0.5", "\\frac{1}{5}"]),
    ("\\{1, 3\\}", "\\{3, 1\\}", ["\\{1, 2\\}", "\\{1\\}"]),
]


def answers(count: int, samples: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` (prediction text, gold) pairs, ``samples`` per problem, about half of them correct."""
    rng = random.Random(seed)
    pairs = []
    problem = 0
    while len(pairs) < count:
        gold, right, wrongs = FORMS[problem % len(FORMS)]
        for _ in range(min(samples, count - len(pairs))):
            steps = "\n\n".join(
                f"Step {i + 1}: {rng.randint(2, 99)} \\times {rng.randint(2, 9)} = {rng.randint(100, 999)}, "
                f"so we carry the {rng.randint(1, 9)} and continue."
                for i in range(rng.randint(3, 12))
            )
            answer = right if rng.random() < 0.5 else rng.choice(wrongs)
            pairs.append((f"{steps}\n\nThe final answer is $\\boxed{{{answer}}}$.", gold))
        problem += 1
    return pairs


def bare(pairs: list[tuple[str, str]], cache_gold: bool) -> list[bool]:
    parsed: dict[str, list] = {}
    out = []
    for text, gold in pairs:
        if cache_gold:
            gold_parsed = parsed.get(gold)
            if gold_parsed is None:
                gold_parsed = parsed[gold] = parse(f"${gold}$")
        else:
            gold_parsed = parse(f"${gold}$")
        out.append(bool(verify(gold_parsed, parse(text))))
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=8, help="answers per problem (same gold answer)")
    parser.add_argument("--workers", type=int, default=None, help="check_many's pool size (default: its own)")
    parser.add_argument("--repeats", type=int, default=2, help="warm runs per side; the best counts")
    parser.add_argument("--quick", action="store_true", help="smallest settings (CI): checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.answers, args.repeats = 40, 1
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    pairs = answers(args.answers, args.samples)

    bare(pairs[: len(FORMS) * args.samples], cache_gold=False)  # warm-up: Math-Verify's first parses build its grammars
    cold, verdicts = timed(lambda: check_many(pairs, workers=args.workers))
    workers = heal_verify._pools[os.getpid()][0]  # the pool size check_many chose
    rows: dict[str, list[float]] = {"bare": [], "bare, gold parsed once": [], "check_many, warm": []}
    for _ in range(args.repeats):
        seconds, bare_verdicts = timed(lambda: bare(pairs, cache_gold=False))
        rows["bare"].append(seconds)
        seconds, _ = timed(lambda: bare(pairs, cache_gold=True))
        rows["bare, gold parsed once"].append(seconds)
        seconds, verdicts = timed(lambda: check_many(pairs, workers=args.workers))
        rows["check_many, warm"].append(seconds)

    agree = sum(v.correct == b for v, b in zip(verdicts, bare_verdicts))
    print(
        f"{len(pairs)} answers, {args.samples} per problem; check_many on {workers} worker processes, "
        f"{os.cpu_count()} CPUs; best of {args.repeats}"
    )
    print(
        f"correct: check_many {sum(v.correct for v in verdicts)}, bare {sum(bare_verdicts)}; "
        f"verdicts agree on {agree}/{len(pairs)}"
    )
    print()
    print("| verifier | best s | answers/s |")
    print("|---|---|---|")
    print(f"| check_many, cold (pool start included) | {cold:.2f} | {len(pairs) / cold:,.0f} |")
    for name, times in rows.items():
        print(f"| {name} | {min(times):.2f} | {len(pairs) / min(times):,.0f} |")
    print()
    ratio = min(rows["bare"]) / min(rows["check_many, warm"])
    print(f"check_many/bare answers/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
