"""Ground truth for runs whose task can check every step: how well HEAL's parts worked, not only what they did.

On real data nobody knows which step of a trajectory is wrong, so a run can report only that GEAR cut somewhere
and that PURE rejected something. A synthetic task with a step checker (the demo's) knows, so a run on it grades
each component against the truth (issue G):

* **breakpoint hit rate**: of the failed trajectories GEAR was to repair whose first wrong step lies inside the
  breakpoint search span, the share whose breakpoint falls in that step or the one before it (a surge just
  before the slip counts: the teacher's uncertainty can rise as it reaches the step), beside the rate of a
  uniformly random position of the same span. A skipped path (no surge found) counts as a miss.
* **PURE against truth**, on the run's own verified hinted samples that PURE scored: precision and recall of
  its rejections against "the trajectory has a wrong step", and the AUROC of its score (``pure.shortcut_score``);
* **wrong-step share** of the training examples of each curriculum dataset.

Another checkable task joins ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

from heal_core import pure
from heal_core.config import HealConfig
from heal_core.demo.arithmetic import first_wrong_step, parse_problem
from heal_core.entropy import Decode, span_steps, token_steps
from heal_core.gear import failed_paths
from heal_core.problems import Problem
from heal_core.sampling import problem_stats
from heal_core.stages import Stage
from heal_core.trajectory import Trajectory

# (problem text, trajectory text) -> index of its first wrong step as heal_core.entropy.split_steps counts
# segments, or None when every step is right.
StepChecker = Callable[[str, str], int | None]


@dataclass(frozen=True)
class CheckableTask:
    """A task whose every step can be checked: which problem texts it states, and its step checker. Recognised
    by the problem text, not by ``Problem.source``, so its problems are graded however they reached the run (the
    embedded default, or the same problems exported to a JSONL file)."""

    name: str
    states: Callable[[str], bool]
    check: StepChecker


TASKS = (CheckableTask("demo arithmetic", lambda text: parse_problem(text) is not None, first_wrong_step),)


def checker_for(problems: Sequence[Problem]) -> StepChecker | None:
    """The step checker of the task every one of ``problems`` belongs to, if there is one."""
    return next((task.check for task in TASKS if problems and all(task.states(p.problem) for p in problems)), None)


@dataclass(frozen=True)
class Truth:
    """What grading a run needs: its problems by id, their step checker, and the teacher's ``decode`` (a token
    index of a trajectory is mapped to its step as ``gear.plan_repair`` maps a breakpoint)."""

    problems: Mapping[str, Problem]
    check: StepChecker
    decode: Decode

    def first_wrong(self, problem_id: str, text: str) -> int | None:
        return self.check(self.problems[problem_id].problem, text)

    def wrong_tokens(self, row: Trajectory) -> tuple[int, int] | None:
        """The generated tokens [start, end) of ``row``'s first wrong step; None when it has none."""
        wrong = self.first_wrong(row.problem_id, row.text)
        positions = [t for t, step in enumerate(token_steps(row.text, row.token_ids, self.decode)) if step == wrong]
        return (positions[0], positions[-1] + 1) if wrong is not None and positions else None


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting half: the Mann-Whitney U from
    the ranks of all scores (ties ranked as their average), in memory linear in the scores."""
    if not positive or not negative:
        return None
    values = np.concatenate([np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # 1-based, ties averaged
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class BreakpointAudit:
    """Counts that add up over the shards of a run (``combined``): a shard holds whole problems."""

    failed: int  # failed Stage I trajectories of all problems
    failed_located: int  # ... whose first wrong step lies inside the search span
    paths: int  # failed paths GEAR reached (a wave repaired them), with their first wrong step inside the span
    hits: int  # ... whose breakpoint fell in that step or the one before it
    chances: float  # the sum over those paths of a uniformly random span position's chance of a hit

    @property
    def hit_rate(self) -> float | None:
        return _ratio(self.hits, self.paths)

    @property
    def random_rate(self) -> float | None:
        """A uniformly random span position's chance of the same, averaged over the paths."""
        return self.chances / self.paths if self.paths else None


def breakpoint_audit(rows: Sequence[Trajectory], truth: Truth, cfg: HealConfig) -> BreakpointAudit:
    """``rows``: every trajectory of the run."""
    fraction = cfg.gear.search_fraction
    stage1 = [r for r in rows if r.stage == Stage.BASE]
    failed = [r for r in stage1 if not r.verified]
    located: dict[str, tuple[int, list[int]]] = {}  # sample id -> (first wrong step, span steps)
    for row in failed:
        wrong = truth.first_wrong(row.problem_id, row.text)
        steps = span_steps(row.text, row.token_ids, truth.decode, fraction)
        if wrong is not None and wrong in steps:
            located[row.sample_id] = (wrong, steps)
    breakpoints = {r.repair.parent_sample_id: r.repair.breakpoint_step for r in rows if r.repair is not None}
    extreme = {pid for pid, s in problem_stats(stage1, cfg).items() if s.bucket == "extremely_hard"}
    by_problem: dict[str, list[Trajectory]] = {}
    for row in stage1:
        by_problem.setdefault(row.problem_id, []).append(row)
    # A path of a problem that filled its cap before GEAR's wave reached it was never cut: not GEAR's to grade.
    # A path GEAR reached and skipped for want of a surge counts as a miss where a later path of its problem was cut.
    paths = []
    for pid in extreme:
        candidates = failed_paths(by_problem[pid], cfg.gear.failed_paths)
        reached = max((i for i, p in enumerate(candidates) if p.sample_id in breakpoints), default=-1)
        paths += [p for p in candidates[: reached + 1] if p.sample_id in located]
    hits, chances = 0, []
    for path in paths:
        wrong, steps = located[path.sample_id]
        hits += breakpoints.get(path.sample_id) in (wrong - 1, wrong)
        chances.append(sum(s in (wrong - 1, wrong) for s in steps) / len(steps))
    return BreakpointAudit(len(failed), len(located), len(paths), hits, float(sum(chances)))


@dataclass(frozen=True)
class PureAudit:
    """Counts and scores that add up over the shards of a run (``combined``)."""

    scored: int  # verified hinted samples (Stages II and III) PURE scored
    wrong: int  # ... with a wrong step by the checker: the shortcuts
    rejected: int
    true_rejections: int  # rejected and wrong
    positive: tuple[float, ...]  # pure.shortcut_score of the shortcuts
    negative: tuple[float, ...]  # ... and of the scored samples without a wrong step

    @property
    def precision(self) -> float | None:
        return _ratio(self.true_rejections, self.rejected)

    @property
    def recall(self) -> float | None:
        return _ratio(self.true_rejections, self.wrong)

    @property
    def auroc(self) -> float | None:
        """Of PURE's score against "has a wrong step"."""
        return auroc(self.positive, self.negative)


def pure_audit(rows: Sequence[Trajectory], truth: Truth, cfg: HealConfig) -> PureAudit:
    """Only samples PURE scored count: the leaking ones and those past a problem's cap never reached it."""
    scored = [(r, r.pure) for r in rows if r.verified and r.pure is not None]
    wrong = [truth.first_wrong(r.problem_id, r.text) is not None for r, _ in scored]
    rejected = [not judged.kept for _, judged in scored]
    scores = [pure.shortcut_score(judged.answer_nll, judged.step_ppl, cfg.pure) for _, judged in scored]
    return PureAudit(
        scored=len(scored),
        wrong=sum(wrong),
        rejected=sum(rejected),
        true_rejections=sum(w and x for w, x in zip(wrong, rejected, strict=True)),
        positive=tuple(s for s, w in zip(scores, wrong, strict=True) if w),
        negative=tuple(s for s, w in zip(scores, wrong, strict=True) if not w),
    )


Audit = TypeVar("Audit", BreakpointAudit, PureAudit)


def combined(parts: Sequence[Audit]) -> Audit:
    """One audit of the parts' rows: the shards' audits summed field by field (scores concatenated)."""
    first = parts[0]
    return type(first)(
        *(sum((getattr(p, f.name) for p in parts), type(getattr(first, f.name))()) for f in fields(first))
    )


def wrong_step_share(examples: Iterable[Mapping[str, Any]], truth: Truth) -> float | None:
    """Share of curriculum examples (TRL prompt-completion rows, read one at a time) whose completion has a wrong
    step."""
    seen = wrong = 0
    for example in examples:
        seen += 1
        wrong += truth.first_wrong(example["problem_id"], example["completion"][0]["content"]) is not None
    return wrong / seen if seen else None


@dataclass(frozen=True)
class TruthAudit:
    breakpoints: BreakpointAudit
    pure: PureAudit
    # training set -> share of its examples with a wrong step; a set is stage<k> (the examples stage k added),
    # stage<k>_no_pure (the same selected without PURE) or a variant's name (all it trains on)
    wrong_steps: dict[str, float | None]

    def summary(self) -> dict[str, Any]:
        """The figures for summary.json, as numbers (rates rounded to 4 places; None where nothing was graded):
        ``figures`` says how each is shown."""
        b, p = self.breakpoints, self.pure
        return {
            "failed_trajectories": b.failed,
            "failed_located": b.failed_located,
            "breakpoint_paths": b.paths,
            "breakpoint_hits": b.hits,
            "breakpoint_hit_rate": _round(b.hit_rate),
            "breakpoint_hit_rate_random": _round(b.random_rate),
            "pure_scored": p.scored,
            "pure_shortcuts": p.wrong,
            "pure_precision": _round(p.precision),
            "pure_recall": _round(p.recall),
            "pure_auroc": _round(p.auroc),
            "wrong_step_share": {name: _round(share) for name, share in self.wrong_steps.items()},
        }

    def markdown(self) -> list[str]:
        b, p = self.breakpoints, self.pure
        lines = [
            "## Ground truth (step checker)",
            "",
            "This task can check every step, so HEAL's components are graded against the truth.",
            "",
            "| check | value |",
            "|---|---|",
            f"| failed Stage I trajectories whose first wrong step is in the search span | "
            f"{_share(b.failed_located, b.failed)} |",
            f"| breakpoint hit rate (in the first wrong step or the one before), GEAR's paths | "
            f"{_fraction(b.hits, b.paths)} |",
            f"| same, a uniformly random position of the span | {_rate(b.random_rate)} |",
            f"| verified hinted samples (II, III) PURE scored / with a wrong step | {p.scored} / "
            f"{_share(p.wrong, p.scored)} |",
            f"| PURE precision / recall of its rejections | {_rate(p.precision)} / {_rate(p.recall)} |",
            f"| PURE AUROC (shortcut score vs wrong step) | {_rate(p.auroc)} |",
        ]
        if self.wrong_steps:
            lines += ["", "Share of training examples with a wrong step:", "", "| training set | share |", "|---|---|"]
            lines += [f"| {set_label(name)} | {_rate(share)} |" for name, share in self.wrong_steps.items()]
        return lines


def figures(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of ``TruthAudit.summary``'s figures: the CLI's and the artifact's table."""
    s = summary
    return [
        ("failed trajectories located in the search span", _share(s["failed_located"], s["failed_trajectories"])),
        ("breakpoint hit rate", _rate(s["breakpoint_hit_rate"])),
        ("breakpoint hit rate, random position", _rate(s["breakpoint_hit_rate_random"])),
        ("breakpoint paths audited", str(s["breakpoint_paths"])),
        ("hinted samples scored by PURE", str(s["pure_scored"])),
        ("shortcuts among them (wrong step)", _share(s["pure_shortcuts"], s["pure_scored"])),
        ("PURE precision", _rate(s["pure_precision"])),
        ("PURE recall", _rate(s["pure_recall"])),
        ("PURE AUROC", _rate(s["pure_auroc"])),
        *((f"wrong-step share {set_label(name)}", _rate(share)) for name, share in s["wrong_step_share"].items()),
    ]


_NEW_EXAMPLES = {
    "stage1": "Stage I's kept samples",
    "stage2": "Stage II's new examples",
    "stage3": "GEAR's new examples",
}


def set_label(name: str) -> str:
    """A training set's name as people read it: ``stage3`` is "GEAR's new examples" (the examples Stage III
    added to PACE's stage3 dataset, not that dataset), ``stage2_no_pure`` "Stage II's new examples (no PURE)"
    (selected without PURE), ``heal`` "variant heal" (all a variant trains on)."""
    stage, _, rest = name.partition("_")
    if stage in _NEW_EXAMPLES:
        return f"{_NEW_EXAMPLES[stage]}{' (no PURE)' if rest == 'no_pure' else ''}"
    return f"variant {name}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({part / whole:.0%})" if whole else "—"


def _fraction(part: int, whole: int) -> str:
    return f"{part / whole:.3f} ({part} of {whole})" if whole else "—"


def audit(
    shards: Iterable[Sequence[Trajectory]],
    training_sets: Mapping[str, Iterable[Mapping[str, Any]]],
    truth: Truth,
    cfg: HealConfig,
) -> TruthAudit:
    """``shards``: every trajectory of the run, a shard's rows at a time (a shard holds whole problems, and both
    audits grade problems: memory holds one shard's rows, whatever the run's size); ``training_sets``: each set's
    examples, streamed."""
    parts = [(breakpoint_audit(rows, truth, cfg), pure_audit(rows, truth, cfg)) for rows in shards]
    if not parts:
        parts = [(breakpoint_audit([], truth, cfg), pure_audit([], truth, cfg))]
    return TruthAudit(
        combined([b for b, _ in parts]),
        combined([p for _, p in parts]),
        {name: wrong_step_share(examples, truth) for name, examples in training_sets.items()},
    )
