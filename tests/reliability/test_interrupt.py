"""Ctrl-C on ``heal run`` stops it at once, cleanly, and ``heal resume`` finishes the run (issue K, item 3).

The signal is delivered as a terminal delivers it: to the whole foreground process group of ``heal run``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rows import problems_file

pytestmark = pytest.mark.slow  # see pyproject.toml: the fast lane leaves it out

DATASETS = ("stage1", "stage2", "stage3", "rs_sft")


def _heal(tmp_path: Path, *args: str) -> list[str]:
    return [
        "heal",
        *args,
        "--set",
        f"problems.uri={problems_file(tmp_path / 'problems.jsonl', 'generation', 8)}",
        "--set",
        f"evaluation.uri={problems_file(tmp_path / 'eval.jsonl', 'eval', 3)}",
        "--set",
        f"storage.uri={tmp_path / 'store'}",
        "--set",
        "pace.seeds=[0]",
        "--set",
        "pace.variants=[heal,rs_sft]",
        "--set",
        "pace.epochs=1",
        "--set",
        "orchestration.shard_size=4",
    ]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # heal run's own server
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "HEAL_CACHE_DIR": str(tmp_path / "cache")}


def _datasets(store: Path, run_id: str) -> dict[str, list[str]]:
    return {
        name: sorted(
            pq.read_table(store / "runs" / run_id / "curriculum" / f"{name}.parquet").column("sample_id").to_pylist()
        )
        for name in DATASETS
    }


def test_ctrl_c_stops_heal_run_in_seconds_and_heal_resume_equals_a_clean_run(tmp_path):
    env = _env(tmp_path)
    clean = subprocess.run(
        _heal(tmp_path, "run", "--run-id", "clean"), env=env, capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]

    run = subprocess.Popen(
        _heal(tmp_path, "run", "--run-id", "cut"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert run.stdout is not None
    lines = []
    try:
        for line in run.stdout:  # until the first shard is generating
            lines.append(line)
            if "shard 0:" in line:
                break
        time.sleep(2)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the foreground group
        sent = time.monotonic()
        rest, _ = run.communicate(timeout=60)
        stopped = time.monotonic() - sent
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    output = "".join(lines) + rest
    print(f"\nheal run stopped {stopped:.1f} s after SIGINT")

    assert run.returncode == 130, output[-3000:]
    assert stopped < 15, output[-3000:]
    assert "Traceback" not in output and "ConnectError" not in output, output[-3000:]
    assert f"heal resume cut --storage {tmp_path / 'store'}" in output
    assert not [p for p in (tmp_path / "store").rglob("*") if ".tmp-" in p.name]  # no partial object

    resumed = subprocess.run(
        ["heal", "resume", "cut", "--storage", str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert _datasets(tmp_path / "store", "cut") == _datasets(tmp_path / "store", "clean")
