"""heal-eval on the real benchmark files: tiny random models, 20 problems of each set, through a real Prefect API.

Accuracy of a random model is near zero; what is tested is that every model meets every problem of every set,
and that the result tables, their MATH-500 groups, the recorded sampling settings and the artifact come out.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from heal_core.config import parse_config
from heal_core.run import Run
from heal_core.schema import EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA

BENCHMARKS = {
    "math500_test": "math",
    "gsm8k_test": "gsm8k",
    "aime2024_test": "aime",
    "aime2025_test": "aime",
    "amc2023_test": "amc",
}
MODELS = ("teacher", "student_base", "heal", "rs_sft")
SETS = ("held_out", *BENCHMARKS)


def test_heal_eval_on_every_benchmark_writes_results_summary_and_artifact(
    benchmarks_dir: Path, prefect_api, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:  # benchmarks_dir first: without the files the test skips before a server starts
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.evaluate import heal_eval
    from tasks.training import TrainedModel

    llama, qwen2 = str(tiny_model_dirs["llama"]), str(tiny_model_dirs["qwen2"])
    cfg = parse_config(
        {
            "teacher": {"model": llama, "sampling": {"max_new_tokens": 16}},
            "student": {"model": qwen2},
            "evaluation": {
                "samples": 2,
                "max_problems": 20,
                "benchmarks": [
                    {"uri": str(benchmarks_dir / f"{name}.jsonl"), "format": fmt} for name, fmt in BENCHMARKS.items()
                ],
            },
            "storage": {"uri": str(tmp_path / "store")},
        }
    )
    layout = Run.of(cfg, "bench")
    # The tiny models stand in for trained students: heal-eval takes any model reference for them.
    trained = [TrainedModel("heal", 0, qwen2), TrainedModel("rs_sft", 0, llama)]
    state = heal_eval(layout.root, cfg, trained, return_state=True)
    assert state.is_completed(), state

    results = pq.read_table(layout.evaluation)
    assert results.schema.equals(EVALUATION_SCHEMA, check_metadata=False)
    rows = results.to_pylist()
    assert state.result() == len(rows) == len(MODELS) * len(SETS) * 20
    assert Counter((r["model"], r["benchmark"]) for r in rows) == {(m, s): 20 for m in MODELS for s in SETS}
    assert len({(r["model"], r["benchmark"], r["problem_id"]) for r in rows}) == len(rows)
    assert {(r["model"], r["train_seed"]) for r in rows} == {
        ("teacher", None),
        ("student_base", None),
        ("heal", 0),
        ("rs_sft", 0),
    }
    assert all(
        r["samples"] == 2 and 0 <= r["correct"] <= 2 and 0.0 <= r["pass_at_1"] <= r["pass_at_k"] <= 1.0 for r in rows
    )
    settings = {(r["temperature"], r["top_p"], r["top_k"], r["max_new_tokens"], r["seed"]) for r in rows}
    assert settings == {(0.6, 0.95, 0, 16, 0)}  # evaluation.temperature and top_p, the teacher's max_new_tokens
    assert all({"subject", "level"} <= dict(r["metadata"]).keys() for r in rows if r["benchmark"] == "math500_test")

    summary_table = pq.read_table(layout.evaluation_summary)
    assert summary_table.schema.equals(EVALUATION_SUMMARY_SCHEMA, check_metadata=False)
    summary = summary_table.to_pylist()
    whole = {(r["model"], r["benchmark"]): r for r in summary if r["group_field"] is None}
    assert set(whole) == {(m, s) for m in MODELS for s in SETS} and all(r["problems"] == 20 for r in whole.values())
    assert all(
        r["samples"] == 2
        and 0.0 <= r["pass_at_1"] <= r["pass_at_k"] <= 1.0
        and (r["temperature"], r["top_p"], r["top_k"], r["max_new_tokens"], r["seed"]) == (0.6, 0.95, 0, 16, 0)
        for r in summary
    )
    for model in MODELS:
        groups = [r for r in summary if r["model"] == model and r["group_field"] is not None]
        # the demo's held-out problems carry their kind (easy, hard), MATH-500's their subject and level
        assert {(r["benchmark"], r["group_field"]) for r in groups} == {
            ("held_out", "kind"),
            ("math500_test", "subject"),
            ("math500_test", "level"),
        }
        for field in ("subject", "level"):
            assert sum(r["problems"] for r in groups if r["group_field"] == field) == 20
        assert {r["group_value"] for r in groups if r["group_field"] == "level"} <= {"1", "2", "3", "4", "5"}

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["heal-eval-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert [a.type for a in artifacts] == ["table"]
    data = json.loads(artifacts[0].data)  # a table artifact's data is its rows as a JSON string
    assert len(data) == len(summary)
    assert {(r["model"], r["benchmark"]) for r in data if r["group_field"] is None} == set(whole)
