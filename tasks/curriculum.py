"""Prefect task: merge shard outputs into the PACE stage datasets, the baselines and the ablations' datasets."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from prefect import task
from prefect.cache_policies import NO_CACHE

from heal_core import pace, storage
from heal_core.config import HealConfig
from heal_core.run import Run
from heal_core.schema import CURRICULUM_SCHEMA, TRAJECTORY_SCHEMA
from heal_core.stages import Dataset


def read_samples(run: Run, shards: int, columns: Sequence[str], where: ds.Expression | None = None
                 ) -> pa.RecordBatchReader:
    """The run's trajectories (those matching ``where``) as a stream of record batches of ``columns`` only (the
    texts, token ids and entropy traces are most of a shard's bytes: a step that does not need them does not
    fetch them)."""
    return storage.scan([run.shard_samples(s) for s in range(shards)], TRAJECTORY_SCHEMA, columns, run.options, where)


@task(cache_policy=NO_CACHE)
def build_datasets(run: Run, shards: int, cfg: HealConfig) -> dict[str, int]:
    """Write ``curriculum/<name>.parquet`` for every dataset a variant trains on; return their sizes. The files are
    assembled in a scratch directory under ``HEAL_CACHE_DIR`` (DuckDB spills there too) and uploaded streamed."""
    storage.cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="curriculum-", dir=storage.cache_dir()) as work:
        built = pace.build(lambda columns: read_samples(run, shards, columns), cfg, Path(work))
        for name, (path, _) in built.items():
            storage.put_file(path, run.curriculum(name), run.options)
    return {name: rows for name, (_, rows) in built.items()}


def read_dataset(run: Run, name: Dataset) -> Any:
    """One curriculum dataset as a ``datasets.Dataset`` over a memory-mapped Arrow file in ``HEAL_CACHE_DIR``:
    training and the audit read examples from it without holding them. The file is written afresh from a scan of
    the stored Parquet (streamed, put in place whole), so it is always the stored dataset's."""
    from datasets import Dataset as Examples

    arrow = storage.cache_dir() / "datasets" / run.run_id / f"{name}.arrow"
    arrow.parent.mkdir(parents=True, exist_ok=True)
    partial = arrow.with_name(f".{arrow.name}.{os.getpid()}")
    reader = storage.scan([run.curriculum(name)], CURRICULUM_SCHEMA, CURRICULUM_SCHEMA.names, run.options)
    with pa.ipc.new_stream(str(partial), reader.schema) as writer:  # datasets' own on-disk format: an IPC stream
        for batch in reader:
            writer.write_batch(batch)
    os.replace(partial, arrow)
    return Examples.from_file(str(arrow))
