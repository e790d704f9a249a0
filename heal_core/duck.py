"""DuckDB, heal's engine for tables larger than memory (a run's samples after generation): one way to open it.

A connection holds at most ``orchestration.memory_limit`` and spills its sorts, joins and tables to a scratch
directory, so the curriculum's deduplication and order (``heal_core/pace.py``) and the report's aggregates
(``heal_core/summary.py``) run in bounded memory whatever the run's size. DuckDB reads the Arrow streams heal's
storage layer scans (``storage.scan``) by their Python variable's name.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from heal_core.memory_plan import parse_size

PER_THREAD = 512 * 2**20
"""Memory each DuckDB thread gets at least. Sorting 4k-token traces, two threads ran out of a 256 MB limit where
one did not (bench/scale.py, 2026-12-07): DuckDB's own guide asks for 1 to 4 GB a thread out of core."""


def connect(workdir: Path, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that holds at most ``memory_limit`` and spills to ``workdir/duckdb``, with one thread per
    ``PER_THREAD`` of it (at least one, at most the machine's cores). Insertion order is not kept (every query that
    hands rows on says its ORDER BY), which lets DuckDB stream more."""
    spill = workdir / "duckdb"
    spill.mkdir(parents=True, exist_ok=True)
    threads = max(1, min(os.cpu_count() or 1, parse_size(memory_limit) // PER_THREAD))
    return duckdb.connect(
        config={
            "memory_limit": memory_limit,
            "temp_directory": str(spill),
            "threads": threads,
            "preserve_insertion_order": False,
        }
    )
