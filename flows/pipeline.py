"""``heal-pipeline``: problems -> shards (sample, hints, GEAR, PURE) -> datasets -> variants x seeds -> eval -> report.

Every step writes its outputs under ``<storage.uri>/runs/<run_id>/`` and checks for them first, so running
the same run id again (``heal resume``, or Retry on the parent in the Prefect UI) continues where it stopped:
finished shards are skipped, finished (variant, seed) models and training stages are not retrained. The
manifest records each shard's and step's status for people and tools.

The same flow code runs two ways (``orchestration.mode``): embedded, where shards, training and evaluation are
subflows in this process (a laptop, the tests), and deployments, where each is a run of its own deployment on
a work pool (``flows/dispatch.py``), so a failed shard is retried alone on a GPU worker.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import yaml
from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.deploy import check_shared_storage
from flows.dispatch import EVAL_DEPLOYMENT, SHARD_DEPLOYMENT, TRAIN_DEPLOYMENT, Child, run_children
from flows.evaluate import heal_eval
from flows.shard import heal_shard
from flows.train import heal_train
from heal_core import storage
from heal_core.config import HealConfig
from heal_core.schema import EVALUATION_SCHEMA
from tasks.curriculum import build_datasets
from tasks.generate import shard_done, write_shards
from tasks.layout import RunLayout, check_run_id
from tasks.models import resolve_model
from tasks.problems import drop_contaminated, problem_set
from tasks.report import write_report
from tasks.secrets import export_secrets
from tasks.training import TrainedModel, trained_models


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


def _use_deployments(cfg: HealConfig) -> bool:
    """``auto`` follows the parent: a parent started from a deployment (a schedule, the UI, the REST API) runs
    its children as deployment runs; one started in-process (``heal run``, tests) runs them as subflows."""
    mode = cfg.orchestration.mode
    deployments = mode == "deployments" or (mode == "auto" and runtime.deployment.id is not None)
    if deployments:
        check_shared_storage(cfg.storage.uri)
    return deployments


def _default_run_id() -> str:
    """Stable across retries of the same flow run (a retry must find its own outputs): the scheduled start
    time, for sorting, and the flow run id, for uniqueness."""
    start = runtime.flow_run.scheduled_start_time
    return f"{start:%Y%m%d-%H%M%S}-{runtime.flow_run.id[:8]}"


class _Manifest:
    """``manifest.json`` plus the per-shard progress artifact, updated as shards and steps finish."""

    def __init__(self, layout: RunLayout, cfg: HealConfig, run_id: str, shards: dict[int, str]) -> None:
        self.layout, self.cfg, self.run_id, self.shards = layout, cfg, run_id, shards
        self.steps: dict[str, str] = {"generate": "running"}
        self.progress = create_progress_artifact(self._percent(), key="heal-shard-progress",
                                                 description=f"HEAL run {run_id}: shards finished (%)")
        self.write()

    def _percent(self) -> float:
        return 100.0 * sum(v == "done" for v in self.shards.values()) / max(1, len(self.shards))

    def shard_done(self, shard: int) -> None:
        self.shards[shard] = "done"
        update_progress_artifact(self.progress, self._percent())
        self.write()

    def step_done(self, step: str) -> None:
        self.steps[step] = "done"
        self.write()

    def write(self) -> None:
        record = {"run_id": self.run_id, "config_hash": self.cfg.config_hash(),
                  "shards": {str(k): v for k, v in self.shards.items()}, "steps": self.steps}
        storage.write_json(record, self.layout.manifest, self.cfg.storage.storage_options)


@flow(name="heal-pipeline")
def heal_pipeline(config: HealConfig, run_id: str | None = None) -> dict[str, Any]:
    """Run (or continue) one HEAL run. ``run_id`` defaults to one derived from this flow run."""
    cfg = config
    export_secrets(cfg)
    run_id = check_run_id(run_id or _default_run_id())
    layout = RunLayout.of(cfg.storage.uri, run_id)
    logger = get_run_logger()
    deployments = _use_deployments(cfg)
    resolve_model(cfg.teacher.model, "teacher")  # fail fast, before any work; workers resolve their own copy
    resolve_model(cfg.student.model, "student")
    if cfg.judge.enabled and cfg.judge.model:
        resolve_model(cfg.judge.model, "judge")
    _pin_config(layout, cfg)
    options, key = cfg.storage.storage_options, cfg.config_hash()
    logger.info("run %s at %s (config %s, %s)", run_id, layout.root, key, "deployments" if deployments else "embedded")

    problems, rejects = problem_set(cfg.problems.uri, "generation", cfg)
    if rejects:
        storage.write_json([{"record": r.record, "field": r.field, "reason": r.reason} for r in rejects],
                           layout.path("quarantine.json"), options)
    problems, contaminated = drop_contaminated(problems, cfg)
    if cfg.decontamination.against:
        storage.write_json(contaminated, layout.contamination, options)
    count = write_shards(layout, problems, cfg)
    manifest = _Manifest(layout, cfg, run_id, {s: "done" if shard_done(layout, s, cfg) else "pending" for s in range(count)})
    pending = [s for s, status in manifest.shards.items() if status != "done"]
    params = {"run_root": layout.root, "config": cfg.model_dump(mode="json")}
    if deployments:
        children = [Child(f"{run_id}-shard-{s:05d}", f"{run_id}-shard-{s}-{key}", {**params, "shard": s}) for s in pending]
        run_children(SHARD_DEPLOYMENT, children, run_id, cfg.orchestration.poll_seconds, rerun_completed=True,
                     on_completed=lambda child: manifest.shard_done(child.parameters["shard"]))
    else:
        for shard in pending:
            heal_shard(layout.root, shard, cfg)
            manifest.shard_done(shard)
    manifest.step_done("generate")

    sizes = build_datasets(layout, count, cfg)
    manifest.step_done("curriculum")
    logger.info("training datasets: %s", sizes)

    if deployments:
        run_children(TRAIN_DEPLOYMENT, [Child(f"{run_id}-train", f"{run_id}-train-{key}", params)], run_id,
                     cfg.orchestration.poll_seconds)
    else:
        heal_train(layout.root, cfg)
    manifest.step_done("train")

    variants = trained_models(layout, cfg)
    trained = [TrainedModel(r.variant, r.seed, r.model_dir) for r in variants if r.model_dir is not None]
    if deployments:
        eval_params = {**params, "trained": [asdict(m) for m in trained]}
        run_children(EVAL_DEPLOYMENT, [Child(f"{run_id}-eval", f"{run_id}-eval-{key}", eval_params)],
                     run_id, cfg.orchestration.poll_seconds)
    else:
        heal_eval(layout.root, cfg, trained)
    manifest.step_done("eval")

    evaluation = storage.read_parquet(layout.evaluation, EVALUATION_SCHEMA, options).to_pylist()
    summary = write_report(layout, run_id, count, sizes, evaluation, variants, cfg)
    manifest.step_done("report")
    return summary
