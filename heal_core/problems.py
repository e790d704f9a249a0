"""Problem records: parse them strictly, quarantine the bad ones, never lose the good ones.

Real problem files are messy (a missing answer, a float answer such as AMC's ``27.0``, a line that is not
UTF-8). One bad record must not stop a run that costs GPU-days, and it must not disappear silently either:
every record is either a ``Problem`` or a ``Reject`` that names its line, the field and the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq

from heal_core.config import ProblemsConfig


@dataclass(frozen=True)
class Problem:
    problem_id: str
    problem: str
    answer: str
    source: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # e.g. MATH-500 subject and level, for grouped evaluation

    def __post_init__(self) -> None:
        # Arrow hands a map column back as (key, value) pairs, and a null map as None.
        object.__setattr__(self, "metadata", dict(self.metadata or {}))

    @property
    def key(self) -> str:
        """What the problem is: a hash of its id, text and gold answer. The id is in it because it seeds the
        problem's requests and names its rows (``heal_core/seeds.py``): the same text under another id is another
        problem. It keys the generation store and pins a run's problems."""
        return hashlib.sha256(json.dumps([self.problem_id, self.problem, self.answer]).encode()).hexdigest()[:24]


def changes(before: Sequence[Problem], now: Sequence[Problem]) -> str:
    """What differs between two lists of problems, by id, for a person ("" when nothing does): the problems
    added, removed and changed (same id, other text or answer), a few of each named, and a reordering."""
    old, new = {p.problem_id: p.key for p in before}, {p.problem_id: p.key for p in now}
    parts = []
    for label, ids in (
        ("added", [i for i in new if i not in old]),
        ("removed", [i for i in old if i not in new]),
        ("changed", [i for i in new if i in old and new[i] != old[i]]),
    ):
        if ids:
            parts.append(f"{len(ids)} {label} ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")
    if not parts and [p.key for p in before] != [p.key for p in now]:
        parts.append("the same problems in another order")
    return "; ".join(parts)


@dataclass(frozen=True)
class Reject:
    """A record that could not become a Problem. ``record`` is its 1-based line or row number."""

    record: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"record {self.record}: field '{self.field}': {self.reason}"


class ProblemError(ValueError):
    """No usable problem could be read; the message names the first bad records."""


def canonical_answer(value: Any) -> str:
    """The gold answer as the string the verifier and the PURE answer probe use.

    Whole-number floats become integers (AMC stores ``27.0`` for 27: ``\\boxed{27.0}`` is not what a
    solution writes). NaN/inf and non-scalar values are not answers.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an answer: {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty")
        return text
    raise ValueError(f"expected a string or number, got {type(value).__name__}")


class FieldError(Exception):
    """A record field that cannot be used; parse_records turns it into a Reject."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


AnswerRule = Callable[[Mapping[str, Any]], str]
"""Reads one record's gold answer; raises ``FieldError`` naming the field when it cannot."""


def field_answer(record: Mapping[str, Any], name: str, canonical: Callable[[Any], str] = canonical_answer) -> str:
    """The answer held in ``record[name]``, made canonical; a ValueError of ``canonical`` names the field."""
    if record.get(name) is None:
        raise FieldError(name, "missing")
    try:
        return canonical(record[name])
    except ValueError as exc:
        raise FieldError(name, str(exc)) from None


def parse_records(
    records: Iterable[Mapping[str, Any] | Reject],
    fields: ProblemsConfig,
    source: str | None = None,
    answer: AnswerRule | None = None,
) -> tuple[list[Problem], list[Reject]]:
    """Turn raw records into problems; ids must be unique (a repeated id is rejected, the first one kept).

    ``answer`` reads the gold answer (default: ``fields.answer_field`` as is); ``heal_core.datasets`` passes
    each format's rule, such as GSM8K's ``#### n`` line.
    """
    read_answer = answer or (lambda record: field_answer(record, fields.answer_field))
    problems: list[Problem] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for number, record in enumerate(records, start=1):
        if isinstance(record, Reject):
            rejects.append(record)
            continue
        try:
            problem = _parse_one(number, record, fields, source, read_answer)
        except FieldError as err:
            rejects.append(Reject(number, err.field, err.reason))
            continue
        if problem.problem_id in seen:
            rejects.append(Reject(number, fields.id_field, f"duplicate id {problem.problem_id!r}"))
            continue
        seen.add(problem.problem_id)
        problems.append(problem)
    return problems, rejects


def _parse_one(
    number: int, record: Mapping[str, Any], fields: ProblemsConfig, source: str | None, answer: AnswerRule
) -> Problem:
    if not isinstance(record, Mapping):
        raise FieldError("<record>", f"expected an object, got {type(record).__name__}")
    raw_id = record.get(fields.id_field)
    if raw_id is None:
        problem_id = f"{source or 'record'}-{number:06d}"  # files such as GSM8K carry no id: the position is stable
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        problem_id = str(raw_id).strip()
    else:
        raise FieldError(fields.id_field, f"expected a non-empty string or integer id, got {raw_id!r:.60}")
    text = record.get(fields.problem_field)
    if not isinstance(text, str) or not text.strip():
        what = "missing" if text is None else f"expected non-empty text, got {text!r:.60}"
        raise FieldError(fields.problem_field, what)
    metadata = {
        name: _metadata_value(record[name], name, fields.max_chars)
        for name in fields.metadata_fields
        if record.get(name) is not None
    }
    return Problem(
        problem_id=_storable(problem_id, fields.id_field, fields.max_chars),
        problem=_storable(text, fields.problem_field, fields.max_chars),
        answer=_storable(answer(record), fields.answer_field, fields.max_chars),
        source=source,
        metadata=metadata,
    )


def _storable(text: str, name: str, max_chars: int) -> str:
    """Text that Parquet can hold and a teacher can read. JSON's ``\\ud800`` escapes decode to lone surrogates,
    which no UTF-8 writer accepts: caught here, the record is quarantined instead of failing a shard's write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FieldError(name, f"not valid Unicode (lone surrogate at character {exc.start})") from None
    if len(text) > max_chars:
        raise FieldError(name, f"{len(text)} characters, more than problems.max_chars={max_chars}")
    return text


def _metadata_value(value: Any, name: str, max_chars: int) -> str:
    """Metadata is kept as text (MATH's integer ``level`` becomes ``"5"``), so one Arrow map type holds any set's."""
    return _storable(value if isinstance(value, str) else json.dumps(value), name, max_chars)


def read_jsonl_records(data: bytes) -> Iterable[Mapping[str, Any] | Reject]:
    """Yield one object per non-empty line; undecodable or non-JSON lines become Rejects, not exceptions."""
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Reject(number, "<line>", f"not valid UTF-8 (byte {exc.start}: {line[exc.start : exc.start + 1]!r})")
            continue
        try:
            yield json.loads(text)
        except json.JSONDecodeError as exc:
            yield Reject(number, "<line>", f"not valid JSON: {exc.msg} at column {exc.colno}")
        except RecursionError:  # json raises it, not JSONDecodeError, for a line like "[[[[..." thousands deep
            yield Reject(number, "<line>", "JSON nested too deeply")


def read_records(data: bytes, name: str) -> Iterable[Mapping[str, Any] | Reject]:
    """Records of a JSONL or Parquet file, chosen by the file name's extension."""
    if name.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if name.endswith((".jsonl", ".json")):
        return read_jsonl_records(data)
    raise ProblemError(f"{name}: unsupported problem file type (expected .jsonl or .parquet)")


def problems_to_records(problems: Iterable[Problem]) -> list[dict[str, Any]]:
    """Rows for ``heal_core.schema.PROBLEM_SCHEMA``."""
    return [asdict(p) for p in problems]


def require_problems(problems: list[Problem], rejects: list[Reject], name: str) -> None:
    """A file with no usable problem is an error; the message shows the first few reasons."""
    if problems:
        return
    shown = "; ".join(str(r) for r in rejects[:3]) or "the file holds no records"
    more = f" (and {len(rejects) - 3} more)" if len(rejects) > 3 else ""
    raise ProblemError(f"{name}: no usable problem: {shown}{more}")
