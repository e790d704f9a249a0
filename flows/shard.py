"""``heal-shard``: one shard of problems through sample -> buckets -> hints -> GEAR -> PURE.

Parameters are plain JSON (run root, shard index, config) so the same flow runs as a subflow of
heal-pipeline in the embedded mode and as its own deployment run on a GPU work pool, where a failed shard can
be retried alone. It is idempotent: a shard already finished under the same config hash is skipped.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from heal_core.config import HealConfig
from heal_core.run import Run
from tasks.generate import retrying_shard
from tasks.models import resolve_model
from tasks.secrets import export_secrets


@flow(name="heal-shard")
def heal_shard(run_root: str, shard: int, config: HealConfig) -> dict[str, Any]:
    """The teacher is resolved here, on the worker: a bundled or local path is the worker's, not the parent's."""
    export_secrets(config)
    return retrying_shard(config)(
        Run.at(run_root, config), shard, config, resolve_model(config.teacher.model, "teacher")
    )
