"""Every bench script runs in its reduced mode and ends with its headline figure; timings are never asserted.

The scripts are measurement tools that nothing else imports, so without this they would rot silently.
Each runs as its own process, as a user runs it (``python bench/<name>.py``), from a scratch directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# script -> its smallest settings
REDUCED = {
    "overhead.py": ["--quick"],
    "orchestration.py": ["--shards", "2", "--workers", "1", "--db", "sqlite"],
    "polling.py": ["--children", "3,210"],  # 210: past the server's page limit
    "sampling.py": ["--quick"],
    "prefix_scoring.py": ["--quick"],
    "gear.py": ["--quick"],
    "storage.py": ["--quick"],
    "verify.py": ["--quick"],
    "training.py": ["--quick"],
    "reuse.py": ["--quick"],
    "scale.py": ["--quick"],  # 8 problems of 64 tokens; the template: 12 demo problems generated first
    "pure.py": ["--problems", "4", "--n", "4"],
    "train_memory.py": [
        "--layers",
        "1",
        "--lengths",
        "128",
        "--checkpointing",
        "on",
        "--steps",
        "2",
    ],  # problems 3 and 4 have 4+ steps: a genuine trajectory is likely
}
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(REDUCED))
def test_bench_script_runs_and_ends_with_a_figure(script: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *REDUCED[script]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing"
    assert NUMBER.search(lines[-1]), f"{script}: last line has no figure: {lines[-1]!r}"
    assert "|---" in proc.stdout or script == "pure.py", f"{script} printed no Markdown table"
