"""The commands that make and read runs: ``heal run``, ``resume``, ``report``, ``train``, ``eval``, ``compare``,
``export``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli.common import (
    ConfigArg,
    GpuMemoryOpt,
    Mode,
    SetOpt,
    StorageOpt,
    console,
    fail,
    load,
    refusing,
    run_reference,
    stored_run,
    summary_table,
)

if TYPE_CHECKING:
    from heal_core.config import HealConfig

app = typer.Typer()
PANEL = "Runs"


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
    from heal_core.run import Run

    run = Run.of(cfg, run_id)
    console.print(f"run id: [bold]{run_id}[/bold]   storage: {run.root}", soft_wrap=True)
    started = time.perf_counter()
    summary = None
    with local_api(), stop_on_signal(), _progress_display():
        summary = start() if start is not None else heal_pipeline(cfg, run_id)
    if summary is None:  # Ctrl-C or SIGTERM stopped it
        again = again or f"heal resume {run_id} --storage {cfg.storage.uri}"
        console.print(f"[yellow]interrupted.[/yellow] Continue the run with: {again}", soft_wrap=True, highlight=False)
        raise typer.Exit(130)
    console.print(summary_table(f"HEAL run {run_id} ({time.perf_counter() - started:.0f} s)", summary))
    console.print(f"report: {run.report}")


@app.command(rich_help_panel=PANEL)
@refusing()
def run(
    config: ConfigArg = None,
    set_: SetOpt = None,
    run_id: Annotated[str | None, typer.Option(help="default: a new id from the time and config hash")] = None,
) -> None:
    """Run the whole HEAL pipeline (the embedded default without CONFIG) and print the summary."""
    cfg = load(config, set_)
    _run_pipeline(cfg, run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.config_hash()[:8]}")


ModeOpt = Annotated[
    Mode | None, typer.Option("--mode", help="orchestration.mode for this attempt (its config hash stays)")
]


@app.command(rich_help_panel=PANEL)
@refusing()
def resume(run_id: str, storage_uri: StorageOpt = "./heal-data", mode: ModeOpt = None) -> None:
    """Continue a run with its stored config: finished shards and training stages are not redone."""
    from heal_core.config import parse_config

    _, cfg = stored_run(run_id, storage_uri)
    if mode is not None:  # execution-only: the run's config hash does not change
        cfg = parse_config(cfg.model_dump(mode="json"), [f"orchestration.mode={mode.value}"], source="--mode")
    _run_pipeline(cfg, run_id)


@app.command(rich_help_panel=PANEL)
@refusing()
def report(run_id: str, storage_uri: StorageOpt = "./heal-data") -> None:
    """Print a finished run's summary again, and every model trained on its data: its own and those of the runs
    derived from it (heal train, heal eval)."""
    from heal_core import storage
    from heal_core.derived import trained_models

    run, cfg = stored_run(run_id, storage_uri)
    summary = storage.read_json(run.summary, run.options)
    console.print(summary_table(f"HEAL run {run_id}", summary))
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
    from heal_core.derived import derived_config, derived_id

    _, parent_cfg = stored_run(run_id, storage_uri)
    cfg = derived_config(parent_cfg, kind, overrides, variants)  # refused here, before a server starts
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


@app.command(rich_help_panel=PANEL)
@refusing()
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
    gpu_memory: GpuMemoryOpt = None,
) -> None:
    """Train students again on a finished run's curriculum (--set pace.* or student.*, --variant), without the
    teacher; the models land in run RUN_ID.train-<hash> beside it, and models trained as before are adopted.
    With --plan, print how much memory each training process would need, and train nothing."""
    if not plan:
        if gpus is not None or gpu_memory is not None:
            raise fail("--gpus and --gpu-memory go with --plan (training uses the GPUs the worker has)")
        _derive("train", run_id, storage_uri, set_ or [], variant or [])
        return
    from heal_core.demo import bundled_model
    from heal_core.derived import derived_config
    from heal_core.memory_plan import render

    _, parent_cfg = stored_run(run_id, storage_uri)
    cfg = derived_config(parent_cfg, "train", set_ or [], variant or [])
    shown, refusal = render(cfg, cfg.student.model or str(bundled_model("student")), gpus, gpu_memory)
    console.print(shown, markup=False, highlight=False, soft_wrap=True)
    if refusal is not None:
        raise fail(refusal)


@app.command("eval", rich_help_panel=PANEL)
@refusing()
def eval_(run_id: str, storage_uri: StorageOpt = "./heal-data", set_: SetOpt = None) -> None:
    """Evaluate a finished run's models again (--set evaluation.*), without retraining them; what was evaluated
    the same way before is read from the evaluation store. Results land in run RUN_ID.eval-<hash>."""
    _derive("eval", run_id, storage_uri, set_ or [], [])


@app.command(rich_help_panel=PANEL)
@refusing()
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
        raise fail("compare needs two runs or more")
    opened = [run_reference(reference, storage_uri) for reference in runs]
    missing = [run.root for run, _ in opened if not storage.exists(run.summary, run.options)]
    if missing:
        raise fail(f"not finished (no summary.json): {', '.join(missing)}")
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


@app.command(rich_help_panel=PANEL)
@refusing()
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

    run, cfg = stored_run(run_id, storage_uri)
    export_run(run, dest, variant, cfg.pace.seeds[0] if seed is None else seed, cfg)
    console.print(f"dataset: {dest / 'dataset'}\nmodel: {dest / 'model'}")
