"""PURE on a labelled set: genuine trajectories vs constructed shortcuts, scored by the bundled teacher.

Genuine: verified unaided teacher samples of the demo task. Shortcuts, each built from a genuine one so the
final answer stays correct and only the support changes:
  * dropped   -- every intermediate step removed (start, then the answer);
  * corrupted -- every intermediate result replaced by a wrong number, the correct answer still stated;
  * early     -- the answer stated after the first half of the steps.
Prints the AUROC of the forced-answer ratio R (higher R = shortcut), precision/recall of PURE's rejections at
the configured lambda, and per-kind recall. Last line: the headline AUROC.

    python bench/pure.py [--problems 40] [--n 8] [--model PATH] [--set pure.lam=0.2 ...]
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
from heal_core.demo import bundled_model, demo_problems
from heal_core.demo.teacher import demo_config
from heal_core.config import parse_config
from heal_core.entropy import split_steps
from heal_core.verify import check_many

NUMBER = re.compile(r"-?\d+")


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting half (Mann-Whitney U)."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--model", default=str(bundled_model("teacher")), help="teacher (default: the bundled one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(2)
    base = demo_config()
    cfg = parse_config(base.model_dump(mode="json"), args.overrides).pure
    backend = HFBackend(args.model, dtype="float32", device="cpu")
    problems = demo_problems("generation")[: args.problems]
    sampling = base.teacher.sampling.model_copy(update={"n": args.n, "seed": 1})
    prompts = [base.teacher.prompt_template.format(problem=p.problem) for p in problems]

    started = time.perf_counter()
    batches = backend.sample(prompts, args.n, sampling)
    rng = random.Random(0)
    labelled: list[tuple[str, str, str, str]] = []  # (kind, prompt, text, answer)
    for problem, prompt, gens in zip(problems, prompts, batches, strict=True):
        verdicts = check_many([(g.text, problem.answer) for g in gens])
        genuine = next((g.text for g, v in zip(gens, verdicts, strict=True) if v.correct and len(split_steps(g.text)) >= 4), None)
        if genuine is None:
            continue
        labelled.append(("genuine", prompt, genuine, problem.answer))
        labelled += [(kind, prompt, text, problem.answer) for kind, text in shortcuts(genuine, rng).items()]

    results = [(kind, pure.score(backend, prompt, text, answer, cfg)) for kind, prompt, text, answer in labelled]
    elapsed = time.perf_counter() - started
    genuine_r = [r.ratio for k, r in results if k == "genuine"]
    shortcut_r = [r.ratio for k, r in results if k != "genuine"]
    rejected = [(k, not r.kept) for k, r in results]
    tp = sum(rej for k, rej in rejected if k != "genuine")
    fp = sum(rej for k, rej in rejected if k == "genuine")
    print(f"trajectories: {len(genuine_r)} genuine, {len(shortcut_r)} shortcuts ({elapsed:.0f} s on {torch.get_num_threads()} threads)")
    print(f"lambda={cfg.lam} eps={cfg.eps}")
    print(f"{'kind':<10} {'count':>5} {'median R':>9} {'rejected':>9}")
    for kind in ("genuine", "dropped", "corrupted", "early"):
        rows = [(r.ratio, not r.kept) for k, r in results if k == kind]
        if rows:
            print(f"{kind:<10} {len(rows):>5} {np.median([x for x, _ in rows]):>9.3f} {np.mean([y for _, y in rows]):>9.1%}")
    print(f"precision of rejections: {tp / max(1, tp + fp):.3f}   recall on shortcuts: {tp / max(1, len(shortcut_r)):.3f}")
    print(f"PURE AUROC (R, genuine vs shortcut): {auroc(shortcut_r, genuine_r):.3f}")


if __name__ == "__main__":
    main()
