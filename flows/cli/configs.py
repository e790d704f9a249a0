"""``heal config``: show, explain, print the schema of, migrate and check configs."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import ConfigArg, GpuMemoryOpt, SetOpt, console, fail, load, refusing

app = typer.Typer(help="Inspect and validate configs.", no_args_is_help=True)


@app.command("show")
@refusing()
def config_show(
    config: ConfigArg = None,
    set_: SetOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="one line of JSON (the REST API's `config` parameter)")] = False,
) -> None:
    """Print the fully resolved config as YAML (or JSON)."""
    cfg = load(config, set_)
    if json_:
        print(cfg.model_dump_json())  # plain print: rich would wrap the line
    else:
        console.print(cfg.to_yaml(), markup=False)


@app.command("explain")
@refusing()
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


@app.command("schema")
@refusing()
def config_schema() -> None:
    """Print the config's JSON schema: every key with its type, bounds, choices, default, role and the paper's
    value. For editors: save it and point a YAML language server at it (``# yaml-language-server: $schema=...``
    on a config's first line), and a config is checked as it is typed."""
    import json

    from heal_core.config_reference import schema

    print(json.dumps(schema(), indent=2, ensure_ascii=False))  # plain print: a file, byte for byte


@app.command("migrate")
@refusing()
def config_migrate(
    config: Annotated[Path, typer.Argument(help="a YAML config written for an older heal (a run's config.yaml too)")],
) -> None:
    """Rewrite a config file in place to today's setting names: renamed settings moved, removed ones dropped
    (comments kept). A removed setting that shaped the data at a value heal no longer computes is refused."""
    from heal_core.config import load_config, migrate_config_file

    changes = migrate_config_file(config)
    cfg = load_config(config)
    for change in changes:
        console.print(f"{config}: {change}", markup=False, soft_wrap=True)
    console.print(
        f"{config}: {'migrated' if changes else 'already current'} (config hash {cfg.config_hash()})",
        markup=False,
        soft_wrap=True,
    )


@app.command("check")
@refusing()
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
    gpu_memory: GpuMemoryOpt = None,
) -> None:
    """Validate a config file; exit 2 with the offending key named when it is invalid. With --gpus (or
    --gpu-memory), also print the student's training memory plan, and exit 2 naming a setting that fits when
    it does not fit."""
    cfg = load(config, set_)
    console.print(f"{config}: valid (config hash {cfg.config_hash()})")
    if gpus is None and gpu_memory is None:
        return
    from heal_core.demo import bundled_model
    from heal_core.memory_plan import render

    shown, refusal = render(cfg, cfg.student.model or str(bundled_model("student")), gpus, gpu_memory)
    console.print(shown, markup=False, highlight=False, soft_wrap=True)
    if refusal is not None:
        raise fail(refusal)
