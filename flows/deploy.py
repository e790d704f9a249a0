"""``heal deploy`` and ``heal worker``: register the deployments of ``deployments/prefect.yaml``, start workers.

``deployments/prefect.yaml`` stays the one description of the deployments (a user can also deploy it with
Prefect's own CLI); ``heal deploy`` only fills in what a run config decides: the work pool names and the
pipelines' default ``config`` parameter. Registration itself is ``prefect deploy``, run as a subprocess, the
public interface of Prefect's deployment machinery.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from heal_core.config import HealConfig
from heal_core.environment import ALLOWED, ENV_REFERENCE
from heal_core.run import STORAGE_OPTIONS, STORAGE_ROOT

PREFECT_FILE = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"
HEARTBEAT_SECONDS = 30  # the smallest flow run heartbeat frequency for which Prefect emits heartbeat events
ZOMBIE_AUTOMATION = "heal: crash flow runs whose heartbeat stopped"
PIPELINES = ("heal-pipeline", "heal-pipeline-nightly")
OPEN_VARIABLES = {"command", "env", "working_dir", "image", "namespace", "service_account_name"}
"""Job variables that, left to whoever creates a flow run, run something else, somewhere else or as someone else."""
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def render(spec: dict[str, Any], cfg: HealConfig) -> dict[str, Any]:
    """``spec`` with the config's pool names (``cpu``/``gpu`` in the file are roles) and, for the pipelines,
    the config as the default ``config`` parameter."""
    pools = {"cpu": cfg.orchestration.cpu_pool, "gpu": cfg.orchestration.gpu_pool}
    out = copy.deepcopy(spec)
    for deployment in out["deployments"]:
        pool = deployment["work_pool"]
        pool["name"] = pools.get(pool["name"], pool["name"])
        if deployment["name"] in PIPELINES:
            deployment.setdefault("parameters", {})["config"] = cfg.model_dump(mode="json")
    return out


def base_job_template(cfg: HealConfig, allow_env: list[str]) -> dict[str, Any]:
    """The job template of heal's process pools: Prefect's own, with the job variables a flow run may set cut down
    to ``name``, ``labels`` and ``stream_output``, and nothing else (``additionalProperties: false``).

    Why: Prefect lets whoever creates a flow run override its pool's job variables, and on a process pool
    ``command``, ``env`` and ``working_dir`` are a shell on the worker (``command: "sh -c ..."``). Prefect's server
    checks a flow run's job variables against this schema when the run is created (HTTP 422), as it checks
    parameters against theirs. What every flow run gets instead is fixed here: the storage the operator's config
    names (``HEAL_STORAGE_ROOT``, ``HEAL_STORAGE_OPTIONS``: ``heal_core/run.py::check_storage``) and the only
    environment variables a run's config may name (``HEAL_ALLOWED_ENV``: those the operator's config names and
    ``allow_env``, ``heal_core/environment.py``).
    """
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    for name in ("command", "env", "working_dir"):
        template["variables"]["properties"].pop(name)
        template["job_configuration"].pop(name)
    template["variables"]["additionalProperties"] = False
    named = sorted(
        {
            *ENV_REFERENCE.findall(json.dumps(cfg.storage.storage_options)),
            *filter(None, [cfg.teacher.server.api_key_env]),
            *allow_env,
        }
    )
    template["job_configuration"]["env"] = {
        STORAGE_ROOT: cfg.storage.uri,
        STORAGE_OPTIONS: json.dumps(cfg.storage.storage_options),
        ALLOWED: ",".join(named),
    }
    return template


def ensure_pools(spec: dict[str, Any], cfg: HealConfig, allow_env: list[str]) -> tuple[list[str], list[str]]:
    """Create the process work pools the spec names that do not exist yet, with heal's job template
    (``base_job_template``), and give existing process pools that template; return the names created, and a
    warning for each pool of another type (a Kubernetes pool from ``infra/k8s``) whose job variables are open."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    created, alerts, template = [], [], base_job_template(cfg, allow_env)
    with get_client(sync_client=True) as client:
        for name in sorted({d["work_pool"]["name"] for d in spec["deployments"]}):
            try:
                pool = client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
                created.append(name)
                continue
            if pool.type == "process":
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
                continue
            variables = pool.base_job_template.get("variables", {})
            open_ = sorted(set(variables.get("properties", {})) & OPEN_VARIABLES)
            if open_ or variables.get("additionalProperties", True) is not False:
                settable = ", ".join(open_) or "any job variable"
                alerts.append(
                    f"work pool {name} ({pool.type}) lets a flow run set {settable}: give it a closed "
                    "template (infra/k8s/gpu-work-pool.json)"
                )
    return created, alerts


def ensure_zombie_automation(timeout_seconds: int) -> bool:
    """Create (or re-create with a new window) the automation that marks a silent flow run CRASHED.

    Why: a worker killed by SIGKILL, OOM or a lost node leaves its runs RUNNING forever, and Prefect offers
    Retry only on a final state (a run whose process died while starting stays PENDING). With heartbeats (every
    ``HEARTBEAT_SECONDS`` from ``heal worker``) and this
    automation, which is Prefect's documented recipe for self-hosted servers, such a run turns CRASHED and is
    retried like any failed shard. Returns whether it was created or changed.
    """
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    final = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    wanted = Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            # Pending and Running too: a run whose process died before its engine started (Pending) or before
            # its first heartbeat reached the server (Running) sends no heartbeat at all
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Pending", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Running", *final},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=timeout_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=f"no heartbeat for {timeout_seconds} s: its worker is gone"
            )
        ],
    )
    try:
        existing = Automation.read(name=ZOMBIE_AUTOMATION)
    except ValueError:
        existing = None
    if existing is not None:
        shape = ("within", "after", "expect")
        if all(getattr(existing.trigger, k) == getattr(wanted.trigger, k) for k in shape):
            return False
        existing.delete()
    wanted.create()
    return True


def register(spec: dict[str, Any]) -> None:
    """``prefect deploy --all`` on the rendered spec; raises with Prefect's own output when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prefect.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(path)],
            cwd=tmp,
            env={**os.environ, **OFFLINE_ENV},
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def deployment_name(deployment: dict[str, Any]) -> str:
    """``flow/deployment`` of a spec entry: heal's flows are named after their entrypoint functions."""
    return f"{deployment['entrypoint'].split(':')[1].replace('_', '-')}/{deployment['name']}"


def close_parameter_schemas(spec: dict[str, Any]) -> None:
    """Refuse unknown top-level parameters at run creation on every deployment of ``spec``.

    Prefect derives a deployment's parameter schema from the flow's signature without ``additionalProperties:
    false`` at the top level, so a REST create with a parameter the flow does not take is accepted (HTTP 201)
    and fails only later, on a worker. With it, the server's schema check refuses it at the door (HTTP 409
    naming the parameter), as it already refuses unknown config keys (the config forbids extras at every level).
    Set after ``prefect deploy``, which has no setting for it.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        for entry in spec["deployments"]:
            deployment = client.read_deployment_by_name(deployment_name(entry))
            schema = {**deployment.parameter_openapi_schema, "additionalProperties": False}
            client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))


def gpu_list(gpus: str) -> list[int]:
    """``--gpus``: one index (``0``), a range (``0-7``) or a list (``0,1,4-5``), as CUDA_VISIBLE_DEVICES takes them."""
    out: list[int] = []
    for part in gpus.split(","):
        first, dash, last = part.strip().partition("-")
        last = last if dash else first
        if not first.isdigit() or not last.isdigit() or int(last) < int(first):
            raise ValueError(f"--gpus {gpus!r}: expected GPU indices such as 0, 0-7 or 0,2,4-5")
        out.extend(range(int(first), int(last) + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"--gpus {gpus!r} names a GPU twice")
    return out


def worker_command(
    pool: str, gpus: str | None, limit: int | None, name: str | None
) -> tuple[list[str], dict[str, str]]:
    """The ``prefect worker start`` command line and environment for one worker.

    A GPU worker owns the GPUs it is given (``CUDA_VISIBLE_DEVICES``) and runs one flow run at a time, so two
    shards or two training stages never share one: one worker per GPU for generation, or one per node
    (``--gpus 0-7``) for training stages spread over its GPUs (``pace.distributed``). Its flow runs send
    heartbeats (see ``ensure_zombie_automation``). ``--install-policy never``: the worker runs the installed
    project and must not pip-install anything at run time (offline hosts, reproducible environments).
    """
    env = {**OFFLINE_ENV, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_list(gpus))
    limit = limit if limit is not None else (1 if gpus is not None else 4)
    name = name or (f"{pool}-gpu{gpus.replace(',', '_')}" if gpus is not None else f"{pool}-worker")
    command = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name,
        "--limit",
        str(limit),
        "--install-policy",
        "never",
    ]
    return command, env
