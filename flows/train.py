"""``heal-train``: PACE, three sequential SFT stages, then the RS-SFT baseline with the same total steps."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from heal_core.config import HealConfig
from heal_core.train import stage_steps
from tasks.curriculum import read_dataset
from tasks.layout import RunLayout
from tasks.models import resolve_model
from tasks.secrets import export_secrets
from tasks.training import train_model


@flow(name="heal-train")
def heal_train(run_root: str, config: HealConfig) -> list[dict[str, Any]]:
    """Stage k starts from stage k-1's weights; a stage already in the run's storage is not retrained.

    The RS-SFT baseline trains the same student on Stage I data for as many steps as the three PACE stages
    took together, so a difference between the two is the data's, not the compute's.
    """
    export_secrets(config)
    layout = RunLayout(run_root)
    student = resolve_model(config.student.model, "student")
    results = []
    init = student
    for stage in (1, 2, 3):
        examples = read_dataset(layout, f"stage{stage}", config)
        if not examples:
            continue
        result = train_model(layout, f"stage{stage}", init, examples, config)
        results.append(result)
        init = result.model_dir
    total = sum(stage_steps(r.examples, config.pace) for r in results)
    baseline = read_dataset(layout, "rs_sft", config)
    if baseline:
        results.append(train_model(layout, "rs_sft", student, baseline, config, max_steps=total))
    return [asdict(r) for r in results]
