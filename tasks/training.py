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


def local_model_dir(remote: str) -> Path:
    """Trainers and backends need a local directory: one per stored model, keyed by its storage URI."""
    return cache_dir() / "models" / hashlib.sha256(remote.encode()).hexdigest()[:16] / remote.rstrip("/").rsplit("/", 1)[-1]


def is_stored_model(reference: str, options: dict[str, Any]) -> bool:
    """A model finished by ``train_model``: its storage directory holds the completion marker."""
    return storage.exists(storage.join(reference, MARKER), options)


def local_model(reference: str, cfg: HealConfig) -> str:
    """A path a backend can load: a stored trained model is fetched once into the cache (works from any
    worker, local or S3 storage); anything else (a local path, a hub name) is returned as it is."""
    options = cfg.storage.storage_options
    if not is_stored_model(reference, options):
        return reference
    local = local_model_dir(reference)
    if finished(local) is None:
        storage.get_dir(reference, str(local), options)
    return str(local)


def trained_models(layout: RunLayout, cfg: HealConfig) -> dict[str, str]:
    """Storage URIs of the run's finished models (PACE stages, baselines) by name."""
    names = ("stage1", "stage2", "stage3", "rs_sft")
    return {n: layout.model(n) for n in names if is_stored_model(layout.model(n), cfg.storage.storage_options)}


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
    remote, local = layout.model(name), local_model_dir(layout.model(name))
    options = cfg.storage.storage_options
    if is_stored_model(remote, options):
        get_run_logger().info("%s already trained: not retrained", name)
        return finished(local_model(remote, cfg))
    result = train_stage(name, local_model(init_model, cfg), examples, local, cfg.pace, max_steps)
    storage.put_dir(local, remote, options, last=MARKER)
    get_run_logger().info("%s: %d examples, %d steps, loss %s", name, result.examples, result.steps, result.train_loss)
    return result
