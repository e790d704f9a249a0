"""``heal-derive``: new students or a new evaluation from a finished run's data, without the teacher
(``heal_core/derived.py``). ``heal train`` and ``heal eval`` run it in-process; as a deployment it takes the same
parameters from the UI or the REST API.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.executor import executor_for
from flows.pipeline import Progress, after_generation, check_models, holder
from heal_core import fingerprints, lease, storage
from heal_core.config import HealConfig
from heal_core.derived import Kind, derived_config, derived_id
from heal_core.generation_store import lineage_sources
from heal_core.replay import Usage
from heal_core.run import Run
from heal_core.stages import Dataset
from tasks.secrets import export_secrets


class GenerationUnfinished(ValueError):
    """The run to derive from has shards that did not finish: its data is not there to train or evaluate on."""


def _reference_generation(parent: Run, run: Run, shards: int, cfg: HealConfig) -> None:
    """This run's record of the parent's generation: its problem shards copied (small), its samples referenced
    (``Run.generation``: this run's ``parent.json``, written before), and each shard's lineage record, last (its
    marker), under this run's config hash, recording that this run's teacher drew nothing: every problem was
    re-used."""
    for name in ("quarantine", "contamination"):
        if storage.exists(getattr(parent, name), parent.options):
            storage.write_bytes(
                storage.read_bytes(getattr(parent, name), parent.options), getattr(run, name), run.options
            )
    for shard in range(shards):
        storage.write_bytes(
            storage.read_bytes(parent.shard_problems(shard), parent.options), run.shard_problems(shard), run.options
        )
        record = storage.read_json(parent.shard_lineage(shard), parent.options)
        record.update(config_hash=cfg.config_hash(), generation=lineage_sources(record["problems"], 0, 0, Usage()))
        storage.write_json(record, run.shard_lineage(shard), run.options)


def _same_curriculum(parent: Run, parent_cfg: HealConfig, cfg: HealConfig) -> str | None:
    """The run whose curriculum this run trains on unchanged (``Run.assembly``), when its own would be the same rows
    (``fingerprints.curriculum``) and the parent's is all there; otherwise None, and this run assembles its own."""
    if fingerprints.curriculum(cfg) != fingerprints.curriculum(parent_cfg):
        return None
    whole = all(storage.exists(parent.curriculum(name), parent.options) for name in Dataset)
    return parent.assembly.run_id if whole else None


def _adopt_models(parent: Run, parent_cfg: HealConfig, run: Run, cfg: HealConfig) -> list[str]:
    """The parent's finished (variant, seed) results, where this run would train them the same way: their records
    point at the parent's stored models, which are not copied."""
    if fingerprints.training(cfg) != fingerprints.training(parent_cfg):
        return []
    adopted = []
    for result in parent.variants(parent_cfg):
        if result.variant in cfg.pace.variants and result.seed in cfg.pace.seeds:
            record = parent.variant_record(result.variant, result.seed)
            storage.write_bytes(
                storage.read_bytes(record, parent.options), run.variant_record(result.variant, result.seed), run.options
            )
            adopted.append(f"{result.variant} seed {result.seed}")
    return adopted


@flow(name="heal-derive")
def heal_derive(
    run_id: str, storage_uri: str, kind: Kind, overrides: list[str] | None = None, variants: list[str] | None = None
) -> dict[str, Any]:
    """Train (``kind: train``, ``overrides`` of pace.* and student.*, ``variants`` to add) or evaluate (``kind:
    eval``, overrides of evaluation.*) from run ``run_id`` under ``storage_uri``; returns the derived run's
    summary. Refused, before anything is written, when the run's generation has not finished."""
    overrides, variants = overrides or [], variants or []
    parent, parent_cfg = Run.stored(run_id, storage_uri)
    cfg = derived_config(parent_cfg, kind, overrides, variants)
    export_secrets(cfg)
    shards = parent.shard_count()
    missing = parent.unfinished_shards(parent_cfg.config_hash(), shards)
    if missing or not shards:
        raise GenerationUnfinished(
            f"run {run_id} at {parent.root}: generation has not finished (shards without samples: "
            f"{', '.join(map(str, missing)) or 'all'}); finish it with: heal resume {run_id} --storage {storage_uri}"
        )
    check_models(cfg)
    run = Run.of(cfg, derived_id(run_id, kind, cfg))
    with lease.held(run.root, run.options, cfg.orchestration.lease_seconds, *holder()):
        return _derive(parent, parent_cfg, run, cfg, shards, kind, overrides, variants)


def _derive(
    parent: Run,
    parent_cfg: HealConfig,
    run: Run,
    cfg: HealConfig,
    shards: int,
    kind: Kind,
    overrides: list[str],
    variants: list[str],
) -> dict[str, Any]:
    run_id = parent.run_id
    run.pin(cfg)
    logger = get_run_logger()
    logger.info("run %s: %s from run %s (%s)", run.run_id, kind, run_id, ", ".join(overrides + variants) or "as it is")

    # 1. the parent's data (referenced: its samples, and its curriculum where this run's would be the same), its record
    #    of this run, and the models this run would train as the parent did
    storage.write_json(
        {
            "parent": run_id,
            "samples": parent.generation.run_id,
            "curriculum": _same_curriculum(parent, parent_cfg, cfg),
            "kind": kind,
            "overrides": overrides,
            "variants": variants,
        },
        run.parent,
        run.options,
    )
    _reference_generation(parent, run, shards, cfg)
    storage.write_json(
        {"run_id": run.run_id, "kind": kind, "overrides": overrides, "variants": variants},
        parent.derived_record(run.run_id),
        parent.options,
    )
    adopted = _adopt_models(parent, parent_cfg, run, cfg)
    if adopted:
        logger.info("adopted from run %s, not retrained: %s", run_id, ", ".join(adopted))

    # 2. curriculum, training, evaluation and report, as any run's
    progress = Progress(run, cfg, shards)
    progress.step_done("generate")
    return after_generation(run, shards, cfg, executor_for(run, cfg), progress)
