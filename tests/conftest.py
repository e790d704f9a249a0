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


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 HTTP endpoint: moto's standalone server on a free local port, with AWS_* env pointing at it.

    A real server (not moto's in-process mock) so that s3fs/aiobotocore go through actual HTTP, as in a run.
    """
    from servers import moto_server

    with moto_server(tmp_path_factory.mktemp("moto") / "server.log") as url, pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(key, value)
        yield url


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Random-init llama and qwen2 causal LMs (hidden 64, 2 layers) sharing one locally trained tokenizer."""
    from heal_core.testing import build_tiny_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = build_tokenizer(root / "tokenizer")
    return {
        arch: build_tiny_model(root / arch, arch, seed=i, tokenizer=tokenizer)
        for i, arch in enumerate(("llama", "qwen2"))
    }


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect API server (Prefect's test harness: temporary SQLite DB, subprocess server), once per session.

    Flow heartbeats are off: each sync flow run otherwise waits ~1 s for its heartbeat thread.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_HOME: home}),
        prefect_test_harness(server_startup_timeout=60),
    ):
        yield


@pytest.fixture
def teacher_calls(monkeypatch):
    """The requests of every ``generate`` call the bundled teacher gets, recorded on the real HF backend class."""
    from heal_core.backends.hf import HFBackend
    from heal_core.demo import bundled_model

    calls, teacher, real = [], str(bundled_model("teacher")), HFBackend.generate

    def recording(self, requests, sampling):
        if self.model_path == teacher:
            calls.append(list(requests))
        return real(self, requests, sampling)

    monkeypatch.setattr(HFBackend, "generate", recording)
    return calls
