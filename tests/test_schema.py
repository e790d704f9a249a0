from dataclasses import replace

import pyarrow as pa
import pytest
from rows import trajectory

from heal_core.schema import PROBLEM_SCHEMA, TRAJECTORY_SCHEMA, SchemaError, conform, to_table
from heal_core.trajectory import Trajectory, check_kept_judged, from_table
from heal_core.trajectory import to_table as to_trajectory_table


def test_to_table_names_record_and_field():
    with pytest.raises(SchemaError, match="record 1: required field 'answer'"):
        to_table(
            [{"problem_id": "a", "problem": "p", "answer": "1"}, {"problem_id": "b", "problem": "p"}], PROBLEM_SCHEMA
        )
    with pytest.raises(SchemaError, match=r"record 0: unknown field\(s\) \['colour'\]"):
        to_table([{"problem_id": "a", "problem": "p", "answer": "1", "colour": "red"}], PROBLEM_SCHEMA)
    with pytest.raises(SchemaError, match="record 0: field 'problem'"):
        to_table([{"problem_id": "a", "problem": ["not", "text"], "answer": "1"}], PROBLEM_SCHEMA)


def test_conform_reorders_and_rejects_missing_columns():
    table = pa.table(
        {
            "answer": ["1"],
            "source": [None],
            "problem": ["p"],
            "problem_id": ["a"],
            "metadata": pa.array([None], pa.map_(pa.string(), pa.string())),
        }
    )
    assert conform(table, PROBLEM_SCHEMA).column_names == PROBLEM_SCHEMA.names
    with pytest.raises(SchemaError, match=r"x.parquet: missing column\(s\) \['answer'\]"):
        conform(table.drop_columns(["answer"]), PROBLEM_SCHEMA, source="x.parquet")


def test_each_stage_carries_its_own_lineage_groups_and_no_other():
    base, hinted, repaired = trajectory("s1", 1), trajectory("s2", 2), trajectory("s3", 3, pure="keep")
    with pytest.raises(SchemaError, match=r"s1: stage I does not fill 'hint'"):
        replace(base, hint=hinted.hint)
    with pytest.raises(SchemaError, match="s1: stage I does not fill 'pure_verdict'"):
        replace(base, pure=repaired.pure)
    with pytest.raises(SchemaError, match="stage II does not fill 'parent_sample_id'"):
        replace(hinted, repair=repaired.repair)
    with pytest.raises(SchemaError, match="stage III row without 'parent_sample_id'"):
        replace(repaired, repair=None)
    with pytest.raises(SchemaError, match="stage II row without 'hint'"):
        replace(hinted, hint=None)
    check_kept_judged([replace(base, kept=True), hinted, replace(repaired, kept=True)], pure_enabled=True)
    with pytest.raises(
        SchemaError, match=r"record 1 \(s2\): stage II row without 'pure_verdict'"
    ):  # PURE must judge it
        check_kept_judged([base, replace(hinted, kept=True)], pure_enabled=True)
    check_kept_judged([replace(hinted, kept=True)], pure_enabled=False)


def test_a_row_round_trips_through_its_table_and_a_broken_record_names_record_and_field():
    rows = [
        trajectory("s1", 1, kept=True, token_ids=[5, 6], entropy=[0.5, 0.25]),
        trajectory("s2", 2, pure="keep"),
        trajectory("s3", 3, judge_verdict="equivalent"),
    ]
    table = to_trajectory_table(rows)
    assert table.schema.equals(TRAJECTORY_SCHEMA) and table.column("num_tokens").to_pylist() == [2, 0, 0]
    assert from_table(table) == rows
    records = table.to_pylist()
    with pytest.raises(SchemaError, match=r"record 2 \(s3\): 'breakpoint_token' is null but 'parent_sample_id' is set"):
        Trajectory.from_record({**records[2], "breakpoint_token": None}, 2)
    with pytest.raises(SchemaError, match=r"record 1 \(s2\): 'leaked_hint' is set without 'hint'"):
        Trajectory.from_record({**records[1], "hint": None}, 1)
    with pytest.raises(SchemaError, match=r"record 0 \(s1\): stage I does not fill 'hint'"):
        Trajectory.from_record({**records[0], **{c: records[1][c] for c in ("hint", "leaked_hint", "wave")}}, 0)
