"""Which hinted (Stage II) and repaired (Stage III) trajectories enter the curriculum: one rule, two users.

HEAL keeps a row when it is verified, does not leak the hint, passes PURE, and its problem has fewer than
``cap`` rows kept so far, going through a problem's rows in the order they were generated (lowest sample index
first; for repairs, the repaired trajectories in their own order). The shard applies it with PURE as the last
check, so PURE is only scored where it can change the outcome; the ``heal_no_pure`` ablation applies the same
rule to the stored rows without PURE, so the only difference between the two datasets is PURE's.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from heal_core.config import HealConfig
from heal_core.stages import Stage
from heal_core.trajectory import Trajectory


def select_capped(
    rows: Iterable[Trajectory],
    cap: int,
    judge: Callable[[list[Trajectory]], list[Trajectory]] | None = None,
    kept: Counter[str] | None = None,
) -> list[Trajectory]:
    """The rows, in order, with ``kept`` set on those HEAL keeps: verified, not leaking the hint, passing
    ``judge``, at most ``cap`` per problem.

    ``kept`` counts rows already kept per problem (earlier waves) and is updated. ``judge`` is PURE, the expensive
    check: it gets batches of rows and returns them with their ``pure`` judgement, which then decides. Each round
    takes, of every problem still under its cap, as many next candidates as it has room for, so it judges exactly
    the rows a row-by-row pass would judge, and no row past the cap. Without ``judge`` a row's stored judgement is
    ignored (the ``heal_no_pure`` ablation)."""
    kept = kept if kept is not None else Counter()
    out = list(rows)
    queues: dict[str, deque[int]] = defaultdict(deque)
    for i, row in enumerate(out):
        if row.verified and not (row.hint and row.hint.leaked_hint):
            queues[row.problem_id].append(i)
    selected: set[int] = set()
    while True:
        batch = [queue.popleft() for pid, queue in queues.items() for _ in range(min(cap - kept[pid], len(queue)))]
        if not batch:
            break
        if judge is not None:
            for i, judged in zip(batch, judge([out[i] for i in batch]), strict=True):
                out[i] = judged
        for i in batch:
            if judge is None or (out[i].pure is not None and out[i].pure.kept):
                kept[out[i].problem_id] += 1
                selected.add(i)
    return [replace(row, kept=i in selected) for i, row in enumerate(out)]


def generation_order(rows: Sequence[Trajectory]) -> list[Trajectory]:
    """Stage II/III rows in the order the shard filtered them: per problem, by repaired parent (Stage III
    repairs failed paths lowest sample index first), then by sample index. ``rows`` may hold Stage I rows too:
    a repair's parent is looked up among them."""
    parent_index = {r.sample_id: r.sample_index for r in rows if r.stage == Stage.BASE}
    later = [r for r in rows if r.stage > Stage.BASE]
    return sorted(later, key=lambda r: (r.stage, r.problem_id,
                                        parent_index.get(r.repair.parent_sample_id, -1) if r.repair else -1,
                                        r.sample_index))


def select_without_pure(rows: Sequence[Trajectory], cfg: HealConfig) -> list[Trajectory]:
    """Stage II and III rows HEAL's rule keeps when PURE is left out (``hints.max_per_problem`` and
    ``gear.max_per_problem`` per problem), from a run's stored trajectories of all stages."""
    ordered = generation_order(rows)
    caps = {Stage.HINT: cfg.hints.max_per_problem, Stage.REPAIR: cfg.gear.max_per_problem}
    return [row for stage, cap in caps.items() for row in select_capped((r for r in ordered if r.stage == stage), cap)
            if row.kept]
