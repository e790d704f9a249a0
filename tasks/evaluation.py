"""Prefect task: evaluate one model on a problem set with the backend and the verifier."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from heal_core.backends.hf import HFBackend
from heal_core.config import HealConfig
from heal_core.evaluate import evaluate
from heal_core.problems import Problem


@task(cache_policy=NO_CACHE)
def evaluate_model(label: str, model_path: str, problems: list[Problem], cfg: HealConfig) -> list[dict[str, Any]]:
    """Rows of per-problem results tagged with the model's label (teacher, heal, rs_sft)."""
    backend = HFBackend(model_path, cfg.student.dtype, cfg.teacher.device, cfg.teacher.max_batch_sequences)
    sampling = cfg.teacher.sampling.model_copy(update={"n": cfg.evaluation.samples})
    results = evaluate(backend, problems, cfg.teacher.prompt_template, sampling, k=cfg.evaluation.samples)
    return [{"model": label, "model_path": model_path, **asdict(r)} for r in results]
