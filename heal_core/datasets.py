"""Problem sets from JSONL, Parquet or HF ``datasets`` directories, in the user's layout or a benchmark's.

Each benchmark writes its gold answer its own way: GSM8K after ``####`` with thousands commas, MATH in an
``answer`` field or only as the last ``\\boxed{}`` of the solution, AIME as zero-padded strings (``"073"``)
or integers, AMC as floats (``27.0``). Reading one wrongly grades every teacher sample against a wrong gold
answer, so each layout's rule is written here once. A record a rule cannot read becomes a ``Reject`` naming
the record and the field (see ``heal_core.problems``); it never stops the load.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from heal_core import storage
from heal_core.config import ProblemsConfig
from heal_core.problems import (
    AnswerRule,
    FieldError,
    Problem,
    ProblemError,
    Reject,
    canonical_answer,
    field_answer,
    parse_records,
    read_records,
)
from heal_core.verify import extract_answer

_DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_HF_MARKERS = ("state.json", "dataset_dict.json")  # what Dataset / DatasetDict.save_to_disk write first


@dataclass(frozen=True)
class Layout:
    """How one format's records read: field names, the gold-answer rule, and the worked reference solution
    (what ``heal audit-verifier`` grades against the gold answer; None where a set has none)."""

    fields: ProblemsConfig
    answer: AnswerRule
    reference: Callable[[Mapping[str, Any]], str | None]


def _gsm8k_final(value: Any) -> str:
    if not isinstance(value, str) or "####" not in value:
        raise ValueError(f"expected a solution ending in '#### <answer>', got {value!r:.60}")
    final = _DIGIT_GROUP_COMMA.sub("", value.rsplit("####", 1)[1].strip())
    if not _NUMBER.fullmatch(final):
        raise ValueError(f"expected a number after '####', got {final!r:.60}")
    return final


def _gsm8k_reference(record: Mapping[str, Any]) -> str | None:
    """The worked solution with its ``#### n`` line written as the box a model would write, ``n`` as typed."""
    text = record.get("answer")
    if not isinstance(text, str) or "####" not in text:
        return None
    body, final = text.rsplit("####", 1)
    return f"{body}\\boxed{{{final.strip()}}}"


def _aime_integer(value: Any) -> str:
    """AIME answers are integers 0-999; sets store them as ``"073"``, ``73`` or ``73.0``: all become ``"73"``."""
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        raise ValueError(f"expected an integer answer, got {value!r:.60}")
    if not 0 <= number <= 999:
        raise ValueError(f"AIME answers are 0-999, got {number}")
    return str(number)


def _number(value: Any) -> str:
    """AMC sets keep the numeric answer as a float (``27.0``); a whole number becomes ``"27"``."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r:.60}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r:.60}")
    return canonical_answer(value)


def _answer_or_boxed(fields: ProblemsConfig, canonical: Callable[[Any], str]) -> AnswerRule:
    """The answer field; without it, the last ``\\boxed{}`` of the solution field when one is configured."""

    def read(record: Mapping[str, Any]) -> str:
        solution = record.get(fields.solution_field) if fields.solution_field else None
        if record.get(fields.answer_field) is not None or not isinstance(solution, str):
            return field_answer(record, fields.answer_field, canonical)
        boxed = extract_answer(solution)
        if boxed is None:
            reason = f"no answer field '{fields.answer_field}' and no \\boxed{{}} answer"
            raise FieldError(fields.solution_field, reason)
        try:
            return canonical(boxed)
        except ValueError as exc:
            raise FieldError(fields.solution_field, f"boxed answer: {exc}") from None

    return read


def _solution(fields: ProblemsConfig) -> Callable[[Mapping[str, Any]], str | None]:
    def read(record: Mapping[str, Any]) -> str | None:
        text = record.get(fields.solution_field) if fields.solution_field else None
        return text if isinstance(text, str) and text.strip() else None

    return read


def _mapped(fields: ProblemsConfig, canonical: Callable[[Any], str]) -> Layout:
    return Layout(fields, _answer_or_boxed(fields, canonical), _solution(fields))


_GSM8K = ProblemsConfig(problem_field="question")  # no id field: positional ids
_BUILTIN: dict[str, Layout] = {
    "gsm8k": Layout(_GSM8K, lambda record: field_answer(record, "answer", _gsm8k_final), _gsm8k_reference),
    "math": _mapped(
        ProblemsConfig(id_field="unique_id", solution_field="solution", metadata_fields=["subject", "level"]),
        canonical_answer,
    ),
    "aime": _mapped(ProblemsConfig(solution_field="solution"), _aime_integer),  # AIME 2024 files carry AoPS solutions
    "amc": _mapped(ProblemsConfig(solution_field="solution"), _number),
}


def layout(cfg: ProblemsConfig) -> Layout:
    """The layout ``cfg`` names: a built-in one, or ``cfg``'s own field mapping for format ``fields``."""
    if cfg.format == "fields":
        return _mapped(cfg, canonical_answer)
    return _BUILTIN[cfg.format]


def source_name(uri: str) -> str:
    """A problem set's name (its file or directory stem): ``Problem.source`` and positional ids use it."""
    return PurePosixPath(uri.rstrip("/")).stem


def read_source(
    uri: str, split: str = "", storage_options: dict[str, Any] | None = None
) -> Iterable[Mapping[str, Any] | Reject]:
    """Raw records of a JSONL or Parquet file, or of an HF ``datasets`` directory written by ``save_to_disk``."""
    if any(storage.exists(storage.join(uri, marker), storage_options) for marker in _HF_MARKERS):
        return _hf_records(uri, split, storage_options)
    if split:
        raise ProblemError(f"{uri}: a split ({split!r}) only applies to an HF datasets directory")
    return read_records(storage.read_bytes(uri, storage_options), uri)


def _hf_records(uri: str, split: str, storage_options: dict[str, Any] | None) -> Iterable[Mapping[str, Any]]:
    from datasets import Dataset, load_from_disk  # imported here: it costs seconds, and only this path needs it

    data = load_from_disk(uri, storage_options=storage.resolve_options(storage_options) or None)
    if isinstance(data, Dataset):
        if split:
            raise ProblemError(f"{uri}: holds one dataset without splits, but split {split!r} was asked for")
        return data
    if not split and len(data) == 1:
        split = next(iter(data))
    if split not in data:
        asked = f"split {split!r} is not among" if split else "set problems.split to one of"
        raise ProblemError(f"{uri}: {asked} its splits {sorted(data)}")
    return data[split]


def load_problem_set(
    cfg: ProblemsConfig, storage_options: dict[str, Any] | None = None
) -> tuple[list[Problem], list[Reject]]:
    """Problems of ``cfg.uri`` read in ``cfg``'s layout, and the records that could not be read."""
    spec = layout(cfg)
    records = read_source(cfg.uri, cfg.split, storage_options)
    return parse_records(records, spec.fields, source=source_name(cfg.uri), answer=spec.answer)


def load_with_references(
    cfg: ProblemsConfig, storage_options: dict[str, Any] | None = None
) -> tuple[list[tuple[Problem, str | None]], list[Reject]]:
    """Each problem with its set's own worked solution (None where it has none), for the verifier audit."""
    spec = layout(cfg)
    records = list(read_source(cfg.uri, cfg.split, storage_options))
    problems, rejects = parse_records(records, spec.fields, source=source_name(cfg.uri), answer=spec.answer)
    from_reader = {id(r) for r in records if isinstance(r, Reject)}  # these carry line numbers, not positions
    rejected = {r.record for r in rejects if id(r) not in from_reader}
    kept = [r for n, r in enumerate(records, start=1) if n not in rejected and not isinstance(r, Reject)]
    return list(zip(problems, map(spec.reference, kept), strict=True)), rejects


def load_named_sets(
    cfgs: Iterable[ProblemsConfig], storage_options: dict[str, Any] | None = None
) -> dict[str, list[Problem]]:
    """Problem sets by name (see ``source_name``), e.g. ``decontamination.against``; unreadable records are left
    out. Two sets with one name would be reported as one, so that is an error."""
    sets: dict[str, list[Problem]] = {}
    for cfg in cfgs:
        name = source_name(cfg.uri)
        if name in sets:
            raise ProblemError(f"{cfg.uri}: another set is also named {name!r}")
        sets[name] = load_problem_set(cfg, storage_options)[0]
    return sets
