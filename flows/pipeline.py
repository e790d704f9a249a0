"""``heal-pipeline``: problems -> shards (sample, hints, GEAR, PURE) -> datasets -> variants x seeds -> eval -> report.

Every step writes its outputs under the run (``heal_core/run.py``) and checks for them first, so running the
same run id again (``heal resume``, or Retry on the parent in the Prefect UI) continues where it stopped:
finished shards are skipped, finished (variant, seed) models and training stages are not retrained. The
manifest records each shard's and step's status for people and tools.

The same flow runs two ways (``orchestration.mode``, ``flows/executor.py``): embedded, where shards, training
and evaluation are subflows in this process (a laptop, the tests), and deployments, where each is a run of its
own deployment on a work pool, so a failed shard is retried alone on a GPU worker.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.evaluate import check_one_engine
from flows.executor import Executor, executor_for
from heal_core import lease
from heal_core.config import HealConfig
from heal_core.run import Run
from tasks.curriculum import build_datasets, dataset_sizes
from tasks.generate import shard_done
from tasks.models import check_chat_templates, resolve_model
from tasks.problems import shard_problems
from tasks.report import write_report
from tasks.secrets import export_secrets
from tasks.training import TrainedModel


def _default_run_id() -> str:
    """Stable across retries of the same flow run (a retry must find its own outputs): the scheduled start
    time, for sorting, and the flow run id, for uniqueness."""
    start = runtime.flow_run.scheduled_start_time
    return f"{start:%Y%m%d-%H%M%S}-{runtime.flow_run.id[:8]}"


def check_models(cfg: HealConfig) -> None:
    """Fail fast, before any work: the models exist and their chat templates fit the reasoning formats; workers
    resolve their own copies."""
    teacher, student = resolve_model(cfg.teacher.model, "teacher"), resolve_model(cfg.student.model, "student")
    if cfg.judge.enabled and cfg.judge.model:
        resolve_model(cfg.judge.model, "judge")
    check_chat_templates(cfg, teacher, student)


class Progress:
    """The run's manifest and its per-shard progress artifact, updated as shards and steps finish."""

    def __init__(self, run: Run, cfg: HealConfig, shards: int) -> None:
        self.run, self.config_hash = run, cfg.config_hash()
        self.shards = {s: "done" if shard_done(run, s, cfg) else "pending" for s in range(shards)}
        self.steps: dict[str, str] = {"generate": "running"}
        self.artifact = create_progress_artifact(
            self._percent(), key="heal-shard-progress", description=f"HEAL run {run.run_id}: shards finished (%)"
        )
        self._write()

    @property
    def pending(self) -> list[int]:
        return [s for s, status in self.shards.items() if status != "done"]

    def _percent(self) -> float:
        return 100.0 * sum(v == "done" for v in self.shards.values()) / max(1, len(self.shards))

    def shard_done(self, shard: int) -> None:
        self.shards[shard] = "done"
        update_progress_artifact(self.artifact, self._percent())
        self._write()

    def step_done(self, step: str) -> None:
        self.steps[step] = "done"
        self._write()

    def _write(self) -> None:
        self.run.write_manifest(self.config_hash, self.shards, self.steps)


@flow(name="heal-pipeline")
def heal_pipeline(config: HealConfig, run_id: str | None = None) -> dict[str, Any]:
    """Run (or continue) one HEAL run. ``run_id`` defaults to one derived from this flow run."""
    cfg = config
    export_secrets(cfg)
    run = Run.of(cfg, run_id or _default_run_id())
    check_models(cfg)  # before anything is written, the lease too
    with lease.held(run.root, run.options, cfg.orchestration.lease_seconds, *holder()):
        return _pipeline(run, cfg)


def holder() -> tuple[str, str]:
    """What holds a run's lease (``heal_core/lease.py``), as a second process names it, and its owner: this flow
    run, whose retry takes the lease at once."""
    return f"flow run {runtime.flow_run.name} {runtime.flow_run.id}", str(runtime.flow_run.id)


def _pipeline(run: Run, cfg: HealConfig) -> dict[str, Any]:
    executor = executor_for(run, cfg)
    if executor.label == "embedded":  # fail before generation, not after training
        check_one_engine(
            cfg,
            {("teacher", None), ("student_base", None), *((v, s) for v in cfg.pace.variants for s in cfg.pace.seeds)},
        )
    run.pin(cfg)
    get_run_logger().info("run %s at %s (config %s, %s)", run.run_id, run.root, cfg.config_hash(), executor.label)

    # 1. problems -> shards: malformed records quarantined, copies of evaluation items dropped
    shards = shard_problems(run, cfg)
    progress = Progress(run, cfg, shards)
    if progress.pending and run.generation != run:  # its samples are another run's objects, never written here
        raise RuntimeError(
            f"run {run.run_id} is derived from run {run.generation.run_id}, whose samples it reads, "
            f"and its record of shard(s) {', '.join(map(str, progress.pending))} is missing: run the "
            "same heal train or heal eval again, which writes it"
        )

    # 2. every unfinished shard: Stage I sampling, buckets, Stage II hints, GEAR, PURE
    executor.shards(progress.pending, progress.shard_done)
    progress.step_done("generate")

    return after_generation(run, shards, cfg, executor, progress)


def after_generation(run: Run, shards: int, cfg: HealConfig, executor: Executor, progress: Progress) -> dict[str, Any]:
    """Steps 3 to 6, from the run's samples on: what a run derived from another (``flows/derive.py``) runs too."""
    # 3. the PACE stage datasets, the baselines' and the ablations' (a derived run may train on its parent's)
    sizes = build_datasets(run, shards, cfg) if run.assembly is run else dataset_sizes(run)
    progress.step_done("curriculum")
    get_run_logger().info("training datasets: %s", sizes)

    # 4. every (variant, seed), stage after stage
    executor.train()
    progress.step_done("train")

    # 5. teacher, student base and every trained model on the held-out set and the benchmarks
    executor.evaluate(
        [TrainedModel(r.variant, r.seed, r.model_dir) for r in run.variants(cfg) if r.model_dir is not None]
    )
    progress.step_done("eval")

    # 6. report.md, plots, summary.json and the run's artifacts
    summary = write_report(run, shards, sizes, cfg)
    progress.step_done("report")
    return summary
