"""Prefect tasks: read a problem set, quarantining bad records with their reasons; shard a run's problems."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from heal_core import storage
from heal_core.config import HealConfig, ProblemsConfig
from heal_core.datasets import load_named_sets, load_problem_set
from heal_core.decontaminate import decontaminate
from heal_core.demo import demo_problems
from heal_core.evaluate import HELD_OUT
from heal_core.fingerprints import digest
from heal_core.problems import Problem, ProblemError, Reject, changes, require_problems
from heal_core.run import Run
from tasks.generate import read_shard_problems, write_shards


@task(cache_policy=NO_CACHE)
def load_problems(uri: str, fields: ProblemsConfig, cfg: HealConfig) -> tuple[list[Problem], list[Reject]]:
    """Good records become problems; bad ones are logged and returned for the quarantine file.

    ``fields`` gives the layout (format, field mapping, split) of ``uri``. Only a set with no usable record
    at all is an error: one bad line must not stop a whole run.
    """
    problems, rejects = load_problem_set(fields.model_copy(update={"uri": uri}), cfg.storage.storage_options)
    require_problems(problems, rejects, uri)
    for reject in rejects:
        get_run_logger().warning("%s: quarantined %s", uri, reject)
    return problems, rejects


def problem_set(uri: str, split: str, cfg: HealConfig, limit: int = 0) -> tuple[list[Problem], list[Reject]]:
    """The problems at ``uri`` (the embedded demo's ``split`` when it is empty), the first ``limit`` when set."""
    problems, rejects = load_problems(uri, cfg.problems, cfg) if uri else (demo_problems(split), [])
    return (problems[:limit] if limit else problems), rejects


@task(cache_policy=NO_CACHE)
def benchmark_sets(cfg: HealConfig) -> dict[str, list[Problem]]:
    """``evaluation.benchmarks`` by set name, each cut to ``evaluation.max_problems`` like the held-out set.

    The held-out set's label is taken: a benchmark file of that name would be reported as the held-out set.
    """
    sets = load_named_sets(cfg.evaluation.benchmarks, cfg.storage.storage_options)
    if HELD_OUT in sets:
        raise ProblemError(f"evaluation.benchmarks: the set name {HELD_OUT!r} is the held-out set's; rename the file")
    limit = cfg.evaluation.max_problems
    return {name: problems[:limit] if limit else problems for name, problems in sets.items()}


@task(cache_policy=NO_CACHE)
def drop_contaminated(problems: list[Problem], cfg: HealConfig) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Training problems that copy an evaluation item never reach the teacher (a gain measured on an item the
    student trained on is worthless); each dropped one is returned with the eval item it matches."""
    if not cfg.decontamination.against:
        return problems, []
    sets = load_named_sets(cfg.decontamination.against, cfg.storage.storage_options)
    kept, dropped = decontaminate(problems, sets, cfg.decontamination.ngram, cfg.decontamination.min_overlap)
    for item in dropped:
        get_run_logger().warning(
            "dropped %s: overlaps %s %s (%.0f %% of its %d-grams)",
            item.problem.problem_id,
            item.eval_set,
            item.eval_id,
            100 * item.overlap,
            cfg.decontamination.ngram,
        )
    return kept, [item.record() for item in dropped]


def shard_problems(run: Run, cfg: HealConfig) -> int:
    """The training problems, checked (bad records to ``quarantine.json``, copies of evaluation items to
    ``decontamination.json``), written as the run's problem shards; returns how many shards there are."""
    problems, rejects = problem_set(cfg.problems.uri, "generation", cfg)
    if rejects:
        storage.write_json(
            [{"record": r.record, "field": r.field, "reason": r.reason} for r in rejects], run.quarantine, run.options
        )
    problems, contaminated = drop_contaminated(problems, cfg)
    if cfg.decontamination.against:
        storage.write_json(contaminated, run.contamination, run.options)
    check_pin(run, problems, cfg)
    shards = write_shards(run, problems, cfg)
    storage.write_json(_pin(problems), run.problems_pin, run.options)
    return shards


class ProblemsChanged(ValueError):
    """The problem file gives other problems than the run was started on: resuming would drop or double some."""


def _pin(problems: list[Problem]) -> dict[str, Any]:
    return {"problems": len(problems), "digest": digest([p.key for p in problems])}


def check_pin(run: Run, problems: list[Problem], cfg: HealConfig) -> None:
    """Refuse to go on with problems other than the run's own: the pin written with its shards says what they were
    (a run from before the pin is held against its stored shards). The config hash covers the file's URI, not what
    the file holds, so a file that grew or changed between attempts is caught here."""
    pinned = storage.read_json(run.problems_pin, run.options) if storage.exists(run.problems_pin, run.options) else None
    if pinned == _pin(problems) or (pinned is None and run.shard_count() == 0):
        return
    stored = [p for shard in range(run.shard_count()) for p in read_shard_problems(run, shard)]
    difference = changes(stored, problems)
    if difference:
        source = cfg.problems.uri or "the embedded demo"
        raise ProblemsChanged(
            f"run {run.run_id} was started on {len(stored)} problems of {source}, which now gives {len(problems)}: "
            f"{difference}. Resuming would drop or double problems; start a new run on the file as it is now "
            f"(heal run ... --run-id NEW: the generation store re-uses every unchanged problem), or restore the file"
        )
