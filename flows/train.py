"""``heal-train``: training variants (HEAL, its baselines and ablations) for seeds, on one run's data: every (variant,
seed) of the config in one run (embedded mode), or one of them per deployment run (``flows/executor.py``), so the
students of a run train on as many GPU workers as are free and a failed one is retried alone."""

from __future__ import annotations

from typing import Any

from prefect import flow

from heal_core.config import HealConfig
from heal_core.run import Run
from heal_core.variants import datasets_of, plan
from tasks.curriculum import read_datasets
from tasks.models import resolve_model
from tasks.secrets import export_secrets
from tasks.training import train_model


@flow(name="heal-train")
def heal_train(
    run_root: str, config: HealConfig, variant: str | None = None, seed: int | None = None
) -> list[dict[str, Any]]:
    """Each (variant, seed) of ``pace.variants`` x ``pace.seeds``, or only ``variant`` and only ``seed`` where given,
    stage after stage; one whose result is in the run's storage is not retrained, nor is a finished stage of one
    that was interrupted.

    Every variant trains the same number of optimizer steps, the PACE stages' (``heal_core/variants.py``), so a
    difference between two is the data's, not the compute's: the budget comes from HEAL's datasets, which every
    run of this flow reads, whichever variant it trains.
    """
    variants = [v for v in config.pace.variants if variant in (None, v)]
    seeds = [s for s in config.pace.seeds if seed in (None, s)]
    if not variants or not seeds:
        raise ValueError(
            f"heal-train: variant {variant!r} / seed {seed!r} is not among the config's "
            f"pace.variants {config.pace.variants} / pace.seeds {config.pace.seeds}"
        )
    export_secrets(config)
    run = Run.at(run_root, config)
    student = resolve_model(config.student.model, "student")
    with read_datasets(run, datasets_of(variants)) as datasets:
        sizes = {name: len(examples) for name, examples in datasets.items()}
        results = [
            train_model(run, plan(v, sizes, config.pace), s, student, datasets, config) for v in variants for s in seeds
        ]
    return [result.to_json() for result in results]
