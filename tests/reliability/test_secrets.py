"""Secrets given through a Prefect Secret block and env references never land in any output of a run.

A whole run (real Prefect server, real S3 endpoint, the bundled demo models) reads its S3 credentials from
``${NAME}`` references in ``storage.storage_options``, filled from a Prefect Secret block on start; then every
object the run wrote (S3 bucket, local model cache), every Prefect log line, artifact and flow run parameter,
and everything printed, is searched for the secret values.
"""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from heal_core.config import ConfigError, parse_config
from heal_core.demo import demo_defaults, demo_problems

pytestmark = pytest.mark.slow  # see pyproject.toml: the fast lane leaves it out


def test_a_literal_credential_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as err:
        parse_config({}, ["storage.storage_options={key: AKIAEXAMPLE, client_kwargs: {aws_secret_access_key: sEcReT}}"])
    message = str(err.value)
    assert "storage.storage_options.key" in message and "client_kwargs.aws_secret_access_key" in message
    assert "AKIAEXAMPLE" not in message and "sEcReT" not in message
    cfg = parse_config(
        {}, ["storage.storage_options={key: '${MY_KEY}', secret: '${MY_SECRET}', endpoint_url: http://x}"]
    )
    assert cfg.storage.storage_options["secret"] == "${MY_SECRET}"


def _everything_prefect_holds() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        logs, offset = [], 0
        while batch := client.read_logs(offset=offset, limit=200):
            logs += [log.message for log in batch]
            offset += len(batch)
        artifacts = [f"{a.key} {a.description} {a.data}" for a in client.read_artifacts()]
        runs = [json.dumps(run.parameters, default=str) for run in client.read_flow_runs()]
    assert logs and artifacts and runs  # the run did log, publish and record: the search below is not vacuous
    return "\n".join(logs + artifacts + runs)


def test_secrets_never_reach_logs_artifacts_parameters_or_storage(
    prefect_api, s3_endpoint, tmp_path, monkeypatch, capfd
):
    from prefect.blocks.system import Secret

    from flows.pipeline import heal_pipeline

    key, secret = f"KEY{uuid.uuid4().hex}", f"SECRET{uuid.uuid4().hex}"
    for name in ("HEAL_TEST_S3_KEY", "HEAL_TEST_S3_SECRET"):
        monkeypatch.delenv(name, raising=False)  # restored to unset after the test, whatever the run sets
    Secret(value={"HEAL_TEST_S3_KEY": key, "HEAL_TEST_S3_SECRET": secret}).save("heal-test-secrets", overwrite=True)
    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
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
        [  # the bundled demo teacher solves some: students are trained and stored
            f"problems.uri={problems}",
            f"storage.uri=s3://{bucket}/heal",
            f"storage.storage_options={{endpoint_url: '{s3_endpoint}', key: '${{HEAL_TEST_S3_KEY}}', "
            "secret: '${HEAL_TEST_S3_SECRET}'}",
            "orchestration.secrets_block=heal-test-secrets",
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

    heal_pipeline(cfg.model_dump(mode="json"), "secrets")

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "heal/runs/secrets/report.md" in keys and any(k.endswith(".safetensors") for k in keys)
    stored = {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    stored |= {str(p): p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert b"${HEAL_TEST_S3_SECRET}" in stored["heal/runs/secrets/config.yaml"]  # the reference is what is kept
    out, err = capfd.readouterr()
    held = _everything_prefect_holds()
    for value in (key, secret):
        leaks = [name for name, data in stored.items() if value.encode() in data]
        assert not leaks, f"secret found in stored objects: {leaks}"
        assert value not in held, "secret found in Prefect logs, artifacts or flow run parameters"
        assert value not in out + err, "secret printed"
