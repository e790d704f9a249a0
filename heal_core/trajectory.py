"""One teacher trajectory, typed: the columns every row has, and the lineage group each stage adds.

Stage I rows (``heal_core.sampling``) carry only the common columns. Stage II rows (``heal_core.hints``) add a
``Hint``; Stage III rows (``heal_core.gear``) a ``Hint`` and a ``Repair``; PURE (``heal_core.pure``) adds its
``PureResult`` to the hinted rows it judged; the judge (``heal_core.judge``) sets ``judge_verdict`` on a row of
any stage. Construction checks a row's groups against its stage, so a row whose lineage does not fit cannot
exist. Rows are frozen: a step returns new rows (``dataclasses.replace``), and a row read anywhere is the one
the step that made it returned.

In storage a row is one flat record of ``schema.TRAJECTORY_SCHEMA``: a group is its columns, all null on a row
without it (``to_table``, ``from_table``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa

from heal_core.pure import PureResult
from heal_core.schema import TRAJECTORY_SCHEMA, SchemaError
from heal_core.schema import to_table as _records_to_table
from heal_core.stages import Stage


@dataclass(frozen=True)
class Hint:
    """Stage II and III: what the teacher was told, and whether the trajectory gave it away."""

    hint: str  # the hinted user message the teacher saw
    leaked_hint: bool  # the teacher's own text mentions the hint (``mentions_hint``): never kept
    wave: int  # the wave that drew the row (0 first; see heal_core.shard)


@dataclass(frozen=True)
class Repair:
    """Stage III: the failed trajectory GEAR repaired, and where it was cut."""

    parent_sample_id: str
    breakpoint_token: int
    breakpoint_step: int
    breakpoint_surge: float
    prefix_chars: int  # characters of the parent kept before the continuation


@dataclass(frozen=True)
class Trajectory:
    sample_id: str  # deterministic: stable across retries
    problem_id: str
    prompt: str  # the unaided user prompt: what the student trains on
    gold_answer: str
    stage: Stage
    sample_index: int
    text: str  # the whole assistant answer (GEAR: prefix + continuation)
    token_ids: list[int]  # the generated tokens (GEAR: the continuation's)
    entropy: list[float]  # per generated token, at the sampling temperature
    finish_reason: str  # "stop" | "length"
    verified: bool
    verify_status: str  # see heal_core.verify.Status
    extracted_answer: str | None
    teacher: str
    seed: int  # the row's own sampling seed (heal_core/seeds.py)
    config_hash: str
    kept: bool = False  # enters a PACE stage
    judge_verdict: str | None = None  # equivalent | different | unclear; None when not judged
    hint: Hint | None = None
    repair: Repair | None = None
    pure: PureResult | None = None

    def __post_init__(self) -> None:
        error = _lineage_error(self.stage, self.hint, self.repair, self.pure)
        if error:
            raise SchemaError(f"{self.sample_id}: {error}")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def record(self) -> dict[str, Any]:
        """The row as one flat ``TRAJECTORY_SCHEMA`` record."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _GROUPS}
        out["num_tokens"] = self.num_tokens
        for name, (cls, prefix) in _GROUPS.items():
            group = getattr(self, name)
            out.update({prefix + f.name: None if group is None else getattr(group, f.name) for f in fields(cls)})
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any], index: int = 0) -> Trajectory:
        """A row from a flat record; a group is present when its first column is set, and then needs every column
        its type does not let be null. The error names the record and the field."""
        where = f"record {index} ({record.get('sample_id')})"
        values = {f.name: record[f.name] for f in fields(cls) if f.name not in _GROUPS}
        values["stage"] = Stage(values["stage"])
        for name, (group_cls, prefix) in _GROUPS.items():
            columns = {f.name: record[prefix + f.name] for f in fields(group_cls)}
            if next(iter(columns.values())) is None:
                stray = [prefix + k for k, v in columns.items() if v is not None]
                if stray:
                    raise SchemaError(f"{where}: '{stray[0]}' is set without '{_KEY_COLUMN[name]}'")
                values[name] = None
                continue
            missing = [prefix + f.name for f in fields(group_cls) if columns[f.name] is None and "None" not in f.type]
            if missing:
                raise SchemaError(f"{where}: '{missing[0]}' is null but '{_KEY_COLUMN[name]}' is set")
            values[name] = group_cls(**columns)
        error = _lineage_error(values["stage"], values["hint"], values["repair"], values["pure"])
        if error:
            raise SchemaError(f"{where}: {error}")
        return cls(**values)


_GROUPS: dict[str, tuple[type, str]] = {"hint": (Hint, ""), "repair": (Repair, ""), "pure": (PureResult, "pure_")}
_KEY_COLUMN = {name: prefix + fields(cls)[0].name for name, (cls, prefix) in _GROUPS.items()}
_HINTED = (Stage.HINT, Stage.REPAIR)


def _lineage_error(stage: Stage, hint: Hint | None, repair: Repair | None, pure: PureResult | None) -> str | None:
    """What is wrong with a row's groups for its stage: every hinted row has a ``Hint``, a GEAR row a ``Repair``,
    and only hinted rows can have PURE's judgement (whether a kept one must: ``check_kept_judged``)."""
    for group, value, belongs in (
        ("hint", hint, stage in _HINTED),
        ("repair", repair, stage == Stage.REPAIR),
        ("pure", pure, stage in _HINTED),
    ):
        if value is not None and not belongs:
            return f"stage {stage.roman} does not fill '{_KEY_COLUMN[group]}'"
        if value is None and belongs and group != "pure":
            return f"stage {stage.roman} row without '{_KEY_COLUMN[group]}'"
    return None


def mentions_hint(text: str, patterns: Sequence[str]) -> str | None:
    """The first leakage pattern (``hints.leakage_patterns``) that matches ``text``, case-insensitive, or None: a
    trajectory that talks about its hint ("as the hint says...") would teach the student to cite a hint it will
    never have. It defines ``Hint.leaked_hint``, so it lives with the row."""
    for pattern in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return pattern
    return None


def check_kept_judged(rows: Sequence[Trajectory], pure_enabled: bool) -> None:
    """With PURE on, every kept hinted row carries PURE's verdict; raise ``SchemaError`` naming the first that does
    not. Run on every shard before it is stored (the groups themselves are checked when a row is made)."""
    if not pure_enabled:
        return
    for i, row in enumerate(rows):
        if row.kept and row.stage > Stage.BASE and row.pure is None:
            raise SchemaError(f"record {i} ({row.sample_id}): stage {row.stage.roman} row without 'pure_verdict'")


def to_table(rows: Iterable[Trajectory]) -> pa.Table:
    return _records_to_table((row.record() for row in rows), TRAJECTORY_SCHEMA)


def from_table(table: pa.Table) -> list[Trajectory]:
    """Rows of a table read through ``storage.read_parquet(..., TRAJECTORY_SCHEMA)`` (every column)."""
    return [Trajectory.from_record(record, i) for i, record in enumerate(table.to_pylist())]
