"""Training + evaluation of one run in deployment mode, on 1 GPU-pool worker against 2: the fan-out's wall-time ratio.

For each worker count, from nothing: a real ``prefect server start`` (PostgreSQL where one answers on
127.0.0.1:5432, else SQLite), ``heal deploy``, a ``cpu`` worker for the parent and N ``gpu`` workers with one slot
each (``heal worker --pool gpu --limit 1``, one per GPU as on a cluster), a fresh storage, and one ``heal-pipeline``
run triggered over REST on a reduced demo config: ``--variants`` x ``--seeds`` ``heal-train`` runs and one
``heal-eval`` run per (model, set shard). The figure is the span from the first training run's start to the last
evaluation run's end (generation, the same in both, is left out), read from the flow runs' own timestamps.

    python bench/fanout.py [--workers 1,2] [--problems 16] [--seeds 0,1] [--eval-problems 20] [--eval-shard 10]

A GPU worker owns its device; here each worker owns its share of the cores instead (``OMP_NUM_THREADS`` = cores /
workers, as ``--threads`` says: ``auto``; a number gives every worker that many; ``0`` leaves torch's default, every
core to every worker). On this 2-core box the server, PostgreSQL and the parent share the same cores, so the ratio
says what the fan-out saves in process starts, model loads and waits more than what it saves on 2 GPUs. Last line:
the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test suite's server helpers
from servers import postgres_url, prefect_server, stop

from heal_core.config import HealConfig, parse_config
from heal_core.demo import demo_defaults, demo_problems

HEAL = str(Path(sys.executable).parent / "heal")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def config(tmp: Path, args: argparse.Namespace) -> HealConfig:
    problems = tmp / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}) + "\n"
            for p in demo_problems("generation")[: args.problems]
        )
    )
    return parse_config(
        demo_defaults(),
        [
            f"problems.uri={problems}",
            f"storage.uri={tmp / 'store'}",
            f"orchestration.shard_size={args.problems}",
            "orchestration.poll_seconds=1",
            f"pace.variants=[{args.variants}]",
            f"pace.seeds=[{args.seeds}]",
            f"evaluation.max_problems={args.eval_problems}",
            f"evaluation.shard_size={args.eval_shard}",
        ],
    )


def measure(workers: int, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    cfg = config(tmp, args)
    (tmp / "bench.yaml").write_text(cfg.to_yaml())
    home = tmp / "prefect"
    home.mkdir()
    with prefect_server(home, postgres_url()) as server:
        env = {
            **os.environ,
            "PREFECT_API_URL": server.api,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_HOME": str(home),
            "HEAL_CACHE_DIR": str(tmp / "cache"),
        }
        subprocess.run([HEAL, "deploy", str(tmp / "bench.yaml")], env=env, check=True, capture_output=True)
        logs = [open(tmp / f"worker-{i}.log", "wb") for i in range(workers + 1)]  # noqa: SIM115 -- closed below
        procs = [subprocess.Popen([HEAL, "worker", "--pool", "cpu"], env=env, stdout=logs[0], stderr=logs[0])]
        threads = max(1, (os.cpu_count() or 1) // workers) if args.threads == "auto" else int(args.threads)
        gpu_env = {**env, "OMP_NUM_THREADS": str(threads)} if threads else env
        procs += [
            subprocess.Popen(
                [HEAL, "worker", "--pool", "gpu", "--limit", "1", "--name", f"gpu-{i}"],
                env=gpu_env,
                stdout=logs[i + 1],
                stderr=logs[i + 1],
            )
            for i in range(workers)
        ]
        try:
            with httpx.Client(base_url=server.api, timeout=30) as client:
                dep = client.get("/deployments/name/heal-pipeline/heal-pipeline").raise_for_status().json()["id"]
                body = {"parameters": {"config": cfg.model_dump(mode="json"), "run_id": "bench"}}
                parent = client.post(f"/deployments/{dep}/create_flow_run", json=body).raise_for_status().json()["id"]
                deadline = time.monotonic() + args.timeout
                while (run := client.get(f"/flow_runs/{parent}").raise_for_status().json())["state"][
                    "type"
                ] not in FINAL:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the run did not finish in {args.timeout} s: see {tmp}")
                    time.sleep(2)
                children = (
                    client.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["heal-run:bench"]}}})
                    .raise_for_status()
                    .json()
                )
        finally:
            for proc in procs:
                stop(proc)
            for log in logs:
                log.close()
    if run["state"]["type"] != "COMPLETED":
        raise SystemExit(f"the run ended {run['state']['type']}: {run['state']['message']} (logs in {tmp})")
    train = [r for r in children if r["name"].startswith("bench-train-")]
    evals = [r for r in children if r["name"].startswith("bench-eval-")]
    start = min(_time(r["start_time"]) for r in train)
    return {
        "train_runs": len(train),
        "eval_runs": len(evals),
        "parent_s": _time(run["end_time"]) - _time(run["start_time"]),
        "train_s": max(_time(r["end_time"]) for r in train) - start,
        "train_eval_s": max(_time(r["end_time"]) for r in evals) - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="GPU-pool worker counts, comma-separated")
    parser.add_argument("--problems", type=int, default=16, help="demo problems generated (one shard)")
    parser.add_argument("--variants", default="heal,rs_sft")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--eval-problems", type=int, default=20, help="evaluation.max_problems")
    parser.add_argument("--eval-shard", type=int, default=10, help="evaluation.shard_size")
    parser.add_argument("--threads", default="auto", help="OMP_NUM_THREADS of each GPU-pool worker: auto, N, or 0")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    results = {}
    for workers in counts:
        with tempfile.TemporaryDirectory() as tmp:
            results[workers] = measure(workers, Path(tmp), args)
        print(f"{workers} worker(s): {json.dumps(results[workers])}", flush=True)
    print(
        f"{args.problems} demo problems, variants {args.variants} x seeds {args.seeds}, {args.eval_problems} held-out "
        f"problems in shards of {args.eval_shard}; server: {'PostgreSQL' if postgres_url() else 'SQLite'}; "
        f"threads per worker: {args.threads}"
    )
    print("| GPU-pool workers | heal-train runs | heal-eval runs | training s | training + evaluation s | parent s |")
    print("|---|---|---|---|---|---|")
    for workers, r in results.items():
        print(
            f"| {workers} | {r['train_runs']} | {r['eval_runs']} | {r['train_s']:.1f} | {r['train_eval_s']:.1f} | "
            f"{r['parent_s']:.1f} |"
        )
    if len(counts) == 2:
        low, high = (results[n]["train_eval_s"] for n in counts)
        print(f"training + evaluation wall time, {counts[1]} workers / {counts[0]}: {high / low:.2f}")


if __name__ == "__main__":
    main()
