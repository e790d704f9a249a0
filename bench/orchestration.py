"""Per-shard orchestration overhead of heal-shard deployment runs: SQLite- vs PostgreSQL-backed Prefect server.

A real `prefect server start`, `heal deploy`, process workers on the gpu pool (`heal worker`), and ``--shards``
trivial shard runs: every run is a real heal-shard deployment run on a shard whose output already exists, so
its own compute is the idempotency check alone (the `run_shard` task, timed by Prefect and subtracted).
Overhead = created -> completed minus that task's run time: scheduling, worker polling, process start, imports.

    python bench/orchestration.py [--shards 20] [--workers 2] [--db sqlite postgres]

Last line: the headline ratio, PostgreSQL total / SQLite total wall time for the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test suite's server helpers
from servers import postgres_url, prefect_server, stop

from heal_core.config import parse_config
from heal_core.demo import demo_defaults, demo_problems
from heal_core.run import Run
from tasks.generate import write_shards

HEAL = str(Path(sys.executable).parent / "heal")


def _time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _wait_final(client: httpx.Client, ids: list[str], seconds: float = 1800) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        runs = client.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": ids}}}).raise_for_status().json()
        if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError("shard runs did not finish")
        time.sleep(0.5)


def measure(db: str, shards: int, workers: int, tmp: Path) -> dict[str, float]:
    url = None
    if db == "postgres":
        url = postgres_url()
        if url is None:
            raise SystemExit("no PostgreSQL server answers on 127.0.0.1:5432")
    home = tmp / f"prefect-{db}"
    home.mkdir()
    problems = tmp / "problems.jsonl"
    p = demo_problems("generation")[0]
    problems.write_text(json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}) + "\n")
    cfg = parse_config(
        demo_defaults(),
        [
            f"problems.uri={problems}",
            f"storage.uri={tmp / f'store-{db}'}",
            "teacher.sampling.n=2",
            "hints.n=2",
            "teacher.sampling.max_new_tokens=8",
        ],
    )
    (tmp / "bench.yaml").write_text(cfg.to_yaml())
    with prefect_server(home, url) as server:
        api = server.api
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_HOME": str(home),
            "HEAL_CACHE_DIR": str(tmp / "cache"),
        }
        subprocess.run([HEAL, "deploy", str(tmp / "bench.yaml")], env=env, check=True, capture_output=True)
        procs = [
            subprocess.Popen(
                [HEAL, "worker", "--pool", "gpu", "--limit", "1", "--name", f"w{i}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        try:
            with httpx.Client(base_url=api, timeout=30) as client:
                dep = client.get("/deployments/name/heal-shard/heal-shard").raise_for_status().json()["id"]
                root = f"{cfg.storage.uri}/runs/bench"
                write_shards.fn(Run.at(root, cfg), [p], cfg)
                params = {"run_root": root, "shard": 0, "config": cfg.model_dump(mode="json")}

                refused = 0

                def launch(key: str) -> str:
                    """503 = the server could not commit (SQLite: "database is locked"); retried, and counted."""
                    nonlocal refused
                    body = {"parameters": params, "idempotency_key": key, "name": key}
                    for _ in range(20):
                        answer = client.post(f"/deployments/{dep}/create_flow_run", json=body)
                        if answer.status_code != 503:
                            return answer.raise_for_status().json()["id"]
                        refused += 1
                        time.sleep(0.5)
                    answer.raise_for_status()

                _wait_final(client, [launch("warm-up")])  # does the shard's real work once
                started = time.perf_counter()
                runs = _wait_final(client, [launch(f"trivial-{i}") for i in range(shards)])
                wall = time.perf_counter() - started
                tasks = (
                    client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [r["id"] for r in runs]}}})
                    .raise_for_status()
                    .json()
                )
        finally:
            for proc in procs:
                stop(proc)
    own = {t["flow_run_id"]: t["total_run_time"] for t in tasks if t["name"].startswith("run_shard")}
    assert all(r["state"]["type"] == "COMPLETED" for r in runs), [r["state"] for r in runs]
    overhead = [_time(r["end_time"]) - _time(r["created"]) - own.get(r["id"], 0.0) for r in runs]
    queued = [_time(r["start_time"]) - _time(r["created"]) for r in runs]
    return {
        "refused_503": refused,
        "wall_s": wall,
        "overhead_median_s": statistics.median(overhead),
        "overhead_max_s": max(overhead),
        "queue_median_s": statistics.median(queued),
        "own_median_s": statistics.median(own.values()),
        "per_shard_s": wall / shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for db in args.db:
            (Path(tmp) / db).mkdir()
            results[db] = measure(db, args.shards, args.workers, Path(tmp) / db)
    print(f"{args.shards} trivial heal-shard deployment runs, {args.workers} process workers")
    print(
        "| server | batch wall s | per shard s | overhead median s | overhead max s | queued median s "
        "| own compute median s | create refused (503) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for db, r in results.items():
        print(
            f"| {db} | {r['wall_s']:.1f} | {r['per_shard_s']:.2f} | {r['overhead_median_s']:.2f} | "
            f"{r['overhead_max_s']:.2f} | {r['queue_median_s']:.2f} | {r['own_median_s']:.3f} | {r['refused_503']} |"
        )
    if len(results) == 2:
        print(f"postgres/sqlite batch wall time: {results['postgres']['wall_s'] / results['sqlite']['wall_s']:.2f}")


if __name__ == "__main__":
    main()
