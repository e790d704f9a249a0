"""What every ``heal`` command shares: the console, the options, loading a config or a stored run, turning heal's
errors into a message and exit status 2 (``refusing``), and tables."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from heal_core.config import HealConfig
    from heal_core.run import Run

P = ParamSpec("P")
R = TypeVar("R")

console = Console()


ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config; the embedded default when omitted")]


GpuMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu-memory",
        help="the memory plan's GPU memory, e.g. 80GB (10^9 bytes) or 80GiB (default: this machine's GPU 0)",
    ),
]


class Mode(enum.StrEnum):
    """``orchestration.mode``'s choices (a test holds them to the config model's)."""

    auto = "auto"
    embedded = "embedded"
    deployments = "deployments"


class Layout(enum.StrEnum):
    """``problems.format``'s choices (a test holds them to the config model's)."""

    fields = "fields"
    gsm8k = "gsm8k"
    math = "math"
    aime = "aime"
    amc = "amc"


SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set teacher.sampling.n=8")]


def fail(message: object) -> typer.Exit:
    """Print a user error without a traceback (unwrapped, so paths stay greppable); exit status 2."""
    console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def load(config: Path | None, overrides: list[str] | None) -> HealConfig:
    from heal_core.config import load_config, parse_config
    from heal_core.demo import demo_defaults

    if config is None:
        return parse_config(demo_defaults(), overrides or [], source="(embedded default)")
    return load_config(config, overrides or [])


StorageOpt = Annotated[str, typer.Option("--storage", help="storage.uri the run was written to")]


def stored_run(run_id: str, storage_uri: str) -> tuple[Run, HealConfig]:
    """The run under ``storage_uri`` and the config it stored (whose storage options it is read with)."""
    from heal_core.run import Run

    return Run.stored(run_id, storage_uri)


def run_reference(reference: str, storage_uri: str) -> tuple[Run, HealConfig]:
    """A run id under ``storage_uri``, or a run's own root (``<storage.uri>/runs/<run_id>``, as ``heal run``
    prints it), so that runs kept in different places can be compared."""
    root, found, run_id = reference.rstrip("/").rpartition("/runs/")
    return stored_run(run_id, root) if found else stored_run(reference, storage_uri)


def metric_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def summary_table(title: str, summary: dict) -> Table:
    """A run's ``summary.json`` as the report labels it."""
    from heal_core.report import flat_summary
    from heal_core.summary import Summary

    return metric_table(title, flat_summary(Summary.model_validate(summary)))


def refusing(*also: type[BaseException]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A command whose refusals are heal's errors, printed as one message with exit status 2 and no traceback:
    bad input and bad settings (``ValueError``: ConfigError, StorageError, ProblemError, LaunchError, ...), a
    file or a server that is not there (``OSError``), a run another process holds (``RunBusy``, ``LeaseLost``),
    and what the command names in ``also``. Anything else is a bug, and keeps its traceback."""

    def wrap(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def refused(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return command(*args, **kwargs)
            except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise  # typer's own exits (typer.Exit is a RuntimeError)
            except Exception as err:
                from heal_core.lease import LeaseLost, RunBusy  # here, not at import: heal --help stays fast

                if isinstance(err, (ValueError, OSError, RunBusy, LeaseLost, *also)):
                    raise fail(err) from None
                raise

        return refused

    return wrap
