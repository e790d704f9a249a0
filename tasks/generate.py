"""Prefect tasks of the generation side: split problems into shards, run one shard, read shard outputs."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from heal_core import fingerprints, progress, storage, stores, trajectory
from heal_core.backends.base import TeacherBackend
from heal_core.backends.factory import build_backend
from heal_core.config import HealConfig, TeacherConfig
from heal_core.generation_store import GenerationStore, generate_stored, lineage_sources
from heal_core.problems import Problem, problems_to_records
from heal_core.run import Run
from heal_core.schema import PROBLEM_SCHEMA, to_table
from heal_core.settings import Role
from heal_core.trajectory import check_kept_judged
from tasks.models import resolve_model, teacher_identity


@functools.lru_cache(maxsize=2)
def _cached_backend(teacher_json: str, model: str) -> TeacherBackend:
    return build_backend(TeacherConfig.model_validate_json(teacher_json), model)


def teacher_backend(teacher: TeacherConfig, model: str) -> TeacherBackend:
    """One teacher per worker process (weights, engine or server connection): every shard it runs re-uses it.

    Sampling settings and templates are per call, so they do not key the cache. A backend whose engine died is
    dropped, so the shard's retry gets a new one.
    """
    key = teacher.model_dump_json(exclude={"sampling", "prompt_template"})
    backend = _cached_backend(key, model)
    if not backend.alive:
        _cached_backend.cache_clear()
        backend = _cached_backend(key, model)
    return backend


@task(cache_policy=NO_CACHE)
def write_shards(run: Run, problems: list[Problem], cfg: HealConfig) -> int:
    """Write the problem shards (deterministic: the same problems and shard size give the same shards)."""
    size = cfg.orchestration.shard_size
    shards = [problems[i : i + size] for i in range(0, len(problems), size)]
    for shard, chunk in enumerate(shards):
        uri = run.shard_problems(shard)
        if not storage.exists(uri, run.options):
            storage.write_parquet(to_table(problems_to_records(chunk), PROBLEM_SCHEMA), uri, run.options)
    return len(shards)


def read_shard_problems(run: Run, shard: int) -> list[Problem]:
    table = storage.read_parquet(run.shard_problems(shard), PROBLEM_SCHEMA, run.options)
    return [Problem(**row) for row in table.to_pylist()]


def shard_done(run: Run, shard: int, cfg: HealConfig) -> dict[str, Any] | None:
    """The shard's lineage record if it finished under this exact config with its samples intact
    (``Run.finished_shard``), else None; a shard found corrupt is logged, then generated again."""
    record, problem = run.finished_shard(shard, cfg.config_hash())
    if problem is not None:
        get_run_logger().warning(problem)
    return record


class ShardProgress:
    """A progress listener for one shard: its ``heal-shard-<k>-progress`` artifact (the running stage's share done,
    its progress line as the description), updated at most every 2 s, and a log line as each stage begins and
    as it ends."""

    def __init__(self, shard: int) -> None:
        self.unit, self.logger = f"shard {shard}", get_run_logger()
        self.artifact = create_progress_artifact(0.0, key=f"heal-shard-{shard}-progress", description=self.unit)
        self.last: progress.Snapshot | None = None
        self.publish = progress.Every(
            2.0, lambda s: update_progress_artifact(self.artifact, 100.0 * s.done / max(1, s.planned), s.line())
        )

    def __call__(self, snapshot: progress.Snapshot) -> None:
        if snapshot.unit != self.unit:
            return
        if self.last is None or self.last.stage != snapshot.stage:
            self.finish_stage()
            self.logger.info("%s: stage %s: %d rows", self.unit, snapshot.stage, snapshot.planned)
        self.last = snapshot
        self.publish(snapshot)

    def finish_stage(self) -> None:
        if self.last is not None:
            self.logger.info("%s: done", self.last.line())
            update_progress_artifact(
                self.artifact, 100.0 * self.last.done / max(1, self.last.planned), self.last.line()
            )


def generation_store(cfg: HealConfig, model_path: str) -> tuple[GenerationStore, str]:
    """The store of ``cfg``'s generation (``heal_core/generation_store.py``) for the teacher at ``model_path``, and
    its fingerprint."""
    fingerprint = fingerprints.generation(cfg, teacher_identity(cfg, model_path))
    return GenerationStore.under(cfg.storage.uri, cfg.storage.storage_options, fingerprint), fingerprint


@task(cache_policy=NO_CACHE)
def run_shard(run: Run, shard: int, cfg: HealConfig, model_path: str) -> dict[str, Any]:
    """Generate one shard unless it already finished; outputs first, the lineage record (the marker) last.

    Problems come from the generation store where it has them; only the others reach the teacher, whose weights
    are loaded only then. Call it through ``retrying_shard``: a retry regenerates the shard, which is
    deterministic (seeded sampling, ids from content), so a write that failed mid-outage is redone with the same
    rows, never duplicated.
    """
    logger = get_run_logger()
    done = shard_done(run, shard, cfg)
    if done is not None:
        logger.info("shard %d already finished under config %s: skipped", shard, cfg.config_hash())
        return done
    problems = read_shard_problems(run, shard)

    def judge() -> TeacherBackend | None:
        if not cfg.judge.enabled:
            return None
        return teacher_backend(cfg.teacher, resolve_model(cfg.judge.model, "judge") if cfg.judge.model else model_path)

    logger.info("shard %d: %d problems, N=%d", shard, len(problems), cfg.teacher.sampling.n)
    shown = ShardProgress(shard)
    store, fingerprint = generation_store(cfg, model_path)
    with progress.unit(shown.unit), progress.listen(shown):
        out = generate_stored(
            problems,
            cfg,
            store,
            fingerprints.selection(cfg),
            model_path,
            lambda: teacher_backend(cfg.teacher, model_path),
            judge,
        )
    shown.finish_stage()
    stores.describe(cfg, Role.GENERATION, fingerprint, teacher=model_path)  # for heal store ls
    for problem in out.corrupt:
        logger.warning(problem)
    logger.info(
        "shard %d: %d problems re-used from the generation store, %d re-selected, %d sampled; the teacher "
        "drew %d tokens",
        shard,
        out.reused,
        out.reselected,
        out.sampled,
        out.usage.tokens,
    )
    check_kept_judged(out.trajectories, cfg.pure.enabled)
    storage.write_parquet(trajectory.to_table(out.trajectories), run.shard_samples(shard), run.options)
    record = {
        "shard": shard,
        "config_hash": cfg.config_hash(),
        "generation_fingerprint": fingerprint,
        "problems": len(problems),
        "samples": len(out.trajectories),
        "stats": [asdict(s) for s in out.stats.values()],
        "gear_skips": [asdict(s) for s in out.skips],
        "generation": lineage_sources(out.reused, out.reselected, out.sampled, out.usage),
    }
    storage.write_json(record, run.shard_lineage(shard), run.options)
    return record


def retrying_shard(cfg: HealConfig):
    """``run_shard`` with the configured retries and exponential backoff (storage outages, a flaky server)."""
    orch = cfg.orchestration
    delays = [orch.retry_backoff_seconds * 2**i for i in range(orch.shard_retries)]
    return run_shard.with_options(retries=orch.shard_retries, retry_delay_seconds=delays or 0)
