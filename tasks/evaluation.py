"""Prefect tasks: evaluate one model on the evaluation sets; write the results, their summary and its artifact."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import fingerprints, progress, storage, stores
from heal_core.backends.factory import build_backend
from heal_core.config import HealConfig
from heal_core.evaluate import evaluate, evaluation_sampling, sampling_settings, summarize
from heal_core.problems import Problem
from heal_core.run import Run
from heal_core.schema import EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, SchemaError, to_table
from heal_core.settings import Role
from tasks.generate import teacher_backend
from tasks.training import local_model


def stored_evaluation(cfg: HealConfig, identity: str, label: str, train_seed: int | None, name: str,
                      problems: list[Problem]) -> str:
    """Where one model's results on one set live in the evaluation store, ``<storage.uri>/evaluations/``, shared by
    every run there: keyed by the evaluation settings, the model (``identity``: a stored model's URI, or what a
    local model's files are, ``fingerprints.model_identity``), how it is run, and the set's name and problems. A run
    that evaluates the same teacher the same way on the same set (every run derived from another, a nightly run)
    reads its results instead of asking the teacher again. Objects live in their evaluation fingerprint's folder
    (``heal_core/stores.py``), which ``heal store ls`` lists and ``heal store gc`` removes whole."""
    key = fingerprints.digest({
        "evaluation": fingerprints.evaluation(cfg), "model": identity, "label": label, "train_seed": train_seed,
        "backend": (cfg.teacher.backend, cfg.teacher.dtype) if label == "teacher" else ("hf", cfg.student.dtype),
        "reasoning_format": _writes(label, cfg), "set": name,
        "problems": [(p.problem_id, p.problem, p.answer, sorted(p.metadata.items())) for p in problems]})
    return stores.evaluation_object(cfg, key)


def _writes(label: str, cfg: HealConfig) -> str:
    """The untrained student writes in its own format; a trained student writes as the teacher it learned from."""
    return cfg.student.reasoning_format if label == "student_base" else cfg.teacher.reasoning_format


@task(cache_policy=NO_CACHE)
def evaluate_model(
    label: str, model: str, identity: str, sets: dict[str, list[Problem]], cfg: HealConfig,
    train_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of per-problem results on every set (name -> problems), tagged with the model's label (teacher,
    student_base, or a variant: heal, rs_sft, ...), its training seed (None for teacher and student base), the
    set's name and the sampling settings. A set the evaluation store holds for this model is read from it; the
    model (``model``, a reference ``local_model`` resolves) is loaded, once, only for the others. Answers are
    read in the format the model writes (``_writes``)."""
    options, logger = cfg.storage.storage_options, get_run_logger()
    sampling = evaluation_sampling(cfg)
    settings = sampling_settings(sampling)
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
            found = [{"model": label, "train_seed": train_seed, "model_path": backend.model_path, "benchmark": name,
                      **asdict(result), **settings}
                     for result in evaluate(backend, problems, cfg.teacher.prompt_template, sampling,
                                            k=cfg.evaluation.samples, max_error_share=cfg.orchestration.max_verify_error_share,
                                            reasoning_format=_writes(label, cfg))]
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
