"""Prefect task: merge shard outputs into the PACE stage datasets, the baselines and the ablations' datasets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from heal_core import storage, trajectory
from heal_core.config import HealConfig
from heal_core.pace import datasets
from heal_core.run import Run
from heal_core.schema import CURRICULUM_SCHEMA, TRAJECTORY_SCHEMA, to_table
from heal_core.stages import Dataset


def read_samples(run: Run, shards: int, columns: Sequence[str] | None = None) -> pa.Table:
    """The run's trajectories, all columns or only ``columns`` (the texts, token ids and entropy traces are most
    of a shard's bytes: a step that does not need them should not read them)."""
    tables = [storage.read_parquet(run.shard_samples(s), TRAJECTORY_SCHEMA, run.options, columns) for s in range(shards)]
    schema = TRAJECTORY_SCHEMA if columns is None else pa.schema([TRAJECTORY_SCHEMA.field(c) for c in columns])
    return pa.concat_tables(tables) if tables else schema.empty_table()


@task(cache_policy=NO_CACHE)
def build_datasets(run: Run, shards: int, cfg: HealConfig) -> dict[str, int]:
    """Write ``curriculum/<name>.parquet`` for every dataset a variant trains on; return their sizes."""
    built = datasets(trajectory.from_table(read_samples(run, shards)), cfg)
    for name in Dataset:
        storage.write_parquet(to_table(built[name], CURRICULUM_SCHEMA), run.curriculum(name), run.options)
    return {name: len(built[name]) for name in Dataset}


def read_dataset(run: Run, name: str) -> list[dict[str, Any]]:
    return storage.read_parquet(run.curriculum(name), CURRICULUM_SCHEMA, run.options).to_pylist()
