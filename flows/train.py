"""``heal-train``: every training variant (HEAL, its baselines and ablations) for every seed, on one run's data."""

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
def heal_train(run_root: str, config: HealConfig) -> list[dict[str, Any]]:
    """Each (variant, seed) of ``pace.variants`` x ``pace.seeds``, stage after stage; one whose result is in the
    run's storage is not retrained, nor is a finished stage of one that was interrupted.

    Every variant trains the same number of optimizer steps, the PACE stages' (``heal_core/variants.py``), so a
    difference between two is the data's, not the compute's.
    """
    export_secrets(config)
    run = Run.at(run_root, config)
    student = resolve_model(config.student.model, "student")
    with read_datasets(run, datasets_of(config.pace.variants)) as datasets:
        sizes = {name: len(examples) for name, examples in datasets.items()}
        results = [train_model(run, plan(variant, sizes, config.pace), seed, student, datasets, config)
                   for variant in config.pace.variants for seed in config.pace.seeds]
    return [result.to_json() for result in results]
