import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from heal_core.config import ProblemsConfig
from heal_core.problems import (
    ProblemError,
    canonical_answer,
    parse_records,
    read_jsonl_records,
    read_records,
    require_problems,
)

FIELDS = ProblemsConfig()


def _jsonl(*records) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in records) + b"\n"


def test_good_and_bad_records_are_separated_with_reasons():
    data = _jsonl(
        {"id": "a", "problem": "1+1?", "answer": "2"},
        {"id": "b", "problem": "2+2?"},  # no answer
        b"\xff\xfe not utf-8",
        b"{not json",
        {"id": "c", "problem": "", "answer": "1"},
        {"id": "a", "problem": "dup", "answer": "3"},
        {"id": "d", "problem": "amc", "answer": 27.0},
        {"id": "e", "problem": "nan", "answer": float("nan")},
        {"id": 7, "problem": "int id", "answer": 5},
    )
    problems, rejects = parse_records(read_jsonl_records(data), FIELDS, source="t")
    assert [(p.problem_id, p.answer) for p in problems] == [("a", "2"), ("d", "27"), ("7", "5")]
    reasons = {r.record: str(r) for r in rejects}
    assert reasons[2] == "record 2: field 'answer': missing"
    assert "not valid UTF-8" in reasons[3]
    assert "not valid JSON" in reasons[4]
    assert "field 'problem'" in reasons[5]
    assert "duplicate id 'a'" in reasons[6]
    assert "field 'answer'" in reasons[8] and "finite" in reasons[8]
    assert len(problems) + len(rejects) == 9


def test_missing_ids_get_stable_positional_ids_and_field_mapping_applies():
    fields = ProblemsConfig(id_field="uid", problem_field="question", answer_field="final")
    data = _jsonl({"question": "q1", "final": "1"}, {"question": "q2", "final": "2"})
    problems, rejects = parse_records(read_jsonl_records(data), fields, source="gsm")
    assert not rejects
    assert [p.problem_id for p in problems] == ["gsm-000001", "gsm-000002"]


def test_parquet_records(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "x", "problem": "p", "answer": "4"}]), path)
    problems, _ = parse_records(read_records(path.read_bytes(), path.name), FIELDS)
    assert problems[0].answer == "4"
    with pytest.raises(ProblemError, match="unsupported"):
        read_records(b"", "problems.csv")


def test_a_file_without_any_usable_problem_is_one_clear_error():
    _, rejects = parse_records(read_jsonl_records(_jsonl({"id": "b", "problem": "2+2?"})), FIELDS)
    with pytest.raises(ProblemError, match="record 1: field 'answer': missing"):
        require_problems([], rejects, "problems.jsonl")


@pytest.mark.parametrize(
    ("value", "expected"), [(27.0, "27"), (-1.0, "-1"), (0.5, "0.5"), (" 3/4 ", "3/4"), (70, "70")]
)
def test_canonical_answer(value, expected):
    assert canonical_answer(value) == expected


@pytest.mark.parametrize("value", [None, True, float("inf"), "", [1], {"a": 1}])
def test_canonical_answer_rejects(value):
    with pytest.raises(ValueError):
        canonical_answer(value)
