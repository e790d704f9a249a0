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
