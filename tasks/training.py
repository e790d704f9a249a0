"""Prefect task: train one PACE stage (or a baseline) and keep its model in the run's storage."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from heal_core import storage
from heal_core.config import HealConfig
from heal_core.train import MARKER, StageResult, finished, train_stage
from tasks.layout import RunLayout


def cache_dir() -> Path:
    """Local working space for models: ``HEAL_CACHE_DIR`` or ``~/.cache/heal``."""
    return Path(os.environ.get("HEAL_CACHE_DIR", Path.home() / ".cache" / "heal"))


def local_model_dir(layout: RunLayout, name: str) -> Path:
    """Trainers need a local directory; one per run (keyed by its storage root) and model name."""
    return cache_dir() / "runs" / hashlib.sha256(layout.root.encode()).hexdigest()[:16] / name


@task(cache_policy=NO_CACHE)
def train_model(
    layout: RunLayout,
    name: str,
    init_model: str,
    examples: Sequence[dict[str, Any]],
    cfg: HealConfig,
    max_steps: int | None = None,
) -> StageResult:
    """Train ``name`` unless the run's storage already holds it finished (then fetch it, do not retrain)."""
    remote, local = layout.model(name), local_model_dir(layout, name)
    options = cfg.storage.storage_options
    if storage.exists(storage.join(remote, MARKER), options):
        if finished(local) is None:
            storage.get_dir(remote, local, options)
        get_run_logger().info("%s already trained: not retrained", name)
        return finished(local)
    result = train_stage(name, init_model, examples, local, cfg.pace, max_steps)
    storage.put_dir(local, remote, options, last=MARKER)
    get_run_logger().info("%s: %d examples, %d steps, loss %s", name, result.examples, result.steps, result.train_loss)
    return result
