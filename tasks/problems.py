"""Prefect task: read a problem file, quarantining bad records with their reasons."""

from __future__ import annotations

from pathlib import PurePosixPath

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from heal_core import storage
from heal_core.config import HealConfig, ProblemsConfig
from heal_core.problems import Problem, Reject, parse_records, read_records, require_problems


@task(cache_policy=NO_CACHE)
def load_problems(uri: str, fields: ProblemsConfig, cfg: HealConfig) -> tuple[list[Problem], list[Reject]]:
    """Good records become problems; bad ones are logged and returned for the quarantine file.

    Only a file with no usable record at all is an error: one bad line must not stop a whole run.
    """
    data = storage.read_bytes(uri, cfg.storage.storage_options)
    problems, rejects = parse_records(read_records(data, uri), fields, source=PurePosixPath(uri).stem)
    require_problems(problems, rejects, uri)
    for reject in rejects:
        get_run_logger().warning("%s: quarantined %s", uri, reject)
    return problems, rejects
