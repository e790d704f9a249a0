"""A ~30 s S3 outage while a shard runs is outlasted by the shard's own retries with backoff; the run's
datasets equal a clean run's.

S3 is moto's real server behind a TCP proxy: ``down()`` refuses and cuts every connection, as an outage looks
to a client, while the bucket keeps its contents. The cut starts when the first shard's task is running (seen
through the Prefect API), so the failures land inside the retried task and not in the parent's own I/O.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import pyarrow.parquet as pq
import pytest
import s3fs
from servers import TcpProxy

from heal_core.config import parse_config
from heal_core.demo import demo_defaults, demo_problems

OUTAGE_S = 30
DATASETS = ("stage1", "stage2", "stage3", "rs_sft", "keep_all")


def _datasets(fs: s3fs.S3FileSystem, root: str) -> dict[str, list[str]]:
    out = {}
    for name in DATASETS:
        with fs.open(f"{root}/curriculum/{name}.parquet", "rb") as f:
            out[name] = sorted(pq.read_table(f).column("sample_id").to_pylist())
    return out


def _shard_tasks() -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="run_shard")))


def _cut_when_a_shard_runs(proxy: TcpProxy, known: set, log: list[float]) -> None:
    deadline = time.monotonic() + 300
    while not any(t.id not in known and t.state_type == "RUNNING" for t in _shard_tasks()):
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)
    proxy.down()
    log.append(time.monotonic())
    time.sleep(OUTAGE_S)
    proxy.up()
    log.append(time.monotonic())


@pytest.mark.slow
def test_a_30_second_s3_outage_is_outlasted_by_shard_retries(prefect_api, s3_endpoint, tmp_path, monkeypatch):
    from flows.pipeline import heal_pipeline

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    proxy.up()
    bucket = f"heal-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}) + "\n"
            for p in demo_problems("generation")[:4]
        )
    )
    cfg = parse_config(
        demo_defaults(),
        [
            f"problems.uri={problems}",
            f"storage.uri=s3://{bucket}/heal",
            f"storage.storage_options={{endpoint_url: '{proxy.url}'}}",
            "orchestration.shard_size=2",
            "teacher.sampling.n=4",
            "hints.n=2",
            "pace.epochs=1",
            "pace.batch_size=4",
            "pace.seeds=[0]",
            "pace.variants=[heal,rs_sft]",
            "evaluation.samples=1",
            "evaluation.max_problems=2",
        ],
    )
    assert (cfg.orchestration.shard_retries, cfg.orchestration.retry_backoff_seconds) == (3, 5.0)  # 5+10+20 s > 30 s
    try:
        heal_pipeline(cfg.model_dump(mode="json"), "clean")
        known = {t.id for t in _shard_tasks()}
        cut: list[float] = []
        outage = threading.Thread(target=_cut_when_a_shard_runs, args=(proxy, known, cut), daemon=True)
        outage.start()
        # under another root: with the clean run's generation store the shards would only read it, over before the
        # poll above sees one running (seen in CI); here they sample again, and must write what the clean run wrote
        again = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"uri": f"s3://{bucket}/again"})})
        heal_pipeline(again.model_dump(mode="json"), "outage")
        outage.join()
    finally:
        proxy.down()

    assert len(cut) == 2 and cut[1] - cut[0] >= OUTAGE_S, "the outage did not happen while a shard ran"
    retried = [t for t in _shard_tasks() if t.id not in known and t.run_count > 1]
    assert retried, "no shard task was retried: the outage missed the shards"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    clean, redone = _datasets(fs, f"{bucket}/heal/runs/clean"), _datasets(fs, f"{bucket}/again/runs/outage")
    assert redone == clean and all(len(set(ids)) == len(ids) for ids in redone.values())
    manifest = json.loads(fs.cat(f"{bucket}/again/runs/outage/manifest.json"))
    assert set(manifest["shards"].values()) == {"done"} and manifest["steps"]["report"] == "done"
