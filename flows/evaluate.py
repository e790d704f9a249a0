"""``heal-eval``: pass@1 and pass@k of teacher and students on the held-out problems and the benchmarks."""

from __future__ import annotations

from itertools import groupby

from prefect import flow

from heal_core.config import HealConfig
from heal_core.evaluate import EvalUnit, backend_kind
from heal_core.fingerprints import model_identity
from heal_core.run import Run
from tasks.evaluation import (
    evaluate_model,
    evaluation_plan,
    pending_units,
    write_evaluation,
)
from tasks.models import resolve_model, teacher_identity
from tasks.secrets import export_secrets
from tasks.training import TrainedModel, trained_model_identity


class EvaluationFailed(RuntimeError):
    """Some models could not be evaluated; the others were. The message names each one and why."""


@flow(name="heal-eval")
def heal_eval(
    run_root: str, config: HealConfig, trained: list[TrainedModel], units: list[EvalUnit] | None = None
) -> int:
    """Teacher and student base (as configured, resolved on this worker) and every ``trained`` (variant, seed)
    model (fetched into the worker's cache), each on the held-out set and on every configured benchmark, all
    with the same sampling settings; what the evaluation store holds is read, not evaluated again. A trained
    model's rows carry its variant as the model label and its seed as ``train_seed``.

    Without ``units``: every (model, set shard) whose part the run does not hold yet, then the run's per-problem
    results and their summary, assembled from the parts; returns the number of result rows. With ``units`` (one
    deployment run of a fanned-out evaluation, ``flows/executor.py``): those, each written as its part, and
    nothing assembled; returns their rows. A model that cannot be evaluated fails the run after the others are."""
    export_secrets(config)
    run = Run.at(run_root, config)
    run.check_models([m.model for m in trained])
    sets, plan = evaluation_plan(config, trained)
    todo = units if units is not None else pending_units(run, plan)
    check_one_engine(config, {(unit.model, unit.train_seed) for unit in todo})
    references = {(m.variant, m.seed): m.model for m in trained}
    count, failed = 0, []
    for (label, seed), group in groupby(todo, key=lambda u: (u.model, u.train_seed)):
        pieces = [(unit, sets[unit.benchmark][unit.start : unit.stop]) for unit in group]
        try:
            reference, identity = _model(label, seed, references, config)
            count += evaluate_model(run, label, seed, reference, identity, pieces, config)
        except Exception as err:
            failed.append(f"{label}" + ("" if seed is None else f" seed {seed}") + f": {err}")
    if failed:
        raise EvaluationFailed(
            f"{len(failed)} model(s) not evaluated (the others are, in the run's eval/parts/):\n  "
            + "\n  ".join(failed)
        )
    return write_evaluation(run, plan, config) if units is None else count


def check_one_engine(cfg: HealConfig, models: set[tuple[str, int | None]]) -> None:
    """``evaluation.backend: vllm`` puts an engine in this process for each model, and one process cannot free a
    vLLM engine reliably to load the next: refuse more than one model before any is loaded."""
    engines = sorted(
        label + ("" if seed is None else f" seed {seed}")
        for label, seed in models
        if backend_kind(label, cfg) == "vllm"
    )
    if len(engines) > 1:
        raise ValueError(
            f"evaluation.backend vllm: one vLLM engine per process, and this evaluation would load "
            f"{len(engines)} ({', '.join(engines)}): run it in deployment mode (orchestration.mode: "
            "deployments, one heal-eval run per model), or set evaluation.backend: openai with "
            "evaluation.vllm_python (a vLLM server per model)"
        )


def _model(label: str, seed: int | None, trained: dict[tuple[str, int], str], cfg: HealConfig) -> tuple[str, str]:
    """(the model's reference, what names it in the evaluation store)."""
    if label == "teacher":
        teacher = resolve_model(cfg.teacher.model, "teacher")
        return teacher, teacher_identity(cfg, teacher)
    if label == "student_base":
        student = resolve_model(cfg.student.model, "student")
        return student, model_identity(student)
    if seed is None or (label, seed) not in trained:
        raise ValueError(f"heal-eval: no trained model {label} seed {seed} among the models given")
    reference = trained[(label, seed)]
    return reference, trained_model_identity(reference, cfg.storage.storage_options)
