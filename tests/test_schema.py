import pyarrow as pa
import pytest

from heal_core.schema import PROBLEM_SCHEMA, SchemaError, conform, to_table


def test_to_table_names_record_and_field():
    with pytest.raises(SchemaError, match="record 1: required field 'answer'"):
        to_table([{"problem_id": "a", "problem": "p", "answer": "1"}, {"problem_id": "b", "problem": "p"}], PROBLEM_SCHEMA)
    with pytest.raises(SchemaError, match=r"record 0: unknown field\(s\) \['colour'\]"):
        to_table([{"problem_id": "a", "problem": "p", "answer": "1", "colour": "red"}], PROBLEM_SCHEMA)
    with pytest.raises(SchemaError, match="record 0: field 'problem'"):
        to_table([{"problem_id": "a", "problem": ["not", "text"], "answer": "1"}], PROBLEM_SCHEMA)


def test_conform_reorders_and_rejects_missing_columns():
    table = pa.table({"answer": ["1"], "source": [None], "problem": ["p"], "problem_id": ["a"],
                      "metadata": pa.array([None], pa.map_(pa.string(), pa.string()))})
    assert conform(table, PROBLEM_SCHEMA).column_names == PROBLEM_SCHEMA.names
    with pytest.raises(SchemaError, match=r"x.parquet: missing column\(s\) \['answer'\]"):
        conform(table.drop_columns(["answer"]), PROBLEM_SCHEMA, source="x.parquet")


def _row(stage: int, kept: bool = False, **values) -> dict:
    from heal_core.schema import new_trajectory

    lineage = {2: {"hint": "h", "leaked_hint": False, "wave": 0},
               3: {"hint": "h", "leaked_hint": False, "wave": 0, "parent_sample_id": "p", "breakpoint_token": 3,
                   "breakpoint_step": 1, "breakpoint_surge": 1.5, "prefix_chars": 10}}.get(stage, {})
    return new_trajectory(sample_id=f"s{stage}", stage=stage, kept=kept, **{**lineage, **values})


def test_each_stage_fills_its_own_lineage_columns_and_no_other():
    from heal_core.schema import check_lineage

    check_lineage([_row(1, kept=True), _row(2), _row(3, kept=True, pure_verdict="keep"), _row(2, judge_verdict="equivalent")])
    with pytest.raises(SchemaError, match=r"record 1 \(s1\): stage I does not fill 'hint'"):
        check_lineage([_row(2), _row(1, hint="h")])
    with pytest.raises(SchemaError, match="stage II does not fill 'parent_sample_id'"):
        check_lineage([_row(2, parent_sample_id="p")])
    with pytest.raises(SchemaError, match="stage III row without 'breakpoint_token'"):
        check_lineage([_row(3, breakpoint_token=None)])
    with pytest.raises(SchemaError, match="stage II row without 'pure_verdict'"):  # kept: PURE must have judged it
        check_lineage([_row(2, kept=True)])
    check_lineage([_row(2, kept=True)], pure_enabled=False)
