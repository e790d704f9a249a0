"""Prefect tasks: evaluate one model on the evaluation sets; write the results, their summary and its artifact."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import fingerprints, progress, storage, stores
from heal_core.backends.factory import build_backend
from heal_core.config import HealConfig
from heal_core.evaluate import evaluation_rows, stored_evaluation, summarize
from heal_core.problems import Problem
from heal_core.run import Run
from heal_core.schema import EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, SchemaError, to_table
from heal_core.settings import Role
from tasks.generate import teacher_backend
from tasks.training import local_model


@task(cache_policy=NO_CACHE)
def evaluate_model(
    label: str, model: str, identity: str, sets: dict[str, list[Problem]], cfg: HealConfig,
    train_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of per-problem results on every set (name -> problems), tagged with the model's label (teacher,
    student_base, or a variant: heal, rs_sft, ...), its training seed (None for teacher and student base), the
    set's name and the sampling settings. A set the evaluation store holds for this model is read from it; the
    model (``model``, a reference ``local_model`` resolves) is loaded, once, only for the others. Answers are
    read in the format the model writes (``evaluate.written_format``)."""
    options, logger = cfg.storage.storage_options, get_run_logger()
    backend = None
    rows: list[dict[str, Any]] = []
    with progress.unit(f"eval {label}" + ("" if train_seed is None else f" seed {train_seed}")):
        for name, problems in sets.items():
            stored = stored_evaluation(cfg, identity, label, train_seed, name, problems)
            if storage.exists(stored, options):
                try:
                    rows += storage.read_parquet(stored, EVALUATION_SCHEMA, options).to_pylist()
                    continue
                except (storage.StorageError, SchemaError) as err:
                    logger.warning("evaluation store: %s; evaluated again", err)
            if backend is None:
                # The teacher on its configured backend (the shards' cached one); students on HF: a server serves
                # only the teacher, and one process cannot free a vLLM engine reliably to load the next model.
                path = local_model(model, cfg)
                backend = (teacher_backend(cfg.teacher, path) if label == "teacher"
                           else build_backend(cfg.teacher, path, dtype=cfg.student.dtype, kind="hf"))
            found = evaluation_rows(backend, label, train_seed, name, problems, cfg)
            storage.write_parquet(to_table(found, EVALUATION_SCHEMA), stored, options)
            stores.describe(cfg, Role.EVALUATION, fingerprints.evaluation(cfg))  # for heal store ls
            rows += found
    return rows


@task(cache_policy=NO_CACHE)
def write_evaluation(run: Run, rows: list[dict[str, Any]], cfg: HealConfig) -> list[dict[str, Any]]:
    """Per-problem results and their summary per model, benchmark and group as Parquet; the summary also as the
    ``heal-eval-summary`` table artifact. Returns the summary rows."""
    summary = summarize(rows)
    storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), run.evaluation, run.options)
    storage.write_parquet(to_table(summary, EVALUATION_SUMMARY_SCHEMA), run.evaluation_summary, run.options)
    create_table_artifact(key="heal-eval-summary", table=summary,
                          description=f"pass@1 and pass@{cfg.evaluation.samples} per model, benchmark and group")
    return summary
