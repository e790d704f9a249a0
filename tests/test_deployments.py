"""Production shape on real parts: `prefect server start` (SQLite, and PostgreSQL where one answers), moto's S3
server behind a TCP proxy (so S3 can go down and come back with its data), `heal deploy`, `heal worker`
process workers, runs triggered and retried through the REST API exactly as the UI does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import s3fs
import yaml
from servers import PrefectServer, TcpProxy, postgres_url, prefect_server, stop

from heal_core.config import HealConfig, parse_config
from heal_core.demo import demo_defaults, demo_problems
from heal_core.run import Run
from heal_core.schema import CURRICULUM_SCHEMA, TRAJECTORY_SCHEMA
from tasks.generate import write_shards
from tasks.training import local_model_dir

pytestmark = pytest.mark.slow  # see pyproject.toml: the fast lane leaves it out

BUCKET = "heal-deploy"
HEAL = str(Path(sys.executable).parent / "heal")  # the console script, as a user runs it
DATASETS = ("stage1", "stage2", "stage3", "rs_sft", "keep_all")
SHARDS = 2  # _reduced: four problems, two per shard


@dataclass
class Cluster:
    server: PrefectServer
    env: dict[str, str]
    proxy: TcpProxy
    cfg: HealConfig
    logs: Path
    workers: dict[str, subprocess.Popen]

    @property
    def api(self) -> str:
        return self.server.api

    def start_worker(self, pool: str, *extra: str, own_session: bool = False, name: str = "") -> None:
        """``own_session``: the worker leads a process group of its own with Ctrl-C's default disposition, as a
        command started in a terminal does, whatever the test runner's is (a runner started in the background of
        a shell without job control ignores SIGINT, and its children would inherit that). ``name`` (default: the
        pool's) names the worker in ``workers`` and its log, for a second worker on one pool."""
        name = name or pool
        with open(self.logs / f"worker-{name}.log", "ab") as out:
            self.workers[name] = subprocess.Popen(
                [HEAL, "worker", "--pool", pool, *extra],
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=own_session,
                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if own_session else None,
            )

    def stop_worker(self, name: str) -> None:
        stop(self.workers.pop(name))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30)


@dataclass(frozen=True)
class CleanRun:
    parent: str  # flow run id of its heal-pipeline run
    datasets: dict[str, list[str]]  # curriculum dataset -> sorted sample ids


def _reduced(tmp: Path) -> HealConfig:
    problems, held_out = tmp / "problems.jsonl", tmp / "eval.jsonl"
    for path, items in ((problems, demo_problems("generation")[:4]), (held_out, demo_problems("eval")[:2])):
        path.write_text(
            "".join(json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}) + "\n" for p in items)
        )
    return parse_config(
        demo_defaults(),
        [
            f"problems.uri={problems}",
            f"evaluation.uri={held_out}",
            "evaluation.samples=1",
            f"storage.uri=s3://{BUCKET}/heal",
            "orchestration.shard_size=2",
            "orchestration.poll_seconds=1",
            "pace.epochs=1",
            "pace.batch_size=4",
            "pace.seeds=[0]",
            "pace.variants=[heal,rs_sft]",
            "teacher.sampling.n=4",
            "hints.n=4",
            "orchestration.shard_retries=0",  # the S3 cut must fail the shard runs: they are retried as the UI does
            "orchestration.heartbeat_timeout_seconds=60",  # a killed worker's runs turn CRASHED a minute after
        ],
    )


def _start_workers(cluster: Cluster) -> None:
    cluster.start_worker("cpu")
    cluster.start_worker("gpu", "--limit", "2")


def _cluster(tmp: Path, s3_endpoint: str, database_url: str | None, cfg: HealConfig, workers: bool):
    home = tmp / "prefect"
    home.mkdir()
    with prefect_server(home, database_url) as server:
        api = server.api
        proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
        proxy.up()
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "AWS_ENDPOINT_URL": proxy.url,
            "HEAL_CACHE_DIR": str(tmp / "cache"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_HOME": str(home),
        }
        (tmp / "config.yaml").write_text(cfg.to_yaml())
        deployed = subprocess.run([HEAL, "deploy", str(tmp / "config.yaml")], env=env, capture_output=True, text=True)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        cluster = Cluster(server, env, proxy, cfg, tmp, {})
        if workers:
            _start_workers(cluster)
        try:
            yield cluster
        finally:
            for pool in list(cluster.workers):
                cluster.stop_worker(pool)
            proxy.down()


@pytest.fixture(scope="module")
def reduced(tmp_path_factory, s3_endpoint) -> HealConfig:
    """One config for every cluster of this module, so their runs' datasets are comparable."""
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(BUCKET)
    return _reduced(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_endpoint, reduced):
    """SQLite-backed server (Prefect's default): deployment, parameter validation, the schedule. Runs with
    concurrent workers go to ``clean_cluster``: under load SQLite refuses worker and run writes with "database
    is locked" (seen in CI, and measured in BENCHMARKS.md), so PostgreSQL is the supported server for them."""
    yield from _cluster(tmp_path_factory.mktemp("cluster"), s3_endpoint, None, reduced, workers=False)


@pytest.fixture(scope="module")
def clean_cluster(tmp_path_factory, s3_endpoint, reduced, request):
    """The runs' server: PostgreSQL where one answers on 127.0.0.1:5432 (the production setting for concurrent
    workers), else the SQLite cluster, with the reason printed."""
    url = postgres_url()
    if url is None:
        print("no PostgreSQL server answers on 127.0.0.1:5432: the runs use the SQLite-backed server")
        cluster = request.getfixturevalue("cluster")
        _start_workers(cluster)
        yield cluster
        return
    yield from _cluster(tmp_path_factory.mktemp("pg-cluster"), s3_endpoint, url, reduced, workers=True)


@pytest.fixture(scope="module")
def clean_run(clean_cluster) -> CleanRun:
    """The reference run ``clean`` that every fault test compares its datasets with: triggered once per module by
    whichever test needs it first, so each test also passes when it runs alone (``-k``)."""
    parent = _trigger(clean_cluster, "clean")
    run = _wait(clean_cluster, parent, _final)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    return CleanRun(parent, _datasets(clean_cluster.cfg, "clean"))


def _deployment_id(client: httpx.Client, name: str) -> str:
    return client.get(f"/deployments/name/{name}").raise_for_status().json()["id"]


def _trigger(cluster: Cluster, run_id: str, cfg: HealConfig | None = None) -> str:
    """What a user's script does: POST create_flow_run with parameters, as in the README."""
    with cluster.client() as client:
        dep = _deployment_id(client, "heal-pipeline/heal-pipeline")
        body = {"parameters": {"config": (cfg or cluster.cfg).model_dump(mode="json"), "run_id": run_id}}
        return client.post(f"/deployments/{dep}/create_flow_run", json=body).raise_for_status().json()["id"]


def _wait(cluster: Cluster, flow_run: str, done, seconds: float = 600) -> dict:
    deadline = time.monotonic() + seconds
    with cluster.client() as client:
        while True:
            run = client.get(f"/flow_runs/{flow_run}").raise_for_status().json()
            if done(run["state"]):
                return run
            if time.monotonic() > deadline:
                logs = "".join(p.read_text()[-3000:] for p in cluster.logs.glob("worker-*.log"))
                raise AssertionError(f"flow run {run['name']} still {run['state']['type']} after {seconds} s\n{logs}")
            time.sleep(1)


def _children(cluster: Cluster, run_id: str, prefix: str = "") -> list[dict]:
    with cluster.client() as client:
        body = {"flow_runs": {"tags": {"all_": [f"heal-run:{run_id}"]}}}
        runs = client.post("/flow_runs/filter", json=body).raise_for_status().json()
    return sorted((r for r in runs if r["name"].startswith(f"{run_id}-{prefix}")), key=lambda r: r["name"])


def _trigger_and_wait_for_shards(cluster: Cluster, run_id: str, all_started: bool = False) -> str:
    """Trigger a run and wait until one of its shards is RUNNING; with ``all_started``, also until every
    shard has left SCHEDULED, so a worker killed then holds each shard that is not yet done (a shard still
    SCHEDULED would wait for a worker forever, and the parent with it)."""
    parent = _trigger(cluster, run_id)
    deadline = time.monotonic() + 300
    while True:
        states = [s["state"]["type"] for s in _children(cluster, run_id, "shard")]
        started = len(states) == SHARDS and "SCHEDULED" not in states
        if "RUNNING" in states and (started or not all_started):
            return parent
        assert time.monotonic() < deadline, f"shards not started: {states}"
        time.sleep(0.5)


def _retry_as_the_ui_does(cluster: Cluster, flow_run: str) -> None:
    """The exact request the UI's Retry button sends: ``POST /api/flow_runs/<id>/set_state`` with an
    AwaitingRetry SCHEDULED state, "Retry from the UI" (the V1 UI sends ``force: false``, the stricter of the two;
    ``test_the_ui_retry_button_reruns_a_failed_shard`` clicks the button itself)."""
    state = {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}
    with cluster.client() as client:
        answer = client.post(f"/flow_runs/{flow_run}/set_state", json={"state": state, "force": False})
    assert answer.raise_for_status().json()["status"] == "ACCEPT", answer.text


def _assert_ran_once_more(cluster: Cluster, runs: list[dict]) -> None:
    """Each retried run completes as the same flow run, having entered Running exactly once more than when it
    ended. Not a fixed count: a run that died while still PENDING never entered Running (run_count 0), one that
    died RUNNING did (1), and which of the two happens depends on timing."""
    for run in runs:
        again = _wait(cluster, run["id"], _completed)
        assert again["id"] == run["id"] and again["run_count"] == run["run_count"] + 1, (
            run["name"],
            run["run_count"],
            again["run_count"],
        )


def _datasets(cfg: HealConfig, run_id: str) -> dict[str, list[str]]:
    fs = s3fs.S3FileSystem()
    out = {}
    for name in DATASETS:
        with fs.open(f"{cfg.storage.uri}/runs/{run_id}/curriculum/{name}.parquet", "rb") as f:
            table = pq.read_table(f)
        assert table.schema.equals(CURRICULUM_SCHEMA, check_metadata=False)
        out[name] = sorted(table.column("sample_id").to_pylist())
    return out


CHROMIUM = Path("/usr/bin/chromium")


def _need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): `apt-get install chromium`")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def _click_retry(cluster: Cluster, flow_run: str) -> None:
    """Retry ``flow_run`` with the Retry button of the real Prefect UI in headless Debian Chromium (no browser
    download, no outside network), and check that the click sent the run's set_state request."""
    from playwright.sync_api import sync_playwright

    base = cluster.api.removesuffix("/api")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        page = browser.new_page()
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base) else route.abort())
        sent = []
        page.on("request", lambda r: sent.append(r.url) if "set_state" in r.url else None)
        page.goto(f"{base}/runs/flow-run/{flow_run}", wait_until="networkidle")
        page.get_by_role("button", name="Retry").first.click()
        page.wait_for_timeout(800)
        page.get_by_role("button", name="Retry").last.click()  # the confirmation dialog
        page.wait_for_timeout(1500)
        browser.close()
    assert any(f"/flow_runs/{flow_run}/set_state" in url for url in sent), sent


def _completed(state: dict) -> bool:
    return state["type"] == "COMPLETED"


def _final(state: dict) -> bool:
    return state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def test_parameters_are_validated_when_the_run_is_created(cluster):
    with cluster.client() as client:
        dep = _deployment_id(client, "heal-pipeline/heal-pipeline")
        bad_key = client.post(
            f"/deployments/{dep}/create_flow_run", json={"parameters": {"config": {"teacher": {"bogus": 1}}}}
        )
        bad_type = client.post(
            f"/deployments/{dep}/create_flow_run",
            json={"parameters": {"config": {"teacher": {"sampling": {"n": "many"}}}}},
        )
        nightly = client.get("/deployments/name/heal-pipeline/heal-pipeline-nightly").raise_for_status().json()
    assert bad_key.status_code == 409 and "bogus" in bad_key.text
    assert bad_type.status_code == 409 and "config.teacher.sampling.n" in bad_type.text
    config = cluster.cfg.model_dump(mode="json")
    complete = {  # every parameter the flow takes, so only the unknown one can be what is refused
        "heal-pipeline/heal-pipeline": {"config": config},
        "heal-pipeline/heal-pipeline-nightly": {"config": config},
        "heal-shard/heal-shard": {"run_root": "runs/x", "shard": 0, "config": config},
        "heal-train/heal-train": {"run_root": "runs/x", "config": config},
        "heal-eval/heal-eval": {"run_root": "runs/x", "config": config, "trained": []},
        "heal-derive/heal-derive": {
            "run_id": "x",
            "storage_uri": "s3://b/p",
            "kind": "train",
            "overrides": [],
            "variants": [],
        },
    }
    with cluster.client() as client:
        unknown = {
            name: client.post(
                f"/deployments/{_deployment_id(client, name)}/create_flow_run",
                json={"parameters": {**parameters, "bogus_parameter": 1}},
            )
            for name, parameters in complete.items()
        }
    for name, response in unknown.items():
        assert response.status_code == 409 and "bogus_parameter" in response.text, (name, response.text)
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert all(s["active"] for s in nightly["schedules"])
    assert nightly["parameters"]["config"]["storage"]["uri"] == cluster.cfg.storage.uri


def test_triggered_run_fans_out_shard_deployment_runs(clean_cluster, clean_run):
    cluster = clean_cluster
    parent = clean_run.parent
    shards = _children(cluster, "clean", "shard")
    assert [s["name"] for s in shards] == ["clean-shard-00000", "clean-shard-00001"]
    assert all(s["deployment_id"] and s["state"]["type"] == "COMPLETED" for s in shards)
    assert {s["work_pool_name"] for s in shards} == {cluster.cfg.orchestration.gpu_pool}
    assert [r["name"] for r in _children(cluster, "clean", "t")] == [
        "clean-train-heal-seed-0",
        "clean-train-rs_sft-seed-0",
    ]
    assert [r["name"] for r in _children(cluster, "clean", "e")] == [  # one per (model, set shard): a set is one here
        f"clean-eval-{unit}-held_out-0-2" for unit in ("heal-seed-0", "rs_sft-seed-0", "student_base", "teacher")
    ]

    fs = s3fs.S3FileSystem()
    root = f"{cluster.cfg.storage.uri}/runs/clean"
    for shard in (0, 1):
        with fs.open(f"{root}/samples/shard-{shard:05d}.parquet", "rb") as f:
            assert pq.read_table(f).schema.equals(TRAJECTORY_SCHEMA, check_metadata=False)
    assert clean_run.datasets["stage1"] and all(len(ids) == len(set(ids)) for ids in clean_run.datasets.values())
    manifest = json.loads(fs.cat(f"{root}/manifest.json"))
    assert manifest["shards"] == {"0": "done", "1": "done"} and manifest["steps"]["report"] == "done"
    with cluster.client() as client:
        body = {"artifacts": {"flow_run_id": {"any_": [parent]}}}
        keys = {a["key"] for a in client.post("/artifacts/filter", json=body).raise_for_status().json()}
    assert {"heal-shard-progress", "heal-run-summary", "heal-run-report"} <= keys


def test_failed_shards_retried_from_the_ui_and_resumed_parent_equal_a_clean_run(clean_cluster, clean_run):
    cluster = clean_cluster  # concurrent workers need PostgreSQL: SQLite refuses them ("database is locked")
    cluster.stop_worker("gpu")  # shards wait, scheduled, while S3 goes down
    parent = _trigger(cluster, "faulty")
    deadline = time.monotonic() + 300
    while len(_children(cluster, "faulty", "shard")) < 2:
        assert time.monotonic() < deadline, "the parent did not launch its shard runs"
        time.sleep(1)
    cluster.proxy.down()
    cluster.start_worker("gpu", "--limit", "2")
    shards = [_wait(cluster, s["id"], _final) for s in _children(cluster, "faulty", "shard")]
    assert [s["state"]["type"] for s in shards] == ["FAILED", "FAILED"]
    assert _wait(cluster, parent, _final)["state"]["type"] == "FAILED"

    cluster.proxy.up()
    for shard in shards:
        _retry_as_the_ui_does(cluster, shard["id"])
    _assert_ran_once_more(cluster, shards)
    _retry_as_the_ui_does(cluster, parent)
    assert _wait(cluster, parent, _final)["state"]["type"] == "COMPLETED"

    assert len(_children(cluster, "faulty", "shard")) == SHARDS  # re-attached, not launched again
    before = {s["id"]: s["run_count"] for s in shards}
    assert all(s["run_count"] == before[s["id"]] + 1 for s in _children(cluster, "faulty", "shard"))
    assert _datasets(cluster.cfg, "faulty") == clean_run.datasets


@pytest.mark.timeout(1200)
def test_a_killed_worker_s_shards_turn_crashed_and_their_retry_equals_a_clean_run(clean_cluster, clean_run):
    """SIGKILL the GPU worker and every process under it (a lost node) while its shards run: the heartbeat
    automation that ``heal deploy`` created marks them CRASHED; no partial object is visible meanwhile; after a
    new worker starts, the shards and the parent are retried as the UI does and the datasets equal a clean run's."""
    import psutil

    cluster = clean_cluster
    parent = _trigger_and_wait_for_shards(cluster, "killed", all_started=True)
    worker = psutil.Process(cluster.workers.pop("gpu").pid)
    for proc in [worker, *worker.children(recursive=True)]:
        proc.kill()

    fs = s3fs.S3FileSystem()
    root = f"{cluster.cfg.storage.uri}/runs/killed"
    for path in fs.find(root):  # every object readers can see is whole: no temp names, every Parquet decodes
        assert "tmp" not in path.rsplit("/", 1)[1]
        if path.endswith(".parquet"):
            with fs.open(path, "rb") as f:
                pq.read_table(f)
    timeout = cluster.cfg.orchestration.heartbeat_timeout_seconds
    crashed = [
        _wait(cluster, s["id"], _final, seconds=timeout + 180)
        for s in _children(cluster, "killed", "shard")
        if s["state"]["type"] in ("RUNNING", "PENDING")
    ]
    assert crashed and all(r["state"]["type"] == "CRASHED" for r in crashed), [r["state"] for r in crashed]
    assert all(r["run_count"] in (0, 1) for r in crashed), [(r["name"], r["run_count"]) for r in crashed]
    assert _wait(cluster, parent, _final)["state"]["type"] == "FAILED"

    cluster.start_worker("gpu", "--limit", "2")
    for run in crashed:
        _retry_as_the_ui_does(cluster, run["id"])
    _assert_ran_once_more(cluster, crashed)
    assert len(_children(cluster, "killed", "shard")) == SHARDS  # retried in place, none launched again
    _retry_as_the_ui_does(cluster, parent)
    assert _wait(cluster, parent, _final)["state"]["type"] == "COMPLETED"
    assert _datasets(cluster.cfg, "killed") == clean_run.datasets


@pytest.mark.timeout(1200)
def test_ctrl_c_on_a_worker_ends_its_runs_and_their_retry_equals_a_clean_run(clean_cluster, clean_run):
    """Ctrl-C on ``heal worker`` as a terminal delivers it (SIGINT to the worker's whole process group) while its
    shards run: the worker exits, its shard runs end CRASHED or CANCELLED, never RUNNING forever; after a new worker
    starts, the shards and the parent are retried as the UI does and the datasets equal a clean run's."""
    cluster = clean_cluster
    cluster.stop_worker("gpu")
    cluster.start_worker("gpu", "--limit", "2", own_session=True)
    parent = _trigger_and_wait_for_shards(cluster, "interrupted", all_started=True)
    worker = cluster.workers.pop("gpu")
    os.killpg(worker.pid, signal.SIGINT)
    worker.wait(timeout=120)

    timeout = cluster.cfg.orchestration.heartbeat_timeout_seconds
    ended = [
        _wait(cluster, s["id"], _final, seconds=timeout + 180)
        for s in _children(cluster, "interrupted", "shard")
        if s["state"]["type"] in ("RUNNING", "PENDING")
    ]
    assert ended and all(r["state"]["type"] in ("CRASHED", "CANCELLED") for r in ended), [r["state"] for r in ended]
    assert _wait(cluster, parent, _final)["state"]["type"] in ("FAILED", "CRASHED", "CANCELLED")

    cluster.start_worker("gpu", "--limit", "2")
    for run in ended:
        _retry_as_the_ui_does(cluster, run["id"])
    _assert_ran_once_more(cluster, ended)
    _retry_as_the_ui_does(cluster, parent)
    assert _wait(cluster, parent, _final)["state"]["type"] == "COMPLETED"
    assert _datasets(cluster.cfg, "interrupted") == clean_run.datasets


@pytest.mark.timeout(1200)
def test_a_prefect_server_restart_mid_run_ends_in_the_same_datasets(clean_cluster, clean_run):
    """The API server stops for 10 s while shards run and comes back on its database: the workers reconnect
    (they serve the runs created after it), and the run completes, or `heal resume` completes it, with the
    datasets of a clean run."""
    cluster = clean_cluster
    parent = _trigger_and_wait_for_shards(cluster, "restart")
    cluster.server.restart(down_seconds=10)

    if _wait(cluster, parent, _final)["state"]["type"] != "COMPLETED":
        resumed = subprocess.run(
            [HEAL, "resume", "restart", "--storage", cluster.cfg.storage.uri, "--mode", "deployments"],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert all(w.poll() is None for w in cluster.workers.values()), "a worker died with the server"
    assert {r["state"]["type"] for r in _children(cluster, "restart", "e")} == {"COMPLETED"}  # created after
    assert _datasets(cluster.cfg, "restart") == clean_run.datasets


def test_clean_run_was_served_by_postgres(clean_cluster, cluster, clean_run):
    if clean_cluster is cluster:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432: the Postgres-backed server was not tested")
    with clean_cluster.client() as client:
        runs = client.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["heal-run:clean"]}}}).json()
    assert len(runs) == 8  # two shards, train heal and rs_sft, eval of 4 models: all recorded in the PostgreSQL server
    stored = yaml.safe_load(s3fs.S3FileSystem().cat(f"{clean_cluster.cfg.storage.uri}/runs/clean/config.yaml"))
    assert HealConfig.model_validate(stored).config_hash() == clean_cluster.cfg.config_hash()


def test_the_ui_retry_button_reruns_a_failed_shard(clean_cluster):
    """The real Prefect UI in headless Debian Chromium (no browser download, no outside network): a shard run
    that failed for a real reason (its input shard is missing) is retried with the Retry button once fixed."""
    _need_chromium()
    cluster = clean_cluster
    fs = s3fs.S3FileSystem()
    root = f"{cluster.cfg.storage.uri}/runs/ui"
    with cluster.client() as client:
        dep = _deployment_id(client, "heal-shard/heal-shard")
        body = {
            "parameters": {"run_root": root, "shard": 0, "config": cluster.cfg.model_dump(mode="json")},
            "name": "ui-shard",
        }
        shard = client.post(f"/deployments/{dep}/create_flow_run", json=body).raise_for_status().json()["id"]
    failed = _wait(cluster, shard, _final)
    assert failed["state"]["type"] == "FAILED"
    write_shards.fn(Run.at(root, cluster.cfg), demo_problems("generation")[:1], cluster.cfg)  # the cause, fixed

    _click_retry(cluster, shard)
    _assert_ran_once_more(cluster, [failed])
    assert fs.exists(f"{root}/samples/shard-00000.parquet") and fs.exists(f"{root}/samples/shard-00000.json")


def _final_weights(root: str, variant: str, seed: int) -> str:
    """A digest of the (variant, seed)'s final model weights, as stored."""
    fs = s3fs.S3FileSystem()
    model = json.loads(fs.cat(f"{root}/models/{variant}/seed-{seed}/variant.json"))["stages"][-1]["model_dir"]
    return hashlib.sha256(fs.cat(f"{model}/model.safetensors")).hexdigest()


def _results(root: str, seeds: set[int | None]) -> list[dict]:
    """The run's evaluation rows of the models with these training seeds, without where each model was loaded from."""
    with s3fs.S3FileSystem().open(f"{root}/eval/results.parquet", "rb") as f:
        rows = pq.read_table(f).drop_columns(["model_path"]).to_pylist()
    return [row for row in rows if row["train_seed"] in seeds]


@pytest.mark.timeout(1800)
def test_students_and_evaluations_fan_out_over_two_workers_and_a_failed_one_is_retried_alone_from_the_ui(
    clean_cluster, clean_run, monkeypatch
):
    """2 variants x 2 seeds are 4 heal-train runs, executed by two GPU workers at once; the (heal, 0) one fails for a
    real reason (its record in storage is corrupt) and, once fixed, is retried alone with the UI's Retry button.
    Then one heal-eval run per (model, set shard): the one whose student a worker's cache holds broken fails naming
    it while the other five complete, and is retried from the UI too. The parent, retried as the UI does, completes
    with the clean run's models and results (the clean run trains seed 0 only)."""
    _need_chromium()
    cluster = clean_cluster
    cfg = parse_config(cluster.cfg.model_dump(mode="json"), ["pace.seeds=[0,1]"])
    fs = s3fs.S3FileSystem()
    root, clean = f"{cfg.storage.uri}/runs/fanout", f"{cfg.storage.uri}/runs/clean"
    fs.pipe(f"{root}/models/heal/seed-0/variant.json", b'{"variant": "heal", "st')  # corrupt: that training fails
    cluster.stop_worker("gpu")
    workers = ("gpu-a", "gpu-b")
    for name in workers:
        cluster.start_worker("gpu", "--limit", "1", name=name)
    try:
        parent = _trigger(cluster, "fanout", cfg)
        assert _wait(cluster, parent, _final, seconds=900)["state"]["type"] == "FAILED"
        train = {r["name"]: r for r in _children(cluster, "fanout", "train")}
        assert sorted(train) == [f"fanout-train-{v}-seed-{s}" for v in ("heal", "rs_sft") for s in (0, 1)]
        failed = train["fanout-train-heal-seed-0"]
        assert failed["state"]["type"] == "FAILED" and "variant.json is not valid JSON" in failed["state"]["message"]
        assert [r["state"]["type"] for r in train.values() if r is not failed] == ["COMPLETED"] * 3
        assert not _children(cluster, "fanout", "eval")  # the parent stopped at the training
        spans = sorted((r["start_time"], r["end_time"]) for r in train.values() if r is not failed)
        assert any(later[0] < earlier[1] for earlier, later in pairwise(spans)), spans  # two trained at once
        for name in workers:  # and each worker ran some of them
            log = (cluster.logs / f"worker-{name}.log").read_text()
            assert any(r["id"] in log for r in train.values()), f"worker {name} ran no training"

        fs.rm(f"{root}/models/heal/seed-0/variant.json")  # the cause, fixed
        monkeypatch.setenv("HEAL_CACHE_DIR", cluster.env["HEAL_CACHE_DIR"])
        student = json.loads(fs.cat(f"{root}/models/rs_sft/seed-0/variant.json"))["stages"][-1]["model_dir"]
        cached = local_model_dir(student)  # where the workers keep the model they trained
        (cached / "model.safetensors").write_bytes(b"broken on the worker's disk")
        _click_retry(cluster, failed["id"])
        _assert_ran_once_more(cluster, [failed])
        _retry_as_the_ui_does(cluster, parent)
        assert _wait(cluster, parent, _final, seconds=900)["state"]["type"] == "FAILED"

        evals = {r["name"]: r for r in _children(cluster, "fanout", "eval")}
        models = ["teacher", "student_base", *(f"{v}-seed-{s}" for v in ("heal", "rs_sft") for s in (0, 1))]
        assert sorted(evals) == sorted(f"fanout-eval-{m}-held_out-0-2" for m in models)
        broken = evals["fanout-eval-rs_sft-seed-0-held_out-0-2"]
        assert broken["state"]["type"] == "FAILED" and "rs_sft seed 0" in broken["state"]["message"]
        assert "cannot be loaded" in broken["state"]["message"]
        assert [r["state"]["type"] for r in evals.values() if r is not broken] == ["COMPLETED"] * 5
        shutil.rmtree(cached)  # fixed: the retry fetches the stored model again
        _click_retry(cluster, broken["id"])
        _assert_ran_once_more(cluster, [broken])
        _retry_as_the_ui_does(cluster, parent)
        assert _wait(cluster, parent, _final, seconds=900)["state"]["type"] == "COMPLETED"
    finally:
        for name in workers:
            cluster.stop_worker(name)
        cluster.start_worker("gpu", "--limit", "2")

    assert len(_children(cluster, "fanout")) == 2 + 4 + 6  # re-attached, none launched again
    assert all(_final_weights(root, v, 0) == _final_weights(clean, v, 0) for v in ("heal", "rs_sft"))
    assert _results(root, {None, 0}) == _results(clean, {None, 0})
    assert len(_results(root, {1})) == 2 * 2  # heal and rs_sft seed 1, on both held-out problems
