"""The demo task: chains of additions and subtractions on two-digit numbers, where a hard problem opens with an
operation the student base has never seen. Every step of any written solution can be checked (``first_wrong_step``).

Why this shape (issue G; measured in ``models/README.md``):

* **Checkable steps.** A solution is ``Start with s.``, one ``a<op>k=b.`` step per operation and ``The final
  answer is \\boxed{v}.``, separated by blank lines (the step rule GEAR and PURE use). A step is right when its
  operation is the problem's next one, ``a`` is the true value so far and ``b`` is the true result, so the ground
  truth of every trajectory the teacher writes is known, and HEAL's components can be graded against it.
* **The hard part comes first.** The unseen operation is always the first step, so a trajectory that goes wrong
  there goes wrong inside the breakpoint search span (the first third of its tokens). Chains are long enough
  (``STEPS``) that the first two steps are well under half of that span: a breakpoint that finds the wrong step
  does measurably better than a random position.
* **Values stay in 0..99.** An operation that would leave the range is drawn again, so every number is two digits
  at most and the chain's difficulty is the unseen step, not the size of the numbers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from heal_core.entropy import split_steps
from heal_core.problems import Problem

LOW, HIGH = 0, 99  # every value of a chain
EASY_OPERANDS = (1, 20)
STEPS = (10, 12)  # operations per chain in the generation and eval splits
SOURCE = "arithmetic"  # Problem.source of the demo's problems

# The unseen operation: "#k" adds k tens (47#3 = 77). Drawn only where the tens digit stays a digit, so it never
# carries: the student has to learn a new rule, not new arithmetic.
HARD_SYMBOL = "#"


@dataclass(frozen=True)
class Op:
    symbol: str  # "+", "-" or HARD_SYMBOL
    operand: int

    def apply(self, value: int) -> int:
        if self.symbol == "+":
            return value + self.operand
        if self.symbol == "-":
            return value - self.operand
        return value + 10 * self.operand

    def __str__(self) -> str:
        return f"{self.symbol}{self.operand}"


@dataclass(frozen=True)
class Chain:
    start: int
    ops: tuple[Op, ...]

    @property
    def hard(self) -> bool:
        return any(op.symbol == HARD_SYMBOL for op in self.ops)

    def values(self, first: int | None = None) -> list[int]:
        """Value before each operation and after the last; ``first`` replaces the first operation's result
        (a solution that got the first step wrong and computed the rest right from there)."""
        out = [self.start]
        for i, op in enumerate(self.ops):
            out.append(first if i == 0 and first is not None else op.apply(out[-1]))
        return out

    def problem_text(self) -> str:
        return f"Start with {self.start}, then apply in order: {', '.join(map(str, self.ops))}. What is the result?"


def solution(chain: Chain, values: Sequence[int] | None = None, boxed: int | None = None) -> str:
    """The worked solution; ``values`` (from ``Chain.values``) and ``boxed`` write a wrong one on purpose: the
    teacher's training targets include wrong and shortcut solutions (``heal_core/demo/teacher.py``)."""
    values = list(values) if values is not None else chain.values()
    lines = [f"Start with {values[0]}."]
    lines += [f"{a}{op}={b}." for a, op, b in zip(values, chain.ops, values[1:], strict=False)]
    lines.append(f"The final answer is \\boxed{{{values[-1] if boxed is None else boxed}}}.")
    return "\n\n".join(lines)


@dataclass(frozen=True)
class Worked:
    problem: Problem
    chain: Chain
    solution: str

    @property
    def steps(self) -> int:
        return len(self.chain.ops)

    @property
    def hard(self) -> bool:
        return self.chain.hard


def _easy_op(rng: random.Random, value: int) -> Op:
    while True:
        op = Op(rng.choice("+-"), rng.randint(*EASY_OPERANDS))
        if LOW <= op.apply(value) <= HIGH:
            return op


def _hard_op(rng: random.Random, value: int) -> Op | None:
    room = 9 - value // 10
    return Op(HARD_SYMBOL, rng.randint(1, room)) if room >= 1 else None


def wrong_firsts(chain: Chain) -> list[int]:
    """Every wrong result of the first operation from which the rest of the chain stays in 0..99 (a solution
    that slips there and computes on correctly never needs a number the task does not have)."""
    offsets = [0]
    for op in chain.ops[1:]:
        offsets.append(offsets[-1] + (op.operand if op.symbol == "+" else -op.operand))
    right = chain.ops[0].apply(chain.start)
    return [v for v in range(LOW, HIGH + 1) if v != right and all(LOW <= v + o <= HIGH for o in offsets)]


MIN_WRONG_FIRSTS = 10  # a hard chain leaves room for this many slips at its first step


def make_chain(rng: random.Random, steps: int, hard: bool) -> Chain:
    """A chain of ``steps`` operations; a hard one opens with ``#`` and leaves room for ``MIN_WRONG_FIRSTS``."""
    while True:
        start = value = rng.randint(10, HIGH)
        ops = []
        if hard:
            first = _hard_op(rng, value)
            if first is None:
                continue
            ops.append(first)
            value = first.apply(value)
        while len(ops) < steps:
            ops.append(_easy_op(rng, value))
            value = ops[-1].apply(value)
        chain = Chain(start, tuple(ops))
        if not hard or len(wrong_firsts(chain)) >= MIN_WRONG_FIRSTS:
            return chain


def make_problems(count: int, seed: int, steps: tuple[int, int] = STEPS, hard_share: float = 0.5) -> list[Worked]:
    """``count`` problems; problem i is hard when ``i * hard_share`` crosses an integer, so every prefix of the
    list holds the stated share (``hard_share=0.4``: 2 of every 5)."""
    out = []
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        hard = int((i + 1) * hard_share) > int(i * hard_share)
        chain = make_chain(rng, rng.randint(*steps), hard)
        problem = Problem(
            problem_id=f"arith-{seed}-{i}",
            problem=chain.problem_text(),
            answer=str(chain.values()[-1]),
            source=SOURCE,
            metadata={"kind": "hard" if hard else "easy"},
        )
        out.append(Worked(problem, chain, solution(chain)))
    return out


_PROBLEM = re.compile(r"^Start with (\d+), then apply in order: (.*)\. What is the result\?$")
_OP = re.compile(rf"^([+\-{re.escape(HARD_SYMBOL)}])(\d+)$")


def parse_problem(text: str) -> Chain | None:
    """The chain a demo problem text states (the prompt may carry more, e.g. a hint line after it); None when
    the text is not a demo problem."""
    match = _PROBLEM.match(text.strip().splitlines()[0] if text.strip() else "")
    if match is None:
        return None
    ops = []
    for part in match.group(2).split(", "):
        op = _OP.match(part)
        if op is None:
            return None
        ops.append(Op(op.group(1), int(op.group(2))))
    return Chain(int(match.group(1)), tuple(ops))


def first_wrong_step(problem: str, text: str) -> int | None:
    """Index of the first wrong step of ``text`` (a solution of the demo problem ``problem``), counted as
    ``heal_core.entropy.split_steps`` counts segments (0 = the ``Start with`` line), or None when every step is
    right. A step is right when it is the correct solution's step at that place: the problem's next operation,
    applied to the true value so far, with the true result. So a missing or extra step is wrong where it stands,
    and so is an answer line that boxes the gold answer after steps that computed something else."""
    chain = parse_problem(problem)
    if chain is None:
        raise ValueError(f"not a demo arithmetic problem: {problem[:80]!r}")
    expected = [s.strip() for s in split_steps(solution(chain))]
    segments = [s.strip() for s in split_steps(text)]
    for i, want in enumerate(expected):
        if i >= len(segments) or segments[i] != want:
            return i
    return len(expected) if len(segments) > len(expected) else None
