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
from typing import Any

from heal_core.config import HealConfig


def select_capped(
    rows: Iterable[dict[str, Any]],
    cap: int,
    accept: Callable[[list[dict[str, Any]]], list[bool]] | None = None,
    kept: Counter[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows kept, in order: verified, not leaking the hint, ``accept``ed, at most ``cap`` per problem.

    ``kept`` counts rows already kept per problem (earlier waves) and is updated. ``accept`` is the expensive
    check, called on batches: each round takes, of every problem still under its cap, as many next candidates as
    it has room for, so it judges exactly the rows a row-by-row pass would judge, and no row past the cap."""
    kept = kept if kept is not None else Counter()
    rows = list(rows)
    queues: dict[str, deque[int]] = defaultdict(deque)
    for i, row in enumerate(rows):
        if row["verified"] and not row["leaked_hint"]:
            queues[row["problem_id"]].append(i)
    selected: list[int] = []
    while True:
        batch = [queue.popleft() for pid, queue in queues.items() for _ in range(min(cap - kept[pid], len(queue)))]
        if not batch:
            break
        verdicts = accept([rows[i] for i in batch]) if accept is not None else [True] * len(batch)
        for i, ok in zip(batch, verdicts, strict=True):
            if ok:
                kept[rows[i]["problem_id"]] += 1
                selected.append(i)
    return [rows[i] for i in sorted(selected)]


def generation_order(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage II/III rows in the order the shard filtered them: per problem, by repaired parent (Stage III
    repairs failed paths lowest sample index first), then by sample index. ``rows`` may hold Stage I rows too:
    a repair's parent is looked up among them."""
    parent_index = {r["sample_id"]: r["sample_index"] for r in rows if r["stage"] == 1}
    later = [r for r in rows if r["stage"] > 1]
    return sorted(later, key=lambda r: (r["stage"], r["problem_id"], parent_index.get(r["parent_sample_id"], -1),
                                        r["sample_index"]))


def select_without_pure(rows: Sequence[dict[str, Any]], cfg: HealConfig) -> list[dict[str, Any]]:
    """Stage II and III rows HEAL's rule keeps when PURE is left out (``hints.max_per_problem`` and
    ``gear.max_per_problem`` per problem), from a run's stored trajectories of all stages."""
    ordered = generation_order(rows)
    caps = {2: cfg.hints.max_per_problem, 3: cfg.gear.max_per_problem}
    return [row for stage, cap in caps.items() for row in select_capped((r for r in ordered if r["stage"] == stage), cap)]
