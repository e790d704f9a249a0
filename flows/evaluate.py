"""``heal-eval``: pass@1 and pass@k of teacher and students on held-out problems."""

from __future__ import annotations

from prefect import flow

from heal_core import storage
from heal_core.config import HealConfig
from heal_core.schema import EVALUATION_SCHEMA, to_table
from tasks.evaluation import evaluate_model
from tasks.layout import RunLayout
from tasks.models import resolve_model
from tasks.problems import problem_set
from tasks.training import local_model


@flow(name="heal-eval")
def heal_eval(run_root: str, config: HealConfig, trained: dict[str, str]) -> int:
    """Teacher and student base (as configured, resolved on this worker) and the ``trained`` models (label ->
    storage URI, fetched into the worker's cache). Results land as Parquet; returns the number of rows."""
    problems, _ = problem_set(config.evaluation.uri, "eval", config, config.evaluation.max_problems)
    models = {"teacher": resolve_model(config.teacher.model, "teacher"),
              "student_base": resolve_model(config.student.model, "student"), **trained}
    rows = [row for label, ref in models.items() for row in evaluate_model(label, local_model(ref, config), problems, config)]
    storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), RunLayout(run_root).evaluation, config.storage.storage_options)
    return len(rows)
