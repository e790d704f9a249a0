"""``heal-eval``: pass@1 and pass@k of teacher and students on held-out problems."""

from __future__ import annotations

from typing import Any

from prefect import flow

from heal_core import storage
from heal_core.config import HealConfig
from heal_core.problems import Problem
from heal_core.schema import EVALUATION_SCHEMA, to_table
from tasks.evaluation import evaluate_model
from tasks.layout import RunLayout


@flow(name="heal-eval")
def heal_eval(run_root: str, config: dict[str, Any], models: dict[str, str], problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``models`` maps a label (teacher, heal, rs_sft) to a local model path; results land as Parquet."""
    cfg = HealConfig.model_validate(config)
    items = [Problem(**p) for p in problems]
    rows = [row for label, path in models.items() for row in evaluate_model(label, path, items, cfg)]
    storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), RunLayout(run_root).evaluation, cfg.storage.storage_options)
    return rows
