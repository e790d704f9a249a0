"""``heal-eval``: pass@1 and pass@k of teacher and students on the held-out problems and the benchmarks."""

from __future__ import annotations

from prefect import flow

from heal_core.config import HealConfig
from heal_core.evaluate import HELD_OUT
from heal_core.fingerprints import model_identity
from heal_core.run import Run
from tasks.evaluation import evaluate_model, write_evaluation
from tasks.models import resolve_model, teacher_identity
from tasks.problems import benchmark_sets, problem_set
from tasks.secrets import export_secrets
from tasks.training import TrainedModel, trained_model_identity


@flow(name="heal-eval")
def heal_eval(run_root: str, config: HealConfig, trained: list[TrainedModel]) -> int:
    """Teacher and student base (as configured, resolved on this worker) and every ``trained`` (variant, seed)
    model (fetched into the worker's cache), each on the held-out set and on every configured benchmark, all
    with the same sampling settings; what the evaluation store holds is read, not evaluated again. A trained
    model's rows carry its variant as the model label and its seed as ``train_seed``. Per-problem results and
    their per-benchmark summary land as Parquet; returns the number of result rows."""
    export_secrets(config)
    run = Run.at(run_root, config)
    run.check_models([m.model for m in trained])
    held_out, _ = problem_set(config.evaluation.uri, "eval", config, config.evaluation.max_problems)
    sets = {HELD_OUT: held_out, **benchmark_sets(config)}
    teacher, student = resolve_model(config.teacher.model, "teacher"), resolve_model(config.student.model, "student")
    models = [("teacher", None, teacher, teacher_identity(config, teacher)),
              ("student_base", None, student, model_identity(student)),
              *((m.variant, m.seed, m.model, trained_model_identity(m.model, config.storage.storage_options))
                for m in trained)]
    rows = [row for label, seed, ref, identity in models
            for row in evaluate_model(label, ref, identity, sets, config, train_seed=seed)]
    write_evaluation(run, rows, config)
    return len(rows)
