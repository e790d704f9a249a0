"""Prefect tasks: what an evaluation consists of (models x set shards), one model on its shards, and the run's results
assembled from the shards' parts with their summary and its artifact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import fingerprints, progress, storage, stores
from heal_core.backends.base import TeacherBackend
from heal_core.backends.factory import build_backend
from heal_core.config import HealConfig
from heal_core.evaluate import (
    HELD_OUT,
    EvalUnit,
    evaluation_rows,
    evaluation_units,
    stored_evaluation,
    summarize,
)
from heal_core.problems import Problem
from heal_core.run import Run
from heal_core.schema import (
    EVALUATION_SCHEMA,
    EVALUATION_SUMMARY_SCHEMA,
    SchemaError,
    to_table,
)
from heal_core.settings import Role
from tasks.generate import teacher_backend
from tasks.problems import benchmark_sets, problem_set
from tasks.training import TrainedModel, local_model


class ModelNotLoadable(RuntimeError):
    """A model the evaluation backend cannot load (missing or broken weights, an unknown architecture); the message
    names the model, its reference and the backend's reason."""


@task(cache_policy=NO_CACHE)
def evaluate_model(
    run: Run, label: str, train_seed: int | None, model: str, identity: str,
    pieces: Sequence[tuple[EvalUnit, Sequence[Problem]]], cfg: HealConfig,
) -> int:
    """One model's per-problem results on each piece (a set shard and its problems), written as the piece's part of
    the run's results (``Run.evaluation_part``); returns the number of rows. Rows are tagged with the model's label
    (teacher, student_base, or a variant: heal, rs_sft, ...), its training seed (None for teacher and student base),
    the set's name and the sampling settings. A piece the evaluation store holds for this model is read from it; the
    model (``model``, a reference ``local_model`` resolves) is loaded, once, only for the others. Answers are read
    in the format the model writes (``evaluate.written_format``)."""
    options, logger = cfg.storage.storage_options, get_run_logger()
    backend = None
    count = 0
    with progress.unit(f"eval {label}" + ("" if train_seed is None else f" seed {train_seed}")):
        for unit, problems in pieces:
            stored = stored_evaluation(cfg, identity, label, train_seed, unit.benchmark, problems)
            rows = None
            if storage.exists(stored, options):
                try:
                    rows = storage.read_parquet(stored, EVALUATION_SCHEMA, options).to_pylist()
                except (storage.StorageError, SchemaError) as err:
                    logger.warning("evaluation store: %s; evaluated again", err)
            if rows is None:
                backend = backend or _load(label, train_seed, model, cfg)
                rows = evaluation_rows(backend, label, train_seed, unit.benchmark, problems, cfg)
                storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), stored, options)
                stores.describe(cfg, Role.EVALUATION, fingerprints.evaluation(cfg))  # for heal store ls
            storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), run.evaluation_part(unit.name), run.options)
            count += len(rows)
    return count


def _load(label: str, train_seed: int | None, model: str, cfg: HealConfig) -> TeacherBackend:
    """The teacher on its configured backend (the shards' cached one); students on HF: a server serves only the
    teacher, and one process cannot free a vLLM engine reliably to load the next model."""
    path = local_model(model, cfg)
    try:
        if label == "teacher":
            return teacher_backend(cfg.teacher, path)
        return build_backend(cfg.teacher, path, dtype=cfg.student.dtype, kind="hf")
    except Exception as err:  # transformers, safetensors and the engines each raise their own kinds
        seed = "" if train_seed is None else f" seed {train_seed}"
        raise ModelNotLoadable(f"{label}{seed}: {path} cannot be loaded for evaluation: {err}") from err


@task(cache_policy=NO_CACHE)
def evaluation_plan(cfg: HealConfig, trained: Sequence[TrainedModel]) -> tuple[dict[str, list[Problem]], list[EvalUnit]]:
    """The sets every model is evaluated on (the held-out set, then each benchmark) and every (model, set shard):
    teacher, student base, then each trained (variant, seed)."""
    held_out, _ = problem_set(cfg.evaluation.uri, "eval", cfg, cfg.evaluation.max_problems)
    sets = {HELD_OUT: held_out, **benchmark_sets(cfg)}
    models = [("teacher", None), ("student_base", None), *((m.variant, m.seed) for m in trained)]
    return sets, evaluation_units(models, sets, cfg.evaluation.shard_size)


def pending_units(run: Run, units: Sequence[EvalUnit]) -> list[EvalUnit]:
    """The units whose part the run does not hold: what is left to evaluate."""
    return [unit for unit in units if not storage.exists(run.evaluation_part(unit.name), run.options)]


@task(cache_policy=NO_CACHE)
def write_evaluation(run: Run, units: Sequence[EvalUnit], cfg: HealConfig) -> int:
    """The run's per-problem results, its units' parts in order, and their summary per model, benchmark and group as
    Parquet; the summary also as the ``heal-eval-summary`` table artifact. Loads no model: a unit whose part is
    missing fails it, naming the unit. Returns the number of result rows."""
    rows: list[dict[str, Any]] = []
    for unit in units:
        part = run.evaluation_part(unit.name)
        if not storage.exists(part, run.options):
            raise storage.StorageError(f"{part}: the evaluation of {unit.name} is missing (its heal-eval run did not "
                                       "finish): retry it, or run the evaluation again")
        rows += storage.read_parquet(part, EVALUATION_SCHEMA, run.options).to_pylist()
    summary = summarize(rows)
    storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), run.evaluation, run.options)
    storage.write_parquet(to_table(summary, EVALUATION_SUMMARY_SCHEMA), run.evaluation_summary, run.options)
    create_table_artifact(key="heal-eval-summary", table=summary,
                          description=f"pass@1 and pass@{cfg.evaluation.samples} per model, benchmark and group")
    return len(rows)
