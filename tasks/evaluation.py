"""Prefect tasks: evaluate one model on the evaluation sets; write the results, their summary and its artifact."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import progress, storage
from heal_core.backends.factory import build_backend
from heal_core.config import HealConfig
from heal_core.evaluate import evaluate, evaluation_sampling, sampling_settings, summarize
from heal_core.problems import Problem
from heal_core.run import Run
from heal_core.schema import EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, to_table
from tasks.generate import teacher_backend


@task(cache_policy=NO_CACHE)
def evaluate_model(
    label: str, model_path: str, sets: dict[str, list[Problem]], cfg: HealConfig, train_seed: int | None = None
) -> list[dict[str, Any]]:
    """Rows of per-problem results on every set (name -> problems), tagged with the model's label (teacher,
    student_base, or a variant: heal, rs_sft, ...), its training seed (None for teacher and student base), the
    set's name and the sampling settings; the model is loaded once for all sets. Answers are read in the teacher's
    reasoning format, except the untrained student's (``student.reasoning_format``): a trained student writes as
    the teacher it learned from."""
    # The teacher on its configured backend (the shards' cached one); students on HF: a server serves only the
    # teacher, and one process cannot free a vLLM engine reliably to load the next model.
    backend = (teacher_backend(cfg.teacher, model_path) if label == "teacher"
               else build_backend(cfg.teacher, model_path, dtype=cfg.student.dtype, kind="hf"))
    writes = cfg.student.reasoning_format if label == "student_base" else cfg.teacher.reasoning_format
    sampling = evaluation_sampling(cfg)
    settings = sampling_settings(sampling)
    with progress.unit(f"eval {label}" + ("" if train_seed is None else f" seed {train_seed}")):
        return [
            {"model": label, "train_seed": train_seed, "model_path": model_path, "benchmark": name, **asdict(result),
             **settings}
            for name, problems in sets.items()
            for result in evaluate(backend, problems, cfg.teacher.prompt_template, sampling, k=cfg.evaluation.samples,
                                   max_error_share=cfg.orchestration.max_verify_error_share, reasoning_format=writes)
        ]


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
