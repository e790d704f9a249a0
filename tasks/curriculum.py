"""Prefect task: merge shard outputs into the PACE stage datasets, the baselines and the ablations' datasets."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
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


def read_samples(
    run: Run, shards: int, columns: Sequence[str], where: ds.Expression | None = None
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


@task(cache_policy=NO_CACHE)
def dataset_sizes(run: Run) -> dict[str, int]:
    """Each dataset's examples, from the files' footers: the sizes of a curriculum another run assembled
    (``Run.assembly``)."""
    return {
        name: storage.read_parquet(run.curriculum(name), storage_options=run.options, columns=[]).num_rows
        for name in Dataset
    }


@contextmanager
def read_datasets(run: Run, names: Iterable[Dataset]) -> Iterator[dict[Dataset, Any]]:
    """The run's curriculum datasets ``names``, each a ``datasets.Dataset`` over a memory-mapped Arrow file written
    from a scan of the stored Parquet (streamed): training reads examples from it without holding them. The files
    live in a directory of this call's own under ``HEAL_CACHE_DIR/datasets``, removed on exit with the tokenized
    caches TRL's ``map`` writes beside them (as large as the dataset again: a worker training run after run must
    not keep them). Two trainings on one worker never share a file, so neither removes the other's."""
    from datasets import Dataset as Examples

    home = storage.cache_dir() / "datasets"
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{run.run_id}-", dir=home) as work:
        out = {}
        for name in names:
            arrow = Path(work) / f"{name}.arrow"
            reader = storage.scan([run.curriculum(name)], CURRICULUM_SCHEMA, CURRICULUM_SCHEMA.names, run.options)
            with pa.ipc.new_stream(str(arrow), reader.schema) as writer:  # datasets' own on-disk format: IPC stream
                for batch in reader:
                    writer.write_batch(batch)
            out[name] = Examples.from_file(str(arrow))
        yield out
