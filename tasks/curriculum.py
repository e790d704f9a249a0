"""Prefect task: merge shard outputs into the PACE stage datasets, the baselines and the ablations' datasets."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from heal_core import storage
from heal_core.config import HealConfig
from heal_core.pace import DATASETS, datasets
from heal_core.schema import CURRICULUM_SCHEMA, TRAJECTORY_SCHEMA, to_table
from tasks.layout import RunLayout


def read_samples(layout: RunLayout, shards: int, cfg: HealConfig) -> pa.Table:
    tables = [
        storage.read_parquet(layout.shard_samples(s), TRAJECTORY_SCHEMA, cfg.storage.storage_options)
        for s in range(shards)
    ]
    return pa.concat_tables(tables) if tables else TRAJECTORY_SCHEMA.empty_table()


@task(cache_policy=NO_CACHE)
def build_datasets(layout: RunLayout, shards: int, cfg: HealConfig) -> dict[str, int]:
    """Write ``curriculum/<name>.parquet`` for every dataset a variant trains on; return their sizes."""
    built = datasets(read_samples(layout, shards, cfg).to_pylist(), cfg)
    for name in DATASETS:
        storage.write_parquet(to_table(built[name], CURRICULUM_SCHEMA), layout.curriculum(name), cfg.storage.storage_options)
    return {name: len(built[name]) for name in DATASETS}


def read_dataset(layout: RunLayout, name: str, cfg: HealConfig) -> list[dict[str, Any]]:
    return storage.read_parquet(layout.curriculum(name), CURRICULUM_SCHEMA, cfg.storage.storage_options).to_pylist()
