"""The shipped infrastructure, read as Docker would read it (there is no Docker daemon here): the compose file
refuses to start on the example's values, publishes nothing beyond 127.0.0.1, gives each service only its own
secrets; the images run unprivileged and no secret can enter their build context; the Kubernetes template closes
its job variables and runs pods unprivileged."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
INFRA = ROOT / "infra"
SECRETS = (
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "HEAL_S3_SECRET_KEY",
    "PREFECT_AUTH_PASSWORD",
    "HEAL_TEACHER_API_KEY",
)


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_refuses_to_start_until_every_secret_is_set():
    """Every use of a secret is ``${NAME:?...}``, which compose refuses to interpolate from an empty value, and
    the example leaves each one empty: `docker compose config` on the example fails naming it."""
    text = (INFRA / "docker-compose.yml").read_text()
    example = _example()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"(:\?[^}]*|:-[^}]*|)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (name, uses)
        assert example[name] == "", f"{name} has a value in .env.example"


def test_compose_publishes_only_on_loopback_and_the_api_asks_for_a_password():
    services = _compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"prefect-server", "minio"}
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports), published
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("heal:${PREFECT_AUTH_PASSWORD:?")
    assert server["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"


def test_each_service_gets_only_the_secrets_it_uses():
    services = _compose()["services"]
    assert not [name for name, s in services.items() if "env_file" in s]  # no .env wholesale into any service
    for name in ("deploy", "cpu-worker", "gpu-worker"):
        text = json.dumps(services[name].get("environment", {}))
        assert "MINIO_ROOT" not in text and "POSTGRES_PASSWORD" not in text, name
        assert "${HEAL_S3_SECRET_KEY" in text and "PREFECT_API_AUTH_STRING" in text, name
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(services["teacher-server"]["environment"])
    assert "teacher.server.api_key_env=HEAL_TEACHER_API_KEY" in services["teacher-server"]["command"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for the patterns used here: a path is left out when it, or a folder above it,
    matches a pattern (``**/`` matching any depth)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or (
                pattern.startswith("**/")
                and (fnmatch.fnmatch(candidate.rsplit("/", 1)[-1], bare) or fnmatch.fnmatch(candidate, bare))
            ):
                return True
    return False


def test_no_secret_can_enter_an_image():
    patterns = [
        line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for secret in ("infra/.env", ".env", "configs/.env", ".venv/bin/python", "heal-data/runs/x/config.yaml"):
        assert _ignored(secret, patterns), secret
    assert not _ignored("heal_core/config.py", patterns) and not _ignored("infra/cluster.yaml", patterns)
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        lines = (INFRA / dockerfile).read_text().splitlines()
        copies = [line.split()[1] for line in lines if line.startswith("COPY ")]
        assert "infra" not in copies and all(not c.endswith(".env") for c in copies), (dockerfile, copies)
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] == "heal", dockerfile  # the last USER: what the container runs as


def test_the_kubernetes_pool_closes_its_job_variables_and_runs_pods_unprivileged():
    template = json.loads((INFRA / "k8s" / "gpu-work-pool.json").read_text())
    variables = template["variables"]
    assert variables["additionalProperties"] is False
    assert not {"command", "env", "image", "namespace", "service_account_name"} & set(variables["properties"])
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "heal-worker"
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    account = yaml.safe_load((INFRA / "k8s" / "service-account.yaml").read_text())
    assert account["metadata"]["name"] == "heal-worker" and account["automountServiceAccountToken"] is False


def test_the_multinode_training_example_shares_the_cache_and_ranks_its_nodes():
    """Node 0 is a worker owning its GPUs, the others follow the stages it launches from the shared cache, as
    `heal train-stage --follow` reads it; the pods run unprivileged like the pool's."""
    service, claim, nodes = yaml.safe_load_all((INFRA / "k8s" / "train-multinode.yaml").read_text())
    assert service["spec"]["clusterIP"] == "None" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = nodes["spec"]["template"]["spec"]
    assert nodes["spec"]["serviceName"] == service["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    script = container["args"][0]
    assert "heal worker --pool gpu --gpus 0-7" in script
    assert 'heal train-stage --follow "$HEAL_CACHE_DIR/models" --machine-rank "$rank"' in script
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["HEAL_CACHE_DIR"] == mounts["cache"]
    volume = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
