"""PACE: the three-stage curriculum datasets (I base -> II hint -> III repair) and the baselines, assembled out of
core.

By default stages are cumulative (stage k trains on everything kept up to stage k), so a student fine-tuned
stage after stage keeps seeing the easier data while harder data arrives; ``incremental`` trains each stage
on its new data only. An example enters the curriculum once, at the first stage that produced it: the same
(prompt, completion) text reached again by a later stage is a duplicate, not new evidence.

Baselines a user compares against: ``rs_sft`` (Stage I data only: plain rejection-sampling SFT) and
``keep_all`` (every Stage I sample, unverified: OpenThoughts3 found answer filtering does not always help).
Ablations of HEAL itself: ``stage2_no_pure`` / ``stage3_no_pure`` (the stages as HEAL selects them, PURE left
out) and ``mixed`` (everything HEAL kept, for one SFT run without the curriculum). Which variant trains on
which datasets is ``heal_core/variants.py``'s.

A run's samples outgrow one process's memory (20,000 problems with 4k-token traces are ~12 GB of Parquet), so
the assembly is DuckDB's, not Python lists': the rows stream in from ``samples`` (a pyarrow scan of the columns a
step asks for), the selection, first-occurrence deduplication and stage order are SQL over a table of row keys
(about 60 bytes a row), and each dataset is one sorted query whose result streams into a Parquet writer. DuckDB
holds at most ``orchestration.memory_limit`` and spills the rest of its sorts and tables to ``workdir``
(``heal_core/duck.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from heal_core import duck
from heal_core.config import HealConfig
from heal_core.schema import CURRICULUM_SCHEMA
from heal_core.stages import Dataset, Stage

Samples = Callable[[Sequence[str]], pa.RecordBatchReader]
"""A fresh stream of the run's trajectory rows (``TRAJECTORY_SCHEMA``) holding only the given columns."""

_KEYS = ("sample_id", "problem_id", "stage", "sample_index", "verified", "leaked_hint", "parent_sample_id", "kept")
_LINEAGE = [name for name in CURRICULUM_SCHEMA.names if name not in ("prompt", "completion")]
_ORDER = "stage, problem_id, sample_id"  # a dataset's row order, and which of two duplicates comes first
_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Pool:
    """Rows that compete for a place, deduplicated among themselves: HEAL's kept rows, Stage I's kept rows with
    the rows HEAL's rule keeps when PURE is left out, or every Stage I row."""

    name: str
    where: str  # SQL over the ``rows`` table


HEAL = Pool("heal", "kept")
NO_PURE = Pool("no_pure", "(stage = 1 AND kept) OR sample_id IN (SELECT sample_id FROM no_pure)")
STAGE1_ALL = Pool("stage1_all", "stage = 1")


def layout(cfg: HealConfig) -> dict[Dataset, tuple[Pool, tuple[int, ...]]]:
    """Each dataset as (the pool its examples come from, the stages it takes of them). Two datasets with the same
    pair are the same rows (``rs_sft`` and ``stage1``; ``mixed`` and cumulative ``stage3``), assembled once."""

    def upto(stage: Stage) -> tuple[int, ...]:
        return tuple(range(1, stage + 1)) if cfg.pace.mode == "cumulative" else (int(stage),)

    return {
        **{Dataset.of(stage): (HEAL, upto(stage)) for stage in Stage},
        Dataset.STAGE2_NO_PURE: (NO_PURE, upto(Stage.HINT)),
        Dataset.STAGE3_NO_PURE: (NO_PURE, upto(Stage.REPAIR)),
        Dataset.MIXED: (HEAL, (1, 2, 3)),  # every stage's examples once
        Dataset.RS_SFT: (HEAL, (1,)),
        Dataset.KEEP_ALL: (STAGE1_ALL, (1,)),
    }


def build(samples: Samples, cfg: HealConfig, workdir: Path) -> dict[Dataset, tuple[Path, int]]:
    """Write every ``Dataset`` as ``workdir/<name>.parquet`` in ``CURRICULUM_SCHEMA``; return each one's file and
    number of examples. ``kept`` is as the shards set it."""
    con = duck.connect(workdir, cfg.orchestration.memory_limit)
    # 1. one row of keys per trajectory: what selection, deduplication and order need, and a 128-bit digest of
    #    (prompt, text) for the deduplication (the texts themselves stay in storage)
    keys = samples([*_KEYS, "prompt", "text"])  # noqa: F841 (DuckDB reads Python variables by name)
    con.execute(f"""CREATE TABLE rows AS SELECT {", ".join(_KEYS[:5])}, coalesce(leaked_hint, false) AS leaked,
                    parent_sample_id, kept, md5_number(prompt || chr(0) || text) AS key FROM keys""")
    # 2. the rows HEAL's rule keeps with PURE left out: per stage and problem, the first ``cap`` verified rows that
    #    do not leak the hint, in generation order (a repair by its parent's sample index, then by its own); the
    #    shard applies the same rule with PURE (``heal_core/selection.py``), which a test holds them to
    con.execute(
        """CREATE TABLE no_pure AS SELECT sample_id FROM (
                     SELECT r.sample_id, r.stage, row_number() OVER (
                       PARTITION BY r.stage, r.problem_id
                       ORDER BY coalesce(p.sample_index, -1), r.sample_index, r.sample_id) AS place
                     FROM rows r LEFT JOIN rows p ON p.stage = 1 AND p.sample_id = r.parent_sample_id
                     WHERE r.stage > 1 AND r.verified AND NOT r.leaked)
                   WHERE place <= CASE stage WHEN 2 THEN ? ELSE ? END""",
        [cfg.hints.max_per_problem, cfg.gear.max_per_problem],
    )
    # 3. each pool's first occurrence of every (prompt, text), in dataset order
    pools = (HEAL, NO_PURE, STAGE1_ALL)
    con.execute(
        "CREATE TABLE members AS "
        + " UNION ALL ".join(
            f"""SELECT '{pool.name}' AS pool, sample_id, stage FROM (
              SELECT sample_id, stage, row_number() OVER (PARTITION BY key ORDER BY {_ORDER}) AS occurrence
              FROM rows WHERE {pool.where}) WHERE occurrence = 1"""
            for pool in pools
        )
    )
    # 4. each distinct dataset: its members' prompt, text and lineage, sorted, streamed into its file
    written: dict[tuple[Pool, tuple[int, ...]], tuple[Path, int]] = {}
    out = {}
    for name, (pool, stages) in layout(cfg).items():
        if (pool, stages) not in written:
            written[pool, stages] = _write(con, samples, pool, stages, workdir / f"{name}.parquet")
        out[name] = written[pool, stages]
    con.close()
    return out


def _write(
    con: duckdb.DuckDBPyConnection, samples: Samples, pool: Pool, stages: tuple[int, ...], path: Path
) -> tuple[Path, int]:
    """One dataset: the pool's members of ``stages`` as TRL conversational prompt-completion rows, lineage kept."""
    source = samples(["prompt", "text", *_LINEAGE])  # noqa: F841 (read by name in the query)
    result = con.sql(
        f"""SELECT [{{'role': 'user', 'content': prompt}}] AS prompt,
                   [{{'role': 'assistant', 'content': text}}] AS completion, {", ".join(_LINEAGE)}
            FROM source WHERE sample_id IN (
              SELECT sample_id FROM members WHERE pool = ? AND stage IN ({", ".join(map(str, stages))}))
            ORDER BY {_ORDER}""",
        params=[pool.name],
    )
    rows = 0
    with pq.ParquetWriter(path, CURRICULUM_SCHEMA, compression="zstd") as writer:
        for batch in result.to_arrow_reader(_BATCH_ROWS):
            writer.write_table(pa.Table.from_batches([batch]).cast(CURRICULUM_SCHEMA))
            rows += batch.num_rows
    return path, rows
