"""Tools beside the pipeline: audit a verifier against a benchmark, train the demo's bundled models, the version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

import heal_core
from flows.cli.common import Layout, SetOpt, console, fail, metric_table, refusing

app = typer.Typer()
demo = typer.Typer(help="The embedded demo's bundled models.", no_args_is_help=True)
PANEL = "Tools"


@app.command(rich_help_panel=PANEL)
@refusing()
def version() -> None:
    """Print heal's version."""
    console.print(f"heal {heal_core.__version__}")


@demo.command("train-teacher")
@refusing()
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


@app.command("audit-verifier", rich_help_panel=PANEL)
@refusing()
def audit_verifier(
    file: Annotated[str, typer.Argument(help="benchmark: JSONL or Parquet file, or HF datasets directory")],
    format_: Annotated[Layout, typer.Option("--format", help="the file's layout (problems.format)")] = Layout.fields,
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

    cfg = parse_config({}, [*(set_ or []), f"problems.format={format_.value}", f"problems.split={split}"])
    audit = run_audit(cfg.problems.model_copy(update={"uri": file}), cfg.storage.storage_options)
    if not audit.audited:
        hint = "; name it with --set problems.solution_field=FIELD" if format_ is Layout.fields else ""
        raise fail(
            f"{file}: none of its {audit.problems} problems has a reference solution (format {format_.value!r}){hint}"
        )
    console.print(
        metric_table(
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
