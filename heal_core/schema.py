"""The Parquet schemas of heal's tables, in one place.

Every table heal writes is built through ``to_table`` and every table it reads goes through ``conform``,
so a column renamed in one stage and not the next fails loudly at the boundary instead of turning into
silent nulls three stages later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

PROBLEM_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("problem", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),  # e.g. subject, level: grouped evaluation
    ]
)

# One row per teacher trajectory, from any stage: the flat record of ``heal_core.trajectory.Trajectory``, whose
# lineage groups say which stage fills which column. Columns that do not apply to a stage are null (never a
# sentinel value).
TRAJECTORY_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # deterministic: stable across retries
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),  # the unaided user prompt: what the student trains on
        pa.field("gold_answer", pa.string(), nullable=False),
        pa.field("stage", pa.int8(), nullable=False),  # 1 base, 2 global hint, 3 GEAR repair
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # the whole assistant answer (GEAR: prefix + continuation)
        pa.field("token_ids", pa.list_(pa.int32())),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("entropy", pa.list_(pa.float32())),  # per generated token, at the sampling temperature
        pa.field("finish_reason", pa.string(), nullable=False),  # "stop" | "length"
        pa.field("verified", pa.bool_(), nullable=False),
        pa.field("verify_status", pa.string(), nullable=False),  # see heal_core.verify.Status
        pa.field("extracted_answer", pa.string()),
        pa.field("judge_verdict", pa.string()),  # equivalent | different | unclear; null when not judged
        pa.field("hint", pa.string()),  # the hinted user message the teacher saw (stages 2, 3)
        pa.field("leaked_hint", pa.bool_()),
        pa.field("wave", pa.int32()),  # stages 2, 3: the wave that drew the row (0 first; see heal_core.shard)
        pa.field("parent_sample_id", pa.string()),  # GEAR: the failed trajectory that was repaired
        pa.field("breakpoint_token", pa.int32()),
        pa.field("breakpoint_step", pa.int32()),
        pa.field("breakpoint_surge", pa.float32()),
        pa.field("prefix_chars", pa.int32()),  # GEAR: characters of the parent kept before the continuation
        pa.field("pure_answer_nll", pa.list_(pa.float32())),  # U_0..U_{K-1}
        pa.field("pure_step_ppl", pa.list_(pa.float32())),  # P_1..P_K
        pa.field("pure_ratio", pa.float32()),  # R
        pa.field("pure_verdict", pa.string()),  # keep | reject_ratio | reject_leap | skipped
        pa.field("pure_reason", pa.string()),
        pa.field("kept", pa.bool_(), nullable=False),  # enters a PACE stage
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),  # the row's own sampling seed (heal_core/seeds.py)
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

_MESSAGES = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))

# One row per SFT example in TRL's conversational prompt-completion format, with the lineage of the
# trajectory it came from (so any training example can be traced back to its teacher sample and verdicts).
CURRICULUM_SCHEMA = pa.schema(
    [
        pa.field("prompt", _MESSAGES, nullable=False),
        pa.field("completion", _MESSAGES, nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("stage", pa.int8(), nullable=False),
        pa.field("verify_status", pa.string(), nullable=False),
        pa.field("judge_verdict", pa.string()),
        pa.field("parent_sample_id", pa.string()),
        pa.field("breakpoint_token", pa.int32()),
        pa.field("pure_verdict", pa.string()),
        pa.field("pure_ratio", pa.float32()),
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

# The sampling settings an evaluation drew its samples with, recorded on every evaluation row: a pass@1 is
# only comparable to another one drawn the same way.
_SAMPLING_FIELDS = [
    pa.field("temperature", pa.float64(), nullable=False),
    pa.field("top_p", pa.float64(), nullable=False),
    pa.field("top_k", pa.int32(), nullable=False),
    pa.field("max_new_tokens", pa.int32(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
]
SAMPLING_COLUMNS = tuple(f.name for f in _SAMPLING_FIELDS)  # SamplingConfig's fields of the same names

# One row per (model, training seed, benchmark, problem) of an evaluation; pass@k has k = samples.
EVALUATION_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),  # label: teacher | student_base | a variant (heal, rs_sft, ...)
        pa.field("train_seed", pa.int32()),  # the variant's training seed; null for teacher and student base
        pa.field("model_path", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),  # what sampled it: hf | vllm | openai (evaluation.backend)
        pa.field("benchmark", pa.string(), nullable=False),  # held_out, or a benchmark's set name (math500_test)
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),  # the problem's, e.g. MATH-500 subject and level
        pa.field("samples", pa.int32(), nullable=False),
        pa.field("correct", pa.int32(), nullable=False),
        pa.field("pass_at_1", pa.float64(), nullable=False),
        pa.field("pass_at_k", pa.float64(), nullable=False),
        *_SAMPLING_FIELDS,
    ]
)

# One row per (model, benchmark, group): the whole benchmark (group_field and group_value null) and each value
# of each metadata field its problems carry (MATH-500: subject = Algebra, ..., level = 1..5).
EVALUATION_SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("benchmark", pa.string(), nullable=False),
        pa.field("group_field", pa.string()),
        pa.field("group_value", pa.string()),
        pa.field("problems", pa.int32(), nullable=False),
        pa.field("samples", pa.int32(), nullable=False),  # k of pass@k
        pa.field("pass_at_1", pa.float64(), nullable=False),  # mean over problems of the per-problem pass@1
        pa.field("pass_at_k", pa.float64(), nullable=False),
        *_SAMPLING_FIELDS,
    ]
)


class SchemaError(ValueError):
    """A table or record that does not match heal's schema; the message names the field."""


def to_table(records: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from dict records, naming the record and field that do not fit."""
    rows = list(records)
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise SchemaError(f"record {i}: unknown field(s) {sorted(extra)}")
        for field in schema:
            if not field.nullable and row.get(field.name) is None:
                raise SchemaError(f"record {i}: required field '{field.name}' is missing or null")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        for i, row in enumerate(rows):
            for field in schema:
                try:
                    pa.array([row.get(field.name)], type=field.type)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    raise SchemaError(
                        f"record {i}: field '{field.name}' = {row.get(field.name)!r:.80} is not {field.type}"
                    ) from None
        raise SchemaError(str(exc)) from exc


def conform(table: pa.Table, schema: pa.Schema, source: str = "table") -> pa.Table:
    """Check a table read from storage against ``schema`` and return it in the schema's column order."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"{source}: columns do not match the schema: {exc}") from None
