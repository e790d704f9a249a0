"""Problem-set loaders: the real benchmark files in their built-in formats, field mapping, bad records, and
JSONL / Parquet / HF-directory round trips built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from heal_core.config import ConfigError, HealConfig, ProblemsConfig, parse_config
from heal_core.datasets import load_named_sets, load_problem_set, load_with_references
from heal_core.problems import Problem, ProblemError, problems_to_records
from heal_core.schema import PROBLEM_SCHEMA, to_table
from tasks.problems import load_problems

BENCHMARKS = {  # file -> (format, records, {problem_id: answer} of known records)
    "math500_test.jsonl": (
        "math",
        500,
        {
            "test/precalculus/807.json": r"\left( 3, \frac{\pi}{2} \right)",
            "test/algebra/1349.json": r"\text{Evelyn}",
            "test/geometry/615.json": r"106^\circ",
        },
    ),
    "gsm8k_test.jsonl": ("gsm8k", 1319, {"gsm8k_test-000001": "18", "gsm8k_test-000612": "1450000"}),
    "aime2024_test.jsonl": ("aime", 30, {"60": "204", "75": "73", "84": "33", "89": "902"}),
    "aime2025_test.jsonl": ("aime", 30, {"0": "70", "1": "588", "2": "16", "29": "240"}),
    "amc2023_test.jsonl": ("amc", 40, {"0": "27", "3": "3159", "17": "-1"}),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_file_loads_with_its_record_count_and_answers(benchmarks_dir: Path, name: str) -> None:
    fmt, count, known = BENCHMARKS[name]
    problems, rejects = load_problem_set(ProblemsConfig(uri=str(benchmarks_dir / name), format=fmt))
    assert rejects == []
    assert len(problems) == count == len({p.problem_id for p in problems})
    answers = {p.problem_id: p.answer for p in problems}
    assert {pid: answers[pid] for pid in known} == known
    assert all(p.problem.strip() and p.answer for p in problems)
    assert {p.source for p in problems} == {name.removesuffix(".jsonl")}


def test_math500_keeps_subject_and_level_and_aime_answers_are_plain_integers(benchmarks_dir: Path) -> None:
    math500, _ = load_problem_set(ProblemsConfig(uri=str(benchmarks_dir / "math500_test.jsonl"), format="math"))
    assert math500[0].metadata == {"subject": "Precalculus", "level": "2"}
    assert sum(p.metadata["subject"] == "Algebra" for p in math500) == 124
    assert {p.metadata["level"] for p in math500} == {"1", "2", "3", "4", "5"}
    for name in ("aime2024_test.jsonl", "aime2025_test.jsonl"):
        aime, _ = load_problem_set(ProblemsConfig(uri=str(benchmarks_dir / name), format="aime"))
        assert all(p.answer == str(int(p.answer)) and 0 <= int(p.answer) <= 999 for p in aime)


def test_reference_solutions_are_paired_with_their_own_problems(benchmarks_dir: Path) -> None:
    pairs, _ = load_with_references(ProblemsConfig(uri=str(benchmarks_dir / "gsm8k_test.jsonl"), format="gsm8k"))
    problem, reference = pairs[611]
    assert problem.answer == "1450000" and reference.endswith(r"\boxed{1,450,000}") and "####" not in reference
    pairs, _ = load_with_references(ProblemsConfig(uri=str(benchmarks_dir / "aime2025_test.jsonl"), format="aime"))
    assert len(pairs) == 30 and all(reference is None for _, reference in pairs)  # AIME 2025 ships no solutions


def _write_jsonl(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_bad_records_of_each_format_name_their_record_and_field(tmp_path: Path) -> None:
    cases = {
        "gsm8k": (
            [
                {"question": "q1", "answer": "2 + 2 = 4\n#### 4"},
                {"question": "q2", "answer": "no marker"},
                {"question": "q3", "answer": "x\n#### four"},
                {"answer": "#### 1"},
            ],
            [(2, "answer", "#### <answer>"), (3, "answer", "number after '####'"), (4, "question", "missing")],
        ),
        "aime": (
            [
                {"id": 1, "problem": "p", "answer": "007"},
                {"id": 2, "problem": "p", "answer": "1000"},
                {"id": 3, "problem": "p", "answer": 12.5},
                {"id": 4, "problem": "p"},
            ],
            [(2, "answer", "0-999"), (3, "answer", "integer"), (4, "answer", "missing")],
        ),
        "amc": (
            [
                {"id": 1, "problem": "p", "answer": 27.0},
                {"id": 2, "problem": "p", "answer": "B"},
                {"id": 3, "problem": "p", "answer": True},
                {"id": 1, "problem": "p", "answer": 3.0},
            ],
            [(2, "answer", "number"), (3, "answer", "number"), (4, "id", "duplicate id '1'")],
        ),
        "math": (
            [
                {"unique_id": "a", "problem": "p", "solution": r"so \boxed{\frac12}."},
                {"unique_id": "b", "problem": "p", "solution": "no box here"},
                {"unique_id": "c", "problem": "p", "solution": r"\boxed{1}", "answer": ""},
                "{not json",
            ],
            [(2, "solution", "no answer field 'answer'"), (3, "answer", "empty"), (4, "<line>", "not valid JSON")],
        ),
    }
    for fmt, (records, expected) in cases.items():
        path = _write_jsonl(tmp_path / f"{fmt}.jsonl", *records)
        problems, rejects = load_problem_set(ProblemsConfig(uri=str(path), format=fmt))
        assert len(problems) == 1, fmt
        assert [(r.record, r.field) for r in rejects] == [(n, f) for n, f, _ in expected], fmt
        for reject, (_, _, needle) in zip(rejects, expected):
            assert needle in reject.reason, (fmt, str(reject))
    assert load_problem_set(ProblemsConfig(uri=str(tmp_path / "aime.jsonl"), format="aime"))[0][0].answer == "7"
    assert load_problem_set(ProblemsConfig(uri=str(tmp_path / "math.jsonl"), format="math"))[0][0].answer == r"\frac12"


def test_field_mapping_with_solution_fallback_and_metadata(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        {"uid": "x1", "q": "What is 2+3?", "final": 5, "work": "2+3=5", "topic": "arith", "hard": 1},
        {"uid": "x2", "q": "Halve 1.", "work": r"It is \boxed{\frac{1}{2}}.", "topic": "frac"},
        {"uid": "x3", "q": "No answer anywhere.", "work": "I give up."},
    )
    cfg = ProblemsConfig(
        uri=str(path),
        id_field="uid",
        problem_field="q",
        answer_field="final",
        solution_field="work",
        metadata_fields=["topic", "hard"],
    )
    problems, rejects = load_problem_set(cfg)
    assert [(p.problem_id, p.answer, p.metadata) for p in problems] == [
        ("x1", "5", {"topic": "arith", "hard": "1"}),
        ("x2", r"\frac{1}{2}", {"topic": "frac"}),
    ]
    assert [str(r) for r in rejects] == ["record 3: field 'work': no answer field 'final' and no \\boxed{} answer"]
    plain, rejects = load_problem_set(cfg.model_copy(update={"solution_field": ""}))
    assert [p.problem_id for p in plain] == ["x1"] and str(rejects[0]) == "record 2: field 'final': missing"


def test_a_builtin_format_refuses_a_field_mapping() -> None:
    with pytest.raises(ConfigError, match="problem_field: format 'gsm8k' has its own field names"):
        parse_config({"problems": {"format": "gsm8k", "problem_field": "q"}})
    with pytest.raises(ConfigError, match="problems.format"):
        parse_config({"problems": {"format": "numina"}})
    cfg = parse_config({"problems": {"format": "math", "uri": "m.jsonl"}, "evaluation": {"uri": "e.jsonl"}})
    assert HealConfig.model_validate(cfg.model_dump(mode="json")).problems.format == "math"  # survives a round trip


RECORDS = [
    {"id": "a", "problem": "1+1?", "answer": "2", "level": 1},
    {"id": "b", "problem": "2+2?", "answer": " 4 ", "level": 2},
    {"id": "c", "problem": "3+3?", "answer": None, "level": 3},
]


def _check_round_trip(uri: str, **keys: str) -> None:
    problems, rejects = load_problem_set(ProblemsConfig(uri=uri, metadata_fields=["level"], **keys))
    assert [(p.problem_id, p.answer, p.metadata["level"]) for p in problems] == [("a", "2", "1"), ("b", "4", "2")]
    assert [(r.record, r.field, r.reason) for r in rejects] == [(3, "answer", "missing")]


def test_jsonl_and_parquet_round_trips(tmp_path: Path) -> None:
    _check_round_trip(str(_write_jsonl(tmp_path / "p.jsonl", *RECORDS)))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "p.parquet")
    _check_round_trip(str(tmp_path / "p.parquet"))
    with pytest.raises(ProblemError, match="only applies to an HF datasets directory"):
        load_problem_set(ProblemsConfig(uri=str(tmp_path / "p.parquet"), split="train"))


def test_hf_datasets_directories(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "single"))
    _check_round_trip(str(tmp_path / "single"))
    with pytest.raises(ProblemError, match="without splits"):
        load_problem_set(ProblemsConfig(uri=str(tmp_path / "single"), split="test"))

    other = Dataset.from_list([{"id": "z", "problem": "9?", "answer": "9", "level": 5}])
    DatasetDict({"test": Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "one-split"))
    _check_round_trip(str(tmp_path / "one-split"))  # the only split needs no name
    DatasetDict({"train": other, "test": Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "two"))
    _check_round_trip(str(tmp_path / "two"), split="test")
    with pytest.raises(ProblemError, match=r"set problems.split to one of its splits \['test', 'train'\]"):
        load_problem_set(ProblemsConfig(uri=str(tmp_path / "two")))
    with pytest.raises(ProblemError, match="split 'dev' is not among"):
        load_problem_set(ProblemsConfig(uri=str(tmp_path / "two"), split="dev"))


def test_hf_directory_in_a_builtin_format(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list([{"question": "q", "answer": "3 * 4 = 12\n#### 1,012"}]).save_to_disk(str(tmp_path / "gsm"))
    problems, _ = load_problem_set(ProblemsConfig(uri=str(tmp_path / "gsm"), format="gsm8k"))
    assert [(p.problem_id, p.problem, p.answer) for p in problems] == [("gsm-000001", "q", "1012")]


def test_metadata_survives_the_problem_shard_schema(tmp_path: Path) -> None:
    problems = [Problem("a", "p", "1", "s", {"subject": "Algebra", "level": "3"}), Problem("b", "q", "2")]
    pq.write_table(to_table(problems_to_records(problems), PROBLEM_SCHEMA), tmp_path / "shard.parquet")
    back = [Problem(**row) for row in pq.read_table(tmp_path / "shard.parquet").to_pylist()]
    assert back == problems


def test_the_pipeline_loader_reads_the_configured_format(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "aime.jsonl", {"id": 1, "problem": "p", "answer": "016"})
    cfg = parse_config({"problems": {"format": "aime"}})
    problems, rejects = load_problems.fn(str(path), cfg.problems, cfg)
    assert [(p.problem_id, p.answer, p.source) for p in problems] == [("1", "16", "aime")] and rejects == []


def test_named_sets_for_decontamination(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = _write_jsonl(tmp_path / "a" / "evalset.jsonl", *RECORDS[:2])
    second = _write_jsonl(tmp_path / "evalset.jsonl", *RECORDS[:1])
    sets = load_named_sets([ProblemsConfig(uri=str(first))])
    assert {name: [p.problem_id for p in items] for name, items in sets.items()} == {"evalset": ["a", "b"]}
    with pytest.raises(ProblemError, match="another set is also named 'evalset'"):
        load_named_sets([ProblemsConfig(uri=str(first)), ProblemsConfig(uri=str(second))])
