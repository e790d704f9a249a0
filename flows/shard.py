"""``heal-shard``: one shard of problems through sample -> buckets -> hints -> GEAR -> PURE.

Parameters are plain JSON (run root, shard index, config mapping, teacher path) so the same flow runs as a
subflow of heal-pipeline in the embedded mode and as its own deployment run on a GPU work pool, where a
failed shard can be retried alone.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from heal_core.config import HealConfig
from tasks.generate import run_shard
from tasks.layout import RunLayout


@flow(name="heal-shard")
def heal_shard(run_root: str, shard: int, config: dict[str, Any], teacher: str) -> dict[str, Any]:
    cfg = HealConfig.model_validate(config)
    return run_shard(RunLayout(run_root), shard, cfg, teacher)
