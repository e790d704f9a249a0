"""Shared test set-up: offline, no telemetry, small thread counts; shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The third-party benchmark files (never copied into this repo); skip where they are not available."""
    value = os.environ.get("HEAL_BENCHMARKS_DIR")
    if not value:
        pytest.skip("HEAL_BENCHMARKS_DIR is unset: benchmark-file tests need ../shared/data/benchmarks")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"HEAL_BENCHMARKS_DIR={value} is not a directory")
    return path
