"""The ``heal`` command line: one Typer app, its commands in modules by topic (``runs``, ``configs``, ``stores``,
``cluster``, ``tools``), shown in ``heal --help`` under those headings.

It sits at the top of the import chain (cli -> flows -> tasks -> heal_core), which is why it lives in
``flows/`` and not in ``heal_core/``: the method package must not depend on its orchestration.

Every command imports what it needs itself. A spawned worker process (the verifier's pool) first re-imports
the ``heal`` script it was started from, and a terminal's Ctrl-C reaches it while it does: the less this
package imports, the shorter that window, and the faster ``heal --help`` answers.
"""

from __future__ import annotations

import os
import warnings

import typer
from rich.console import Console
from rich.markup import escape

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

from flows.cli import cluster, configs, runs, stores, tools  # noqa: E402 (after the environment above)

app = typer.Typer(help="HEAL: distil a teacher LLM into a small reasoning model.", no_args_is_help=True)
app.add_typer(runs.app)
app.add_typer(configs.app, name="config", rich_help_panel="Setup")
app.add_typer(stores.app, name="store", rich_help_panel="Storage")
app.add_typer(cluster.app)
app.add_typer(tools.app)
app.add_typer(tools.demo, name="demo", rich_help_panel=tools.PANEL)
