"""Prefect task: train one (variant, seed) and keep its models and its result in the run's storage."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from heal_core import checkpoints, fingerprints, progress, storage
from heal_core.config import HealConfig
from heal_core.run import Run
from heal_core.storage import cache_dir
from heal_core.train import MARKER, StageResult, VariantResult, finished, train_variant
from heal_core.variants import VariantPlan


def local_model_dir(remote: str) -> Path:
    """Trainers and backends need a local directory: one per stored model, keyed by its storage URI."""
    return (
        cache_dir()
        / "models"
        / hashlib.sha256(remote.encode()).hexdigest()[:16]
        / remote.rstrip("/").rsplit("/", 1)[-1]
    )


def is_stored_model(reference: str, options: dict[str, Any]) -> bool:
    """A model finished by ``train_model``: its storage directory holds the completion marker."""
    return storage.exists(storage.join(reference, MARKER), options)


def trained_model_identity(reference: str, options: dict[str, Any]) -> str:
    """What names a trained model in the evaluation store. A stored one: its URI and its completion marker (the
    stage's result), so a stage trained again under the same URI, after its marker was removed, is another model;
    any other reference: what ``fingerprints.model_identity`` says of it."""
    if not is_stored_model(reference, options):
        return fingerprints.model_identity(reference)
    return fingerprints.digest([reference, storage.read_bytes(storage.join(reference, MARKER), options).decode()])


def local_model(reference: str, cfg: HealConfig) -> str:
    """A path a backend can load: a stored trained model is fetched once into the cache (works from any
    worker, local or S3 storage); anything else (a local path, a hub name) is returned as it is."""
    options = cfg.storage.storage_options
    if not is_stored_model(reference, options):
        return reference
    local = local_model_dir(reference)
    if finished(local) is None:
        _fetch(reference, local, options)
    return str(local)


def _fetch(reference: str, local: Path, options: dict[str, Any]) -> None:
    """Download a stored model into a temporary folder beside ``local``, its marker last, then rename it into
    place: a download killed half way leaves no folder that looks finished, so the next attempt fetches it again."""
    tmp = local.parent / f".{local.name}.tmp-{uuid.uuid4().hex}"
    try:
        storage.get_dir(reference, str(tmp), options, last=MARKER)
        shutil.rmtree(local, ignore_errors=True)  # what an older, interrupted download left
        try:
            os.replace(tmp, local)
        except OSError:  # another process put it in place meanwhile
            if finished(local) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class TrainedModel:
    """A trained (variant, seed) as heal-eval takes it: the variant is the evaluation rows' model label."""

    variant: str
    seed: int
    model: str  # storage URI of its final stage (or any model reference a backend loads)


@task(cache_policy=NO_CACHE, task_run_name="train-{plan.variant}-seed-{seed}")
def train_model(
    run: Run,
    plan: VariantPlan,
    seed: int,
    student: str,
    datasets: Mapping[str, Sequence[dict[str, Any]]],
    cfg: HealConfig,
) -> VariantResult:
    """Train ``plan``'s variant for ``seed`` unless the run's storage holds its result (then return that: it
    is not retrained). A skipped variant's result, with its reason, is stored the same way.

    Stages an interrupted attempt stored are fetched first, so they resume instead of retraining; each stage
    is stored as soon as it is finished, and the result last, once every stage is stored."""
    logger = get_run_logger()
    done = run.variant(plan.variant, seed)
    if done is not None:
        logger.info("%s seed %d already trained: not retrained", plan.variant, seed)
        return done
    remote = {stage.dataset: run.model(plan.variant, seed, stage.dataset) for stage in plan.stages}
    local = {dataset: local_model_dir(uri) for dataset, uri in remote.items()}
    for uri in remote.values():
        local_model(uri, cfg)  # a stage stored by an earlier attempt lands where train_variant looks for it

    kept = {dataset: f"{uri}.checkpoints" for dataset, uri in remote.items()}

    def store(result: StageResult) -> None:
        if not is_stored_model(remote[result.name], run.options):
            storage.put_dir(result.model_dir, remote[result.name], run.options, last=MARKER)
        checkpoints.discard(kept[result.name], run.options)
        logger.info(
            "%s seed %d %s: %d examples, %d steps, loss %s%s",
            plan.variant,
            seed,
            result.name,
            result.examples,
            result.steps,
            result.train_loss,
            " (resumed)" if result.resumed else "",
        )

    with progress.unit(f"train {plan.variant} seed {seed}"):
        result = train_variant(student, plan, datasets, local, seed, cfg.pace, store, kept, run.options, run.run_id)
    if result.skip_reason is not None:
        logger.info("%s seed %d skipped: %s", plan.variant, seed, result.skip_reason)
    stored = {str(local[dataset]): uri for dataset, uri in remote.items()}
    record = replace(
        result, stages=tuple(replace(s, model_dir=stored.get(s.model_dir, s.model_dir)) for s in result.stages)
    )
    storage.write_json(record.to_json(), run.variant_record(plan.variant, seed), run.options)
    return record
