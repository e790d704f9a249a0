"""Prefect tasks: what an evaluation consists of (models x set shards), one model on its shards, and the run's results
assembled from the shards' parts with their summary and its artifact."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import fingerprints, progress, storage, stores
from heal_core.backends.base import TeacherBackend
from heal_core.backends.factory import build_backend
from heal_core.backends.openai import OpenAIBackend
from heal_core.backends.served import served
from heal_core.config import HealConfig
from heal_core.evaluate import (
    HELD_OUT,
    EvalUnit,
    backend_key,
    backend_kind,
    evaluation_rows,
    evaluation_units,
    served_by_heal,
    stored_evaluation,
    summarize,
)
from heal_core.problems import Problem
from heal_core.run import Run
from heal_core.schema import EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, SchemaError, conform, to_table
from heal_core.settings import Role
from tasks.generate import teacher_backend
from tasks.problems import benchmark_sets, problem_set
from tasks.training import TrainedModel, local_model


class ModelNotLoadable(RuntimeError):
    """A model the evaluation backend cannot load (missing or broken weights, an unknown architecture, a head size the
    engine's kernels lack); the message names the model's path, the backend and its reason."""


@task(cache_policy=NO_CACHE)
def evaluate_model(
    run: Run,
    label: str,
    train_seed: int | None,
    model: str,
    identity: str,
    pieces: Sequence[tuple[EvalUnit, Sequence[Problem]]],
    cfg: HealConfig,
) -> int:
    """One model's per-problem results on each piece (a set shard and its problems), written as the piece's part of
    the run's results (``Run.evaluation_part``); returns the number of rows. Rows are tagged with the model's label
    (teacher, student_base, or a variant: heal, rs_sft, ...), its training seed (None for teacher and student base),
    the set's name and the sampling settings. A piece the evaluation store holds for this model is read from it; the
    model (``model``, a reference ``local_model`` resolves) is loaded, once, only for the others. Answers are read
    in the format the model writes (``evaluate.written_format``)."""
    options, logger = cfg.storage.storage_options, get_run_logger()
    backend: TeacherBackend | None = None
    count = 0
    with ExitStack() as loaded, progress.unit(f"eval {label}" + ("" if train_seed is None else f" seed {train_seed}")):
        for unit, problems in pieces:
            stored = stored_evaluation(cfg, identity, label, train_seed, unit.benchmark, problems)
            rows = None
            if storage.exists(stored, options):
                try:
                    rows = _stored_rows(stored, backend_kind(label, cfg), options)
                except (storage.StorageError, SchemaError) as err:
                    logger.warning("evaluation store: %s; evaluated again", err)
            if rows is None:
                backend = backend or loaded.enter_context(_loaded(label, model, cfg))
                rows = evaluation_rows(backend, label, train_seed, unit.benchmark, problems, cfg)
                storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), stored, options)
                stores.describe(cfg, Role.EVALUATION, fingerprints.evaluation(cfg))  # for heal store ls
            storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), run.evaluation_part(unit.name), run.options)
            count += len(rows)
    return count


def _stored_rows(stored: str, kind: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an evaluation store object. One written before results named their backend (heal 0.1) gets the
    backend its key says (``backend_key``: at the defaults of then, the key of today's defaults)."""
    table = storage.read_parquet(stored, None, options)
    if "backend" not in table.column_names:
        table = table.append_column("backend", pa.array([kind] * table.num_rows, pa.string()))
    return conform(table, EVALUATION_SCHEMA, source=stored).to_pylist()


@contextmanager
def _loaded(label: str, model: str, cfg: HealConfig) -> Iterator[TeacherBackend]:
    """The model on its evaluation backend (``evaluate.backend_kind``), released on exit. The teacher on its own
    backend is the shards' cached one, kept for the worker's next shard; a model heal serves gets a server of its
    own for the evaluation (``heal_core/backends/served.py``)."""
    path = local_model(model, cfg)
    kind, dtype = backend_key(label, cfg)[:2]
    with ExitStack() as stack:
        try:
            if label == "teacher" and kind == cfg.teacher.backend:
                backend = teacher_backend(cfg.teacher, path)
            elif served_by_heal(label, cfg):
                backend = OpenAIBackend(stack.enter_context(served(cfg, path, dtype)), path)
                stack.callback(backend.close)
            else:
                backend = build_backend(cfg.teacher, path, dtype=dtype, kind=kind)  # type: ignore[arg-type]
        except Exception as err:  # transformers, safetensors, the engines and the servers each raise their own kinds
            raise ModelNotLoadable(f"{path} cannot be loaded by the {kind} backend: {err}") from err
        yield backend


@task(cache_policy=NO_CACHE)
def evaluation_plan(
    cfg: HealConfig, trained: Sequence[TrainedModel]
) -> tuple[dict[str, list[Problem]], list[EvalUnit]]:
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
            raise storage.StorageError(
                f"{part}: the evaluation of {unit.name} is missing (its heal-eval run did not "
                "finish): retry it, or run the evaluation again"
            )
        rows += storage.read_parquet(part, EVALUATION_SCHEMA, run.options).to_pylist()
    summary = summarize(rows)
    storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), run.evaluation, run.options)
    storage.write_parquet(to_table(summary, EVALUATION_SUMMARY_SCHEMA), run.evaluation_summary, run.options)
    create_table_artifact(
        key="heal-eval-summary",
        table=summary,
        description=f"pass@1 and pass@{cfg.evaluation.samples} per model, benchmark and group",
    )
    return len(rows)
