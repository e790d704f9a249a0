"""The stores under a ``storage.uri`` that runs share: what each fingerprint in them stands for, what it holds, which
runs use it (``heal store ls``), and removing what no kept run uses (``heal store gc``).

Two stores, each one folder per fingerprint (``heal_core/fingerprints.py``):

* ``generations/<generation fingerprint>/<problem key>/<selection fingerprint>.parquet``
  (``heal_core/generation_store.py``);
* ``evaluations/<evaluation fingerprint>/<key>.parquet``, one model's results on one set (``tasks/evaluation.py``).
  heal 0.1 wrote them flat, ``evaluations/<key>.parquet`` under the same key; a run that finds one there moves it
  into its fingerprint's folder (``evaluation_object``), and ``ls`` counts those not yet moved apart.

Each fingerprint's folder holds a ``fingerprint.json`` (``describe``), written by the first run that uses it, with
the settings it stands for, so ``ls`` can say what a folder is without the run that made it. A folder heal 0.1
wrote has none: ``ls`` then shows the settings of a run that uses it.

Which fingerprints a run uses: its shards' lineage records name the generation fingerprint (runs from heal 0.2 on);
for an older run it is computed again from the run's config and its teacher's files, which must then be on this
machine, and ``gc`` refuses to guess for a kept run whose teacher is not. The evaluation fingerprint is the run's
config's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import heal_core
from heal_core import fingerprints, storage
from heal_core.config import HealConfig
from heal_core.run import Run
from heal_core.settings import Role

DESCRIPTOR = "fingerprint.json"
FOLDERS = {Role.GENERATION: "generations", Role.EVALUATION: "evaluations"}


def folder(storage_uri: str, role: Role, fingerprint: str) -> str:
    return storage.join(storage_uri, FOLDERS[role], fingerprint)


def describe(cfg: HealConfig, role: Role, fingerprint: str, **extra: Any) -> None:
    """Write the fingerprint's ``fingerprint.json`` (its role, settings and ``extra``) unless it is there."""
    uri = storage.join(folder(cfg.storage.uri, role, fingerprint), DESCRIPTOR)
    if not storage.exists(uri, cfg.storage.storage_options):
        record = {
            "role": role.value,
            "fingerprint": fingerprint,
            "heal": heal_core.__version__,
            "settings": fingerprints.settings(cfg, role),
            **extra,
        }
        storage.write_json(record, uri, cfg.storage.storage_options)


def evaluation_object(cfg: HealConfig, key: str) -> str:
    """Where one evaluation store object lives; one heal 0.1 left at ``evaluations/<key>.parquet`` is moved here
    first (read, written whole, then removed), so every run after it finds it in place."""
    fingerprint = fingerprints.evaluation(cfg)
    uri = storage.join(folder(cfg.storage.uri, Role.EVALUATION, fingerprint), f"{key}.parquet")
    legacy = storage.join(cfg.storage.uri, FOLDERS[Role.EVALUATION], f"{key}.parquet")
    options = cfg.storage.storage_options
    if not storage.exists(uri, options) and storage.exists(legacy, options):
        storage.write_bytes(storage.read_bytes(legacy, options), uri, options)
        storage.remove(legacy, options)
    return uri


# ---- which runs use what -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunUse:
    """The fingerprints one run under the storage uses; ``generation`` is None where it cannot be told here."""

    run_id: str
    cfg: HealConfig | None
    generation: str | None
    evaluation: str | None
    unknown: str = ""  # why ``generation`` is None


def run_uses(storage_uri: str, options: dict[str, Any], teacher_identity: Callable[[HealConfig], str]) -> list[RunUse]:
    """Every run under ``storage_uri``, with the fingerprints it uses (``teacher_identity`` names an older run's
    teacher; it raises ``FileNotFoundError``, ``ValueError`` or a ``RuntimeError`` where the teacher, its revision
    or its server cannot be reached from here)."""
    uses = []
    for run_id in storage.list_dirs(storage.join(storage_uri, "runs"), options):
        run = Run(storage.join(storage_uri, "runs", run_id), options)
        try:
            cfg = run.stored_config()
        except ValueError as err:
            uses.append(RunUse(run_id, None, None, None, f"its config does not read: {err}"))
            continue
        recorded = _recorded_generation(run)
        if recorded:
            uses.append(RunUse(run_id, cfg, recorded, fingerprints.evaluation(cfg)))
            continue
        try:
            generation = fingerprints.generation(cfg, teacher_identity(cfg))
        except (FileNotFoundError, ValueError, RuntimeError) as err:  # no such path, no revision, no server
            uses.append(RunUse(run_id, cfg, None, fingerprints.evaluation(cfg), f"its teacher is not here: {err}"))
            continue
        uses.append(RunUse(run_id, cfg, generation, fingerprints.evaluation(cfg)))
    return uses


def _recorded_generation(run: Run) -> str | None:
    """The generation fingerprint a run's first shard record names (heal 0.2 on), else None."""
    uri = run.shard_lineage(0)
    if not storage.exists(uri, run.options):
        return None
    return storage.read_json(uri, run.options).get("generation_fingerprint")


# ---- what the stores hold ----------------------------------------------------------------------------------------


@dataclass
class Stored:
    """One fingerprint's folder."""

    role: Role
    fingerprint: str
    settings: dict[str, Any] | None = None
    settings_from: str = ""  # "fingerprint.json", or the run whose config gave them
    problems: int = 0  # generation: problem keys
    objects: int = 0
    bytes: int = 0
    runs: list[str] = field(default_factory=list)


@dataclass
class Inventory:
    stored: list[Stored]
    unsorted_evaluations: tuple[int, int]  # (objects, bytes) heal 0.1 wrote flat, not yet moved into place
    uses: list[RunUse]


def inventory(storage_uri: str, options: dict[str, Any], uses: list[RunUse]) -> Inventory:
    """What the generation and evaluation stores under ``storage_uri`` hold, per fingerprint, and who uses it."""
    stored: list[Stored] = []
    unsorted = (0, 0)
    for role, name in FOLDERS.items():
        files = storage.sizes(storage.join(storage_uri, name), options)
        by_fingerprint: dict[str, dict[str, int]] = defaultdict(dict)
        for rel, size in files.items():
            head, _, rest = rel.partition("/")
            if rest:
                by_fingerprint[head][rest] = size
            elif role == Role.EVALUATION:
                unsorted = (unsorted[0] + 1, unsorted[1] + size)
        for fingerprint, contents in sorted(by_fingerprint.items()):
            stored.append(_stored(storage_uri, options, role, fingerprint, contents, uses))
    return Inventory(stored, unsorted, uses)


def _stored(
    storage_uri: str,
    options: dict[str, Any],
    role: Role,
    fingerprint: str,
    contents: dict[str, int],
    uses: Sequence[RunUse],
) -> Stored:
    objects = {rel: size for rel, size in contents.items() if rel != DESCRIPTOR}
    entry = Stored(
        role,
        fingerprint,
        objects=len(objects),
        bytes=sum(contents.values()),
        problems=len({rel.split("/")[0] for rel in objects if "/" in rel and not rel.startswith("_")}),
        runs=[u.run_id for u in uses if _uses(u, role) == fingerprint],
    )
    if DESCRIPTOR in contents:
        entry.settings = storage.read_json(storage.join(folder(storage_uri, role, fingerprint), DESCRIPTOR), options)[
            "settings"
        ]
        entry.settings_from = DESCRIPTOR
    else:
        user = next((u for u in uses if _uses(u, role) == fingerprint and u.cfg is not None), None)
        if user is not None:
            entry.settings, entry.settings_from = fingerprints.settings(user.cfg, role), f"run {user.run_id}"
    return entry


def _uses(use: RunUse, role: Role) -> str | None:
    return use.generation if role == Role.GENERATION else use.evaluation


# ---- garbage collection ------------------------------------------------------------------------------------------


def garbage(found: Inventory, keep: Iterable[str]) -> list[Stored]:
    """The fingerprints no run in ``keep`` uses. A kept run that does not exist, or whose generation fingerprint
    cannot be told here, is a ``ValueError``: removing on a guess could delete what it needs."""
    by_id = {u.run_id: u for u in found.uses}
    keep = list(keep)
    missing = [r for r in keep if r not in by_id]
    if missing:
        raise ValueError(
            f"--keep-runs: no run {', '.join(missing)} under this storage (runs: {', '.join(by_id) or 'none'})"
        )
    unknown = [f"{r} ({by_id[r].unknown})" for r in keep if by_id[r].generation is None]
    if unknown:
        raise ValueError(
            f"cannot tell which generation store these kept runs use, so nothing is removed: {'; '.join(unknown)}"
        )
    used = {(role, _uses(by_id[r], role)) for r in keep for role in FOLDERS}
    return [s for s in found.stored if (s.role, s.fingerprint) not in used]


def collect(storage_uri: str, options: dict[str, Any], entries: Iterable[Stored]) -> None:
    """Remove each entry's folder, its descriptor last, so an interrupted removal is still listed, and removed by
    the next ``gc``."""
    for entry in entries:
        root = folder(storage_uri, entry.role, entry.fingerprint)
        for name in storage.list_dirs(root, options):
            storage.remove(storage.join(root, name), options, recursive=True)
        for uri in storage.list_files(root, options):
            if not uri.endswith("/" + DESCRIPTOR):
                storage.remove(uri, options)
        storage.remove(root, options, recursive=True)
