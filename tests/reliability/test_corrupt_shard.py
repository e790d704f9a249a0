"""A truncated shard object is detected on read and the shard is generated again, never merged short."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from prefect import flow

from heal_core.config import parse_config
from heal_core.problems import Problem
from heal_core.run import Run
from tasks.generate import run_shard, shard_done, write_shards

pytestmark = pytest.mark.slow  # see pyproject.toml: the fast lane leaves it out

PROBLEMS = [
    Problem(f"p{i}", f"Start with {i}, then apply in order: + 3. What is the result?", str(i + 3)) for i in range(2)
]


@flow
def _shard(layout: Run, cfg) -> dict:
    write_shards(layout, PROBLEMS, cfg)
    return run_shard(layout, 0, cfg, cfg.teacher.model)


@flow
def _done(layout: Run, cfg) -> bool:
    return shard_done(layout, 0, cfg) is not None


def test_truncated_samples_are_regenerated_identically(prefect_api, tiny_model_dirs, tmp_path):
    cfg = parse_config(
        {},
        [
            f"teacher.model={tiny_model_dirs['llama']}",
            f"storage.uri={tmp_path}",
            "teacher.sampling.n=2",
            "teacher.sampling.max_new_tokens=12",
            "hints.n=2",
            "gear.failed_paths=1",
            "gear.continuations=1",
        ],
    )
    layout = Run.of(cfg, "corrupt")
    first = _shard(layout, cfg)
    samples = tmp_path / "runs" / "corrupt" / "samples" / "shard-00000.parquet"
    clean = pq.read_table(samples)
    assert _done(layout, cfg)

    samples.write_bytes(samples.read_bytes()[: samples.stat().st_size // 2])  # truncated in place
    assert not _done(layout, cfg)  # the guarantee: a corrupt object never counts as a finished shard
    again = _shard(layout, cfg)
    assert again["samples"] == first["samples"] == clean.num_rows
    assert pq.read_table(samples).equals(clean)

    pq.write_table(clean.slice(0, 1), samples)  # well-formed Parquet, but short of the lineage's row count
    assert not _done(layout, cfg)
