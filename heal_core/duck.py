"""DuckDB, heal's engine for tables larger than memory (a run's samples after generation): one way to open it.

A connection holds at most ``orchestration.memory_limit`` and spills its sorts, joins and tables to a scratch
directory, so the curriculum's deduplication and order (``heal_core/pace.py``) and the report's aggregates
(``heal_core/report.py``) run in bounded memory whatever the run's size. DuckDB reads the Arrow streams heal's
storage layer scans (``storage.scan``) by their Python variable's name.
"""

from __future__ import annotations

from pathlib import Path

import duckdb


def connect(workdir: Path, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that holds at most ``memory_limit`` and spills to ``workdir/duckdb``. Insertion order is
    not kept (every query that hands rows on says its ORDER BY), which lets DuckDB stream more."""
    spill = workdir / "duckdb"
    spill.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(spill),
                                  "preserve_insertion_order": False})
