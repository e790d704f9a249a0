"""Which hinted (Stage II) and repaired (Stage III) trajectories enter the curriculum: one rule, two users.

HEAL keeps a row when it is verified, does not leak the hint, passes PURE, and its problem has fewer than
``cap`` rows kept so far, going through a problem's rows in the order they were generated (lowest sample index
first; for repairs, the repaired trajectories in their own order). The shard applies it with PURE as the last
check, so PURE is only scored where it can change the outcome; the ``heal_no_pure`` ablation applies the same
rule to the stored rows without PURE (``heal_core/pace.py``, in SQL over the whole run, held to this one by a
test), so the only difference between the two datasets is PURE's.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import replace

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
