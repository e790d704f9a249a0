"""The ``heal`` command line.

It sits at the top of the import chain (cli -> flows -> tasks -> heal_core), which is why it lives in
``flows/`` and not in ``heal_core/``: the method package must not depend on its orchestration.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import heal_core
from heal_core.config import ConfigError, HealConfig, load_config, parse_config
from heal_core.demo import demo_defaults

for _key, _value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_key, _value)  # embedded mode is offline: never phone home

app = typer.Typer(help="HEAL: distil a teacher LLM into a small reasoning model.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect and validate configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config; the embedded default when omitted")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set teacher.sampling.n=8")]


def _fail(message: object) -> typer.Exit:
    """Print a user error without a traceback (unwrapped, so paths stay greppable); exit status 2."""
    console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _load(config: Path | None, overrides: list[str] | None) -> HealConfig:
    try:
        if config is None:
            return parse_config(demo_defaults(), overrides or [], source="(embedded default)")
        return load_config(config, overrides or [])
    except ConfigError as err:
        raise _fail(err) from None


@app.command()
def version() -> None:
    """Print heal's version."""
    console.print(f"heal {heal_core.__version__}")


@config_app.command("show")
def config_show(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the fully resolved config as YAML."""
    console.print(_load(config, set_).to_yaml(), markup=False)


@config_app.command("check")
def config_check(config: Path, set_: SetOpt = None) -> None:
    """Validate a config file; exit 2 with the offending key named when it is invalid."""
    cfg = _load(config, set_)
    console.print(f"{config}: valid (config hash {cfg.config_hash()})")


def _summary_table(title: str, summary: dict) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, str(value))
    return table


def _run_pipeline(cfg: HealConfig, run_id: str) -> None:
    from flows.pipeline import heal_pipeline
    from tasks.layout import RunLayout

    try:
        layout = RunLayout.of(cfg.storage.uri, run_id)
        console.print(f"run id: [bold]{run_id}[/bold]   storage: {layout.root}", soft_wrap=True)
        started = time.perf_counter()
        summary = heal_pipeline(cfg.model_dump(mode="json"), run_id)
    except (ValueError, FileNotFoundError) as err:  # bad input: say what, no traceback
        raise _fail(err) from None
    console.print(_summary_table(f"HEAL run {run_id} ({time.perf_counter() - started:.0f} s)", summary))
    console.print(f"report: {layout.report}")


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


def _stored_config(run_id: str, storage_uri: str) -> HealConfig:
    import yaml

    from heal_core import storage
    from tasks.layout import RunLayout

    try:
        layout = RunLayout.of(storage_uri, run_id)
        return parse_config(yaml.safe_load(storage.read_bytes(layout.config)), source=layout.config)
    except ValueError as err:  # ConfigError and StorageError are ValueErrors
        raise _fail(err) from None


@app.command()
def resume(run_id: str, storage_uri: StorageOpt = "./heal-data") -> None:
    """Continue a run with its stored config: finished shards and training stages are not redone."""
    _run_pipeline(_stored_config(run_id, storage_uri), run_id)


@app.command()
def report(run_id: str, storage_uri: StorageOpt = "./heal-data") -> None:
    """Print a finished run's summary again."""
    from heal_core import storage
    from tasks.layout import RunLayout

    cfg = _stored_config(run_id, storage_uri)
    layout = RunLayout.of(storage_uri, run_id)
    summary = storage.read_json(layout.path("summary.json"), cfg.storage.storage_options)
    console.print(_summary_table(f"HEAL run {run_id}", summary))
    console.print(f"report: {layout.report}")


def main() -> None:  # pragma: no cover - console-script shim
    app()
