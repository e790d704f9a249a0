"""One run, one process at a time (heal_core/lease.py): the lease is taken atomically in the run's storage, named
to whoever else tries, released at the end, taken over once expired, and a holder that lost it stops."""

from __future__ import annotations

import json
import time

import pytest

from heal_core import lease


@pytest.fixture(params=["local", "s3"])
def run_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs" / "r")
    import boto3

    boto3.client("s3", endpoint_url=request.getfixturevalue("s3_endpoint")).create_bucket(Bucket="lease-runs")
    return f"s3://lease-runs/{tmp_path.name}/runs/r"


def test_a_second_holder_is_refused_naming_the_first_until_it_releases(run_root):
    with lease.held(run_root, {}, 60, "flow run first", "first"):  # noqa: SIM117 (the second inside the first)
        with pytest.raises(lease.RunBusy, match=r"being worked on by .* pid \d+ \(flow run first\), since"):
            with lease.held(run_root, {}, 60, "flow run second", "second"):
                pytest.fail("two holders")
    with lease.held(run_root, {}, 60, "flow run second", "second"):  # released: taken at once
        pass


def test_a_retry_of_the_holding_flow_run_takes_its_lease_at_once(run_root):
    """An attempt that failed while its storage was down could not release the lease: its retry (the same flow
    run) takes it anyway, while anyone else is still refused."""
    lease.acquire(run_root, {}, 60, "attempt 1", "flow-run-7")  # never released
    with pytest.raises(lease.RunBusy):
        lease.acquire(run_root, {}, 60, "a resume", "flow-run-8")
    number, mine = lease.acquire(run_root, {}, 60, "attempt 2", "flow-run-7")
    assert number == 2 and mine.owner == "flow-run-7"


def test_an_expired_lease_is_taken_over(run_root):
    number, _ = lease.acquire(run_root, {}, 0.5, "a holder that was killed", "a")  # never renewed, never released
    time.sleep(0.6)
    taken, mine = lease.acquire(run_root, {}, 60, "the next resume", "b")
    assert taken == number + 1 and "the next resume" in mine.holder


def test_a_holder_whose_lease_was_taken_over_stops(tmp_path):
    root = str(tmp_path / "r")
    with pytest.raises(lease.LeaseLost, match="took it over"), lease.held(root, {}, 0.6, "a paused holder", "a"):
        # another process took over (as after a pause longer than the expiry): lease 2 exists
        (tmp_path / "r" / "leases" / "lease-00000002.json").write_text(
            json.dumps({"holder": "other", "owner": "b", "acquired": time.time(), "expires": time.time() + 60})
        )
        time.sleep(5)
        pytest.fail("the lost holder went on")


def test_a_lost_holder_stops_even_where_ctrl_c_is_ignored(tmp_path):
    """A worker started from a process that ignores SIGINT ignores it too: the lease is not lost through it."""
    import subprocess
    import sys

    code = f"""
import json, pathlib, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
from heal_core import lease
root = pathlib.Path({str(tmp_path / "r")!r})
try:
    with lease.held(str(root), {{}}, 0.6, "a holder that ignores Ctrl-C", "a"):
        (root / "leases" / "lease-00000002.json").write_text(json.dumps(
            {{"holder": "other", "owner": "b", "acquired": time.time(), "expires": time.time() + 60}}))
        time.sleep(5)
        print("went on")
except lease.LeaseLost as lost:
    print("stopped:", lost)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("stopped:") and "took it over" in done.stdout, done.stdout + done.stderr
