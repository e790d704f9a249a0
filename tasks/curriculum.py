"""Prefect task: merge shard outputs into the PACE stage datasets and the baselines."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from heal_core import storage
from heal_core.config import HealConfig
from heal_core.pace import baselines, curriculum
from heal_core.schema import CURRICULUM_SCHEMA, TRAJECTORY_SCHEMA, to_table
from tasks.layout import RunLayout

DATASETS = ("stage1", "stage2", "stage3", "rs_sft", "keep_all")


def read_samples(layout: RunLayout, shards: int, cfg: HealConfig) -> pa.Table:
    tables = [
        storage.read_parquet(layout.shard_samples(s), TRAJECTORY_SCHEMA, cfg.storage.storage_options)
        for s in range(shards)
    ]
    return pa.concat_tables(tables) if tables else TRAJECTORY_SCHEMA.empty_table()


@task(cache_policy=NO_CACHE)
def build_datasets(layout: RunLayout, shards: int, cfg: HealConfig) -> dict[str, int]:
    """Write ``curriculum/<name>.parquet`` for the three stages and both baselines; return their sizes."""
    rows: list[dict[str, Any]] = read_samples(layout, shards, cfg).to_pylist()
    kept = [r for r in rows if r["kept"]]
    stage1 = [r for r in rows if r["stage"] == 1]
    datasets = {f"stage{k}": v for k, v in curriculum(kept, cfg.pace.mode).items()}
    datasets.update(baselines(stage1, [r for r in stage1 if r["kept"]]))
    for name in DATASETS:
        table = to_table(datasets[name], CURRICULUM_SCHEMA)
        storage.write_parquet(table, layout.curriculum(name), cfg.storage.storage_options)
    return {name: len(datasets[name]) for name in DATASETS}


def read_dataset(layout: RunLayout, name: str, cfg: HealConfig) -> list[dict[str, Any]]:
    return storage.read_parquet(layout.curriculum(name), CURRICULUM_SCHEMA, cfg.storage.storage_options).to_pylist()
