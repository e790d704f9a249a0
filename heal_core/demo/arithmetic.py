"""Multi-step integer arithmetic with a difficulty knob and verifiable answers.

Why arithmetic: the answer is exact, a solution is naturally a sequence of steps (one operation per
blank-line-separated step, ending in ``\\boxed{}``), and difficulty grows smoothly with the number of steps,
which is what a teacher ceiling needs. Everything is a pure function of (seed, index, knobs).

Values stay within ``0..max_value``: an operation that would leave that range is drawn again. Without the
bound a chain of multiplications reaches six digits by step 7, so difficulty (and sequence length, which is
CPU time) would be driven by number size rather than by the number of steps.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from heal_core.problems import Problem

_OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Worked:
    problem: Problem
    solution: str  # steps separated by blank lines, ending with \boxed{answer}
    steps: int
    max_operand: int


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def make_problem(seed: int, index: int, steps: int, max_operand: int = 30, max_value: int = 999) -> Worked:
    """Start from a number and apply ``steps`` operations; each step of the solution applies one.

    ``+``/``-`` take an operand in ``1..max_operand``, ``*`` one in ``2..9``. The last step is worded as
    PURE's default ``answer_lead`` ("The final answer is \\boxed{"), so PURE's forced-answer scoring reads
    a teacher trained on these solutions in its own words.
    """
    rng = random.Random(f"{seed}:{index}:{steps}:{max_operand}:{max_value}")
    start = value = rng.randint(2, 20)
    ops = []
    lines = [f"Start with {value}."]
    for _ in range(steps):
        while True:
            op = rng.choice(_OPS)
            operand = rng.randint(2, 9) if op == "*" else rng.randint(1, max_operand)
            new = _apply(value, op, operand)
            if 0 <= new <= max_value:
                break
        ops.append(f"{op} {operand}")
        lines.append(f"{value} {op} {operand} = {new}.")
        value = new
    text = f"Start with {start}, then apply in order: {', '.join(ops)}. What is the result?"
    lines.append(f"The final answer is \\boxed{{{value}}}.")
    problem = Problem(problem_id=f"arith-{seed}-{steps}-{index}", problem=text, answer=str(value), source="arithmetic")
    return Worked(problem, "\n\n".join(lines), steps, max_operand)


def make_problems(
    count: int,
    seed: int = 0,
    min_steps: int = 2,
    max_steps: int = 6,
    max_operands: Sequence[int] = (30,),
    max_value: int = 999,
) -> list[Worked]:
    """``count`` problems whose step counts cycle through ``min_steps..max_steps``, each cycle taking the next
    operand-size tier of ``max_operands``, so every (steps, tier) cell is equally represented."""
    span = max_steps - min_steps + 1
    return [
        make_problem(seed, i, min_steps + i % span, max_operands[i // span % len(max_operands)], max_value)
        for i in range(count)
    ]
