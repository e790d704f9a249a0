"""``heal store``: the generation and evaluation stores that runs under one storage share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.common import StorageOpt, console, refusing

if TYPE_CHECKING:
    from heal_core.config import HealConfig

app = typer.Typer(help="The generation and evaluation stores that runs under one storage share.", no_args_is_help=True)


def _store_inventory(storage_uri: str):
    """What the stores under ``storage_uri`` hold, and which runs use it (``heal_core/stores.py``)."""
    from heal_core import stores
    from tasks.models import resolve_model, teacher_identity

    def identity(cfg: HealConfig) -> str:
        return teacher_identity(cfg, resolve_model(cfg.teacher.model, "teacher"))

    return stores.inventory(storage_uri, {}, stores.run_uses(storage_uri, {}, identity))


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


@app.command("ls")
@refusing()
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


@app.command("gc")
@refusing()
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
    doomed = stores.garbage(found, keep)
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
