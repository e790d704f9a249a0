"""``heal-pipeline``: problems -> shards (sample, hints, GEAR, PURE) -> PACE datasets -> training -> eval -> report.

Every step writes its outputs under ``<storage.uri>/runs/<run_id>/`` and checks for them first, so running
the same run id again (``heal resume``) continues where it stopped: finished shards are skipped, finished
training stages are not retrained. The manifest records each shard's and step's status for people and tools.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import yaml
from prefect import flow, get_run_logger

from flows.evaluate import heal_eval
from flows.shard import heal_shard
from flows.train import heal_train
from heal_core import storage
from heal_core.config import HealConfig
from heal_core.demo import demo_problems
from heal_core.problems import Problem
from tasks.curriculum import build_datasets
from tasks.generate import shard_done, write_shards
from tasks.layout import RunLayout
from tasks.models import resolve_model
from tasks.problems import load_problems
from tasks.report import write_report


class RunConfigMismatch(ValueError):
    """A run id already used with another config: resuming it would mix two experiments."""


def _pin_config(layout: RunLayout, cfg: HealConfig) -> None:
    options = cfg.storage.storage_options
    if storage.exists(layout.config, options):
        stored = HealConfig.model_validate(yaml.safe_load(storage.read_bytes(layout.config, options)))
        if stored.config_hash() != cfg.config_hash():
            raise RunConfigMismatch(f"{layout.config} holds config {stored.config_hash()}, not {cfg.config_hash()}: "
                                    "use a new run id, or resume with the stored config")
        return
    storage.write_bytes(cfg.to_yaml().encode(), layout.config, options)


def _problems(uri: str, split: str, cfg: HealConfig, limit: int = 0) -> tuple[list[Problem], list]:
    if not uri:
        return demo_problems(split), []
    problems, rejects = load_problems(uri, cfg.problems, cfg)
    return (problems[:limit] if limit else problems), rejects


def _manifest(layout: RunLayout, cfg: HealConfig, run_id: str, shards: dict[int, str], steps: dict[str, str]) -> None:
    record = {"run_id": run_id, "config_hash": cfg.config_hash(), "shards": {str(k): v for k, v in shards.items()},
              "steps": steps}
    storage.write_json(record, layout.manifest, cfg.storage.storage_options)


@flow(name="heal-pipeline")
def heal_pipeline(config: dict[str, Any], run_id: str) -> dict[str, Any]:
    cfg = HealConfig.model_validate(config)
    layout = RunLayout.of(cfg.storage.uri, run_id)
    logger = get_run_logger()
    teacher = resolve_model(cfg.teacher.model, "teacher")  # fail fast, before any work
    student = resolve_model(cfg.student.model, "student")
    _pin_config(layout, cfg)
    options = cfg.storage.storage_options

    problems, rejects = _problems(cfg.problems.uri, "generation", cfg)
    if rejects:
        storage.write_json([{"record": r.record, "field": r.field, "reason": r.reason} for r in rejects],
                           layout.path("quarantine.json"), options)
    count = write_shards(layout, problems, cfg)
    status = {s: "done" if shard_done(layout, s, cfg) else "pending" for s in range(count)}
    steps = {"generate": "running"}
    _manifest(layout, cfg, run_id, status, steps)
    for shard in range(count):
        if status[shard] != "done":
            heal_shard(layout.root, shard, cfg.model_dump(mode="json"), teacher)
            status[shard] = "done"
            _manifest(layout, cfg, run_id, status, steps)
    steps["generate"] = "done"

    sizes = build_datasets(layout, count, cfg)
    steps["curriculum"] = "done"
    _manifest(layout, cfg, run_id, status, steps)
    logger.info("PACE datasets: %s", sizes)

    trained = {r["name"]: r["model_dir"] for r in heal_train(layout.root, cfg.model_dump(mode="json"), student)}
    steps["train"] = "done"
    _manifest(layout, cfg, run_id, status, steps)

    held_out, _ = _problems(cfg.evaluation.uri, "eval", cfg, cfg.evaluation.max_problems)
    models = {"teacher": teacher, "student_base": student}
    if "stage3" in trained or "stage2" in trained or "stage1" in trained:
        models["heal"] = trained.get("stage3") or trained.get("stage2") or trained["stage1"]
    if "rs_sft" in trained:
        models["rs_sft"] = trained["rs_sft"]
    evaluation = heal_eval(layout.root, cfg.model_dump(mode="json"), models,
                           [asdict(p) for p in held_out])
    steps["eval"] = "done"
    summary = write_report(layout, run_id, count, sizes, evaluation, cfg)
    steps["report"] = "done"
    _manifest(layout, cfg, run_id, status, steps)
    return summary
