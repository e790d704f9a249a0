"""PURE graded against the truth: the pipeline's own hinted samples, then constructed shortcuts.

1. **The pipeline's own samples.** The first ``--problems`` demo generation problems go through
   ``heal_core.shard.generate_shard`` (Stage I, buckets, Stage II hints, GEAR, PURE) with the bundled teacher and
   the embedded default, exactly as ``heal run`` does. Every verified hinted sample PURE scored (Stages II and III)
   is labelled by the demo's step checker: a shortcut has a wrong step. Printed: counts, precision and recall of
   PURE's rejections, and the AUROC of ``pure.shortcut_score`` (``heal_core/truth.py``), per stage and together.
2. **Constructed shortcuts** (a second table), each built from a verified unaided sample so the answer stays right
   and only the support changes: ``dropped`` (every intermediate step removed), ``corrupted`` (every intermediate
   result replaced by a wrong number), ``early`` (the answer stated after the first half of the steps). AUROC of R.

    python bench/pure.py [--problems 40] [--n 8] [--model PATH] [--set pure.lam=0.2 ...]

Last line: the headline figure, PURE's AUROC on the pipeline's own hinted samples.
"""

from __future__ import annotations

import argparse
import random
import re
import time

import numpy as np
import torch

from heal_core import pure
from heal_core.backends.hf import HFBackend
from heal_core.config import parse_config
from heal_core.demo import bundled_model, demo_defaults, demo_problems
from heal_core.demo.arithmetic import first_wrong_step
from heal_core.entropy import split_steps
from heal_core.shard import generate_shard
from heal_core.truth import Truth, auroc, pure_audit

NUMBER = re.compile(r"-?\d+")


def shortcuts(text: str, rng: random.Random) -> dict[str, str]:
    steps = split_steps(text)
    if len(steps) < 4:
        return {}
    first, middle, last = steps[0], steps[1:-1], steps[-1]
    corrupted = []
    for step in middle:
        numbers = NUMBER.findall(step)
        wrong = str(int(numbers[-1]) + rng.choice([-1, 1]) * rng.randint(1, 9)) if numbers else "0"
        head, _, tail = step.rpartition(numbers[-1]) if numbers else (step, "", "")
        corrupted.append(head + wrong + tail)
    return {
        "dropped": first + last,
        "corrupted": first + "".join(corrupted) + last,
        "early": first + "".join(middle[: len(middle) // 2]) + last,
    }


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--model", default=str(bundled_model("teacher")), help="teacher (default: the bundled one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = parse_config(demo_defaults(), [f"teacher.sampling.n={args.n}", f"hints.n={args.n}", *args.overrides])
    backend = HFBackend(args.model, dtype="float32", device="cpu", max_batch_sequences=cfg.teacher.max_batch_sequences)
    problems = demo_problems("generation")[: args.problems]

    started = time.perf_counter()
    rows = generate_shard(backend, problems, cfg).trajectories
    truth = Truth({p.problem_id: p for p in problems}, first_wrong_step, backend.decode)
    print(
        f"PURE on the pipeline's own verified hinted samples: {len(problems)} problems, N={args.n} "
        f"({time.perf_counter() - started:.0f} s on {torch.get_num_threads()} threads), "
        f"lambda={cfg.pure.lam} eps={cfg.pure.eps}"
    )
    print("| samples | scored | shortcuts (wrong step) | rejected | precision | recall | AUROC |")
    print("|---|---|---|---|---|---|---|")
    overall = None
    for name, stages in (("Stage II", (2,)), ("Stage III", (3,)), ("II + III", (2, 3))):
        result = pure_audit([r for r in rows if r.stage in stages], truth, cfg)
        print(
            f"| {name} | {result.scored} | {result.wrong} | {result.rejected} | {_rate(result.precision)} "
            f"| {_rate(result.recall)} | {_rate(result.auroc)} |"
        )
        overall = result

    prompts = [cfg.teacher.prompt_template.format(problem=p.problem) for p in problems]
    rng = random.Random(0)
    labelled: list[tuple[str, str, str, str]] = []  # (kind, prompt, text, answer)
    for problem, prompt in zip(problems, prompts, strict=True):
        genuine = next(
            (
                r.text
                for r in rows
                if r.problem_id == problem.problem_id and r.stage == 1 and r.verified and len(split_steps(r.text)) >= 4
            ),
            None,
        )
        if genuine is None:
            continue
        labelled.append(("genuine", prompt, genuine, problem.answer))
        labelled += [(kind, prompt, text, problem.answer) for kind, text in shortcuts(genuine, rng).items()]
    scores = pure.score(backend, [(prompt, text, answer) for _, prompt, text, answer in labelled], cfg.pure)
    results = [(kind, result) for (kind, *_), result in zip(labelled, scores, strict=True)]
    genuine_r = [r.ratio for k, r in results if k == "genuine"]
    shortcut_r = [r.ratio for k, r in results if k != "genuine"]
    print()
    print(f"Constructed shortcuts from {len(genuine_r)} verified unaided samples:")
    print("| kind | count | median R | rejected |")
    print("|---|---|---|---|")
    for kind in ("genuine", "dropped", "corrupted", "early"):
        kept = [(r.ratio, not r.kept) for k, r in results if k == kind]
        if kept:
            print(
                f"| {kind} | {len(kept)} | {np.median([x for x, _ in kept]):.3f} "
                f"| {np.mean([y for _, y in kept]):.1%} |"
            )
    print(f"AUROC of R, genuine vs constructed: {_rate(auroc(shortcut_r, genuine_r))}")
    print(
        f"PURE AUROC on the pipeline's own hinted samples: {_rate(overall.auroc)} "
        f"({overall.scored} scored, {overall.wrong} shortcuts)"
    )


if __name__ == "__main__":
    main()
