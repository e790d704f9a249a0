"""The generation store: every problem's teacher rows, shared by all runs under one ``storage.uri``, so a problem
is sampled once and every later run (a nightly run over a growing file, a new λ, a new student) re-uses it.

Layout: ``<storage.uri>/generations/<generation fingerprint>/<problem key>/<selection fingerprint>.parquet``, one
object per problem and selection (``heal_core/fingerprints.py``), holding the problem's rows of every stage and, in
the Parquet footer, its GEAR skips and row count.

* **Key.** A problem's key hashes its id, text and gold answer (``Problem.key``).
* **Lookup.** A run looks up every problem of a shard. A problem stored under the run's selection is re-used as
  it is; one stored only under other selections is re-selected (``heal_core/replay.py``: stored completions and
  PURE scores replayed, only missing waves and unscored rows sent to the teacher); the rest are sampled. All
  non-reused problems of a shard go through one chain, so the teacher still sees whole-shard batches.
* **Integrity.** An object is written whole and atomically (``storage.write_bytes``: a local temp file renamed
  over the target, or one S3 PUT), so a reader never sees half of one. One that does not read, is out of schema,
  or holds fewer rows than its footer says (a failing disk, a hand edit) is reported and treated as missing:
  the problem is generated again and the object replaced.
* **Concurrent runs.** Two runs that miss the same key both generate it, and both write the same rows (sampling
  is seeded by what a row is, so the completions are the same); each write replaces the object whole, so the
  last one wins and no object is ever torn or holds a row twice. The price is the duplicated work, never the
  data; a run's own shard output is built from what it generated or read, one row per sample id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from heal_core import storage
from heal_core.backends.base import TeacherBackend
from heal_core.config import HealConfig
from heal_core.gear import Skip
from heal_core.problems import Problem
from heal_core.replay import Journal, ReplayBackend, Usage
from heal_core.sampling import problem_stats
from heal_core.schema import TRAJECTORY_SCHEMA, SchemaError, conform
from heal_core.shard import ShardOutput, generate_shard
from heal_core.stages import Stage
from heal_core.trajectory import Trajectory, from_table, to_table

_FOOTER = b"heal"
JOURNALS = "_journal"  # beside the problems' folders: a problem key is hex, never "_..."


@dataclass(frozen=True)
class Stored:
    rows: list[Trajectory]
    skips: list[Skip]


@dataclass
class Found:
    """What the store holds of one problem: its rows under the run's selection, and every row drawn under any."""

    exact: Stored | None = None
    drawn: list[Trajectory] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationStore:
    root: str  # <storage.uri>/generations/<generation fingerprint>
    options: dict

    @classmethod
    def under(cls, storage_uri: str, options: dict, generation_fingerprint: str) -> GenerationStore:
        return cls(storage.join(storage_uri, "generations", generation_fingerprint), options)

    def object(self, problem: Problem, selection: str) -> str:
        return storage.join(self.root, problem.key, f"{selection}.parquet")

    def read(self, uri: str) -> Stored:
        """Raises ``StorageError`` or ``SchemaError`` for an object that is unreadable, out of schema or short."""
        table = storage.read_parquet(uri, None, self.options)
        footer = json.loads((table.schema.metadata or {}).get(_FOOTER, b"null"))
        if not isinstance(footer, dict) or footer.get("rows") != table.num_rows:
            raise SchemaError(f"{uri} holds {table.num_rows} rows, its footer says {footer and footer.get('rows')}")
        return Stored(from_table(conform(table, TRAJECTORY_SCHEMA, uri)), [Skip(**s) for s in footer["skips"]])

    def find(self, problem: Problem, selection: str) -> Found:
        """The problem's object under ``selection`` when it reads; only without one, every row drawn under the
        others (what a re-selection replays)."""
        found = Found()
        exact = self.object(problem, selection)
        listed = storage.list_files(storage.join(self.root, problem.key), self.options)
        for uri in sorted(listed, key=lambda u: u != exact):  # the run's own selection first
            try:
                stored = self.read(uri)
            except (storage.StorageError, SchemaError) as err:
                found.corrupt.append(f"generation store: {err}; generated again")
                continue
            if uri == exact:
                found.exact = stored
                break
            found.drawn.extend(stored.rows)
        return found

    def journal(self, problems: Sequence[Problem], selection: str) -> Journal:
        """The journal of a shard of ``problems`` under ``selection`` (``heal_core/replay.py``): named for all the
        shard's problems, not only those it samples, so a retry finds it whatever the first attempt stored."""
        key = hashlib.sha256(json.dumps([selection, sorted(p.key for p in problems)]).encode()).hexdigest()[:24]
        return Journal(storage.join(self.root, JOURNALS, key), self.options)

    def write(self, problem: Problem, selection: str, stored: Stored) -> None:
        table = to_table(stored.rows)
        footer = json.dumps({"rows": table.num_rows, "skips": [asdict(s) for s in stored.skips]}).encode()
        storage.write_parquet(
            table.replace_schema_metadata({_FOOTER: footer}), self.object(problem, selection), self.options
        )


@dataclass
class StoredShard(ShardOutput):
    """A shard's output and where its problems came from: re-used as stored, re-selected, or sampled."""

    reused: int = 0
    reselected: int = 0
    sampled: int = 0
    usage: Usage = field(default_factory=Usage)
    corrupt: list[str] = field(default_factory=list)


def _row_order(position: dict[str, int]) -> Callable[[Trajectory], tuple[int, int, int]]:
    """The order the chain emits a shard's rows in (stage, then wave, then problem), so a shard assembled from the
    store and the teacher is the shard generating it whole would give."""
    return lambda row: (row.stage, row.hint.wave if row.hint else 0, position[row.problem_id])


def generate_stored(
    problems: Sequence[Problem],
    cfg: HealConfig,
    store: GenerationStore,
    selection: str,
    model_path: str,
    teacher: Callable[[], TeacherBackend],
    judge: Callable[[], TeacherBackend | None],
) -> StoredShard:
    """One shard through the store: look up, run the chain over what is not re-used, write back, assemble."""
    # 1. look every problem up
    found = {p.problem_id: store.find(p, selection) for p in problems}
    todo = [p for p in problems if found[p.problem_id].exact is None]
    out = StoredShard(trajectories=[], stats={}, corrupt=[c for f in found.values() for c in f.corrupt])
    out.reused = len(problems) - len(todo)
    out.reselected = sum(bool(found[p.problem_id].drawn) for p in todo)
    out.sampled = len(todo) - out.reselected

    # 2. the chain over the rest, the stored completions and PURE scores replayed
    generated = ShardOutput(trajectories=[], stats={})
    journal = store.journal(problems, selection)
    if todo:
        drawn = [row for p in todo for row in found[p.problem_id].drawn]
        backend = ReplayBackend(
            model_path,
            teacher,
            drawn,
            journal=journal,
            recompute_entropy=cfg.teacher.backend == "vllm" and cfg.teacher.entropy == "exact",
        )
        scored = {row.sample_id: row.pure for row in drawn if row.pure is not None}
        generated = generate_shard(backend, todo, cfg, judge=judge(), scored=scored)
        out.usage = backend.usage

    # 3. write each generated problem back, whole
    mine = {p.problem_id: Stored([], []) for p in todo}
    for row in generated.trajectories:
        mine[row.problem_id].rows.append(row)
    for skip in generated.skips:
        mine[skip.problem_id].skips.append(skip)
    for p in todo:
        store.write(p, selection, mine[p.problem_id])
    if todo:
        journal.clear()  # its answers are in the store now

    # 4. the shard in the chain's order, stats and skips in problem order
    per_problem = {
        p.problem_id: mine[p.problem_id] if found[p.problem_id].exact is None else found[p.problem_id].exact
        for p in problems
    }
    rows = [row for stored in per_problem.values() for row in stored.rows]
    position = {p.problem_id: i for i, p in enumerate(problems)}
    out.trajectories = sorted(rows, key=_row_order(position))
    stats = problem_stats((r for r in out.trajectories if r.stage == Stage.BASE), cfg)
    out.stats = {p.problem_id: stats[p.problem_id] for p in problems}
    out.skips = [s for stored in per_problem.values() for s in stored.skips]
    return out


def lineage_sources(reused: int, reselected: int, sampled: int, usage: Usage) -> dict:
    """Where a shard's problems came from, as its lineage record holds it (``summary.generation_sources`` sums it)."""
    return {"reused": reused, "reselected": reselected, "sampled": sampled, "teacher": asdict(usage)}
