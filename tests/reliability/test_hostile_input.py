"""Hostile problem files, fuzzed: every bad record is quarantined with its field, every good one is kept.

Each generated line carries its own expected outcome (the generator knows which defect it planted), so the
oracle is independent of the parser. One defect per bad record keeps the expected field unambiguous.
"""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heal_core.config import ProblemsConfig
from heal_core.problems import parse_records, problems_to_records, read_jsonl_records
from heal_core.schema import PROBLEM_SCHEMA
from heal_core.verify import check_many

FIELDS = ProblemsConfig()
HUGE = "x" * (1 << 20)  # 1 MB, far past problems.max_chars

text = st.text(min_size=1, max_size=200).filter(lambda s: s.strip())
answer = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    text,
    st.integers(1, 400).map(lambda d: "\\frac{" * d + "1" + "}{2}" * d),  # deeply nested LaTeX for the verifier
)
junk = st.one_of(
    st.none(), st.booleans(), st.lists(st.integers(), max_size=3), st.dictionaries(text, st.integers(), max_size=2)
)
extra = st.dictionaries(st.sampled_from(["source", "level", "notes", "x"]), st.one_of(text, st.integers()), max_size=2)


@st.composite
def hostile_line(draw, index: int, earlier_ids: list[str]) -> tuple[bytes, str | None, str | None]:
    """(line, problem id if the record is good, the field the quarantine must name if it is bad)."""
    pid = f"p{index}"
    record = {"id": pid, "problem": draw(text), "answer": draw(answer), **draw(extra)}
    kind = draw(
        st.sampled_from(
            [
                "good",
                "good",
                "good",
                "missing",
                "wrong_type",
                "empty",
                "huge",
                "invalid_utf8",
                "broken_json",
                "not_object",
                "duplicate",
                "nan",
                "surrogate",
                "deep_json",
                "bad_id",
            ]
        )
    )
    if kind == "good":
        return json.dumps(record).encode(), pid, None
    if kind == "missing":
        field = draw(st.sampled_from(["problem", "answer"]))
        del record[field]
        return json.dumps(record).encode(), None, field
    if kind == "wrong_type":
        field = draw(st.sampled_from(["problem", "answer"]))
        record[field] = draw(junk)
        return json.dumps(record).encode(), None, field
    if kind == "empty":
        field = draw(st.sampled_from(["id", "problem", "answer"]))
        record[field] = draw(st.sampled_from(["", " ", "\t\n"]))
        return json.dumps(record).encode(), None, field
    if kind == "huge":
        field = draw(st.sampled_from(["problem", "answer"]))
        record[field] = HUGE
        return json.dumps(record).encode(), None, field
    if kind == "invalid_utf8":
        return json.dumps(record).encode()[:-1] + b"\xff\xfe}", None, "<line>"
    if kind == "broken_json":
        return json.dumps(record).encode()[: draw(st.integers(1, 5))], None, "<line>"
    if kind == "not_object":
        return json.dumps(draw(st.one_of(st.integers(), st.lists(text, max_size=2), text))).encode(), None, "<record>"
    if kind == "duplicate" and earlier_ids:
        record["id"] = draw(st.sampled_from(earlier_ids))
        return json.dumps(record).encode(), None, "id"
    if kind == "nan":
        record["answer"] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return json.dumps(record).encode(), None, "answer"  # json writes NaN/Infinity, which json.loads accepts
    if kind == "surrogate":
        return json.dumps(record).replace('"problem": "', '"problem": "\\ud800', 1).encode(), None, "problem"
    if kind == "deep_json":
        return b"[" * 100_000, None, "<line>"
    if kind == "bad_id":
        record["id"] = draw(st.one_of(st.booleans(), st.floats(), st.lists(st.integers(), max_size=2)))
        return json.dumps(record).encode(), None, "id"
    return json.dumps(record).encode(), pid, None  # "duplicate" with nothing before it to copy


@st.composite
def hostile_file(draw) -> tuple[bytes, list[str], list[tuple[int, str]]]:
    lines, good, bad = [], [], []
    for index in range(draw(st.integers(20, 40))):
        line, pid, field = draw(hostile_line(index, good))
        lines.append(line)
        if pid is not None:
            good.append(pid)
        else:
            bad.append((index + 1, field))
    return b"\n".join(lines) + b"\n", good, bad


# 12 files of 20-40 records: at least 240 generated records per run.
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile_file())
def test_fuzzed_records_are_quarantined_or_kept_never_crash(case):
    data, good, bad = case
    problems, rejects = parse_records(read_jsonl_records(data), FIELDS, source="fuzz")

    assert [p.problem_id for p in problems] == good
    assert [(r.record, r.field) for r in rejects] == bad
    assert all(r.reason for r in rejects)
    pa.Table.from_pylist(problems_to_records(problems), schema=PROBLEM_SCHEMA)  # every kept record is storable


@settings(max_examples=3, deadline=None, derandomize=True)
@given(st.lists(answer, min_size=8, max_size=16))
def test_the_verifier_never_hangs_on_hostile_gold_answers(answers):
    golds = [str(a) for a in answers]
    verdicts = check_many([(f"The final answer is \\boxed{{{g}}}.", g) for g in golds], timeout=2.0)
    assert len(verdicts) == len(golds)
    for gold, verdict in zip(golds, verdicts):
        assert verdict.status in {"correct", "wrong", "unparseable", "bad_gold", "timeout", "error"}, (gold, verdict)
        if re.fullmatch(r"-?[0-9]+", gold):
            assert verdict.correct, (gold, verdict)  # an integer boxed as itself must verify
