"""heal-pipeline end to end on a reduced config, through a real Prefect API server and the bundled teacher."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from heal_core.config import parse_config
from heal_core.demo import demo_defaults, demo_problems
from heal_core.schema import CURRICULUM_SCHEMA, EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, TRAJECTORY_SCHEMA
from heal_core.stages import Stage
from heal_core.trajectory import from_table

# One line of each kind of hostile record (tests/reliability/test_hostile_input.py fuzzes the parser with them),
# with the field its quarantine entry must name: the flow runs to completion around all of them.
HOSTILE = [
    (json.dumps({"id": "no-answer", "problem": "What is 1 + 1?"}).encode(), "answer"),
    (b"{broken json", "<line>"),
    (b'{"id": "latin1", "problem": "caf\xe9", "answer": 1}', "<line>"),
    (b'{"id": "surrogate", "problem": "\\ud800 + 1", "answer": 1}', "problem"),
    (json.dumps({"id": "huge", "problem": "x" * (1 << 20), "answer": 1}).encode(), "problem"),
    (b'{"id": "nan", "problem": "What is 0 / 0?", "answer": NaN}', "answer"),
    (b"[" * 100_000, "<line>"),
    (json.dumps({"id": "listy", "problem": ["not", "text"], "answer": 1}).encode(), "problem"),
    (b"42", "<record>"),
]


def _write_problems(path: Path, problems, bad: bool) -> None:
    """The problems, with the HOSTILE lines after the first and a repeat of the first at the end when ``bad``."""
    lines = [json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}).encode() for p in problems]
    if bad:
        lines[1:1] = [line for line, _ in HOSTILE]
        lines.append(lines[0])
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    problems_file, eval_file = root / "problems.jsonl", root / "eval.jsonl"
    _write_problems(problems_file, demo_problems("generation")[:6], bad=True)
    _write_problems(eval_file, demo_problems("eval")[:3], bad=False)
    cfg = parse_config(
        demo_defaults(),
        [
            f"problems.uri={problems_file}",
            f"evaluation.uri={eval_file}",
            "evaluation.samples=2",
            f"storage.uri={root / 'store'}",
            "orchestration.shard_size=3",
            "pace.epochs=1",
            "pace.batch_size=4",
            "pace.seeds=[0]",
            "pace.variants=[heal,rs_sft]",
        ],
    )
    return cfg


GOLDEN = Path(__file__).parent / "golden" / "reduced_run.json"


def _fingerprint(run: Path) -> dict[str, str]:
    """sha256 of every dataset's and evaluation table's rows as canonical JSON, without the columns that name
    this machine's places (the model paths, and the config hash, which covers the storage path). Parquet's
    own bytes also carry the version of pyarrow that wrote them. Floats are rounded to 3 decimals: the teacher's
    scores differ in their last bits between CPUs (a PURE ratio of 5e-05 is a ratio of two float32 NLLs), seen
    as a different hash of every PURE-judged dataset on a second box, where the datasets without PURE ratios matched."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 3)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return [rounded(v) for v in value] if isinstance(value, list) else value

    def canonical(table) -> bytes:
        rows = table.drop_columns([c for c in ("config_hash", "model_path") if c in table.column_names]).to_pylist()
        text = json.dumps(rounded(rows), sort_keys=True, default=str)
        return text.replace(str(Path(__file__).parents[1]), "<repo>").encode()

    files = [
        *sorted((run / "curriculum").glob("*.parquet")),
        run / "eval" / "results.parquet",
        run / "eval" / "summary.parquet",
    ]
    return {str(f.relative_to(run)): hashlib.sha256(canonical(pq.read_table(f))).hexdigest() for f in files}


def _mtimes(directory: Path) -> dict[str, int]:
    """Modification times of what a step made, less the model cards: the report step rewrites them, as report.md."""
    return {
        str(p.relative_to(directory)): p.stat().st_mtime_ns
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }


def test_pipeline_end_to_end_and_resume(prefect_api, reduced, tmp_path, monkeypatch):
    from flows.pipeline import heal_pipeline

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    summary = heal_pipeline(reduced.model_dump(mode="json"), "e2e")
    run = Path(reduced.storage.uri) / "runs" / "e2e"

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["shards"] == {"0": "done", "1": "done"}
    assert all(v == "done" for v in manifest["steps"].values()) and "report" in manifest["steps"]
    quarantine = json.loads((run / "quarantine.json").read_text())
    hostile = [(2 + i, field) for i, (_, field) in enumerate(HOSTILE)]
    assert [(q["record"], q["field"]) for q in quarantine] == [*hostile, (2 + len(HOSTILE) + 5, "id")]

    samples = pq.read_table(run / "samples" / "shard-00000.parquet")
    assert samples.schema.equals(TRAJECTORY_SCHEMA, check_metadata=False)
    rows = [r for s in (0, 1) for r in from_table(pq.read_table(run / "samples" / f"shard-{s:05d}.parquet"))]
    assert {r.stage for r in rows} >= {Stage.BASE}
    assert len({r.sample_id for r in rows}) == len(rows)
    assert all(r.pure is not None for r in rows if r.stage > Stage.BASE and r.kept)  # the hint, repair: by type

    for name in ("stage1", "stage2", "stage3", "stage2_no_pure", "stage3_no_pure", "mixed", "rs_sft", "keep_all"):
        table = pq.read_table(run / "curriculum" / f"{name}.parquet")
        assert table.schema.equals(CURRICULUM_SCHEMA, check_metadata=False)
    sizes = [pq.read_metadata(run / "curriculum" / f"stage{k}.parquet").num_rows for k in (1, 2, 3)]
    assert sizes[0] > 0 and sizes[0] <= sizes[1] <= sizes[2]
    assert summary["pace_examples"]["stage3"] == sizes[2]

    for model in ("heal/seed-0/stage1", "heal/seed-0/stage2", "heal/seed-0/stage3", "rs_sft/seed-0/rs_sft"):
        assert (run / "models" / model / "heal_stage.json").exists()
    for variant in ("heal", "rs_sft"):
        assert json.loads((run / "models" / variant / "seed-0" / "variant.json").read_text())["skip_reason"] is None
    evaluation = pq.read_table(run / "eval" / "results.parquet")
    assert evaluation.schema.equals(EVALUATION_SCHEMA, check_metadata=False)
    assert set(zip(evaluation.column("model").to_pylist(), evaluation.column("train_seed").to_pylist())) == {
        ("teacher", None),
        ("student_base", None),
        ("heal", 0),
        ("rs_sft", 0),
    }
    assert set(evaluation.column("benchmark").to_pylist()) == {"held_out"}
    assert pq.read_table(run / "eval" / "summary.parquet").schema.equals(
        EVALUATION_SUMMARY_SCHEMA, check_metadata=False
    )
    report = (run / "report.md").read_text()
    assert report.startswith("# HEAL run e2e")
    assert "| held_out | all | 3 |" in report.split("## Evaluation per benchmark", 1)[1]
    for plot in ("pass_rate_histogram", "pure_ratio", "training_curves"):
        assert (run / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["problems"] == 6 and 0 <= summary["problems_rescued"] <= summary["teacher_ceiling"] <= 6
    assert set(summary["held_out_pass_at_1"]) == {"teacher", "student_base", "heal", "rs_sft"}
    assert f"| teacher ceiling (0 correct) | {summary['teacher_ceiling']} (" in report  # shown with its label
    variants = summary["variants"]
    heal, rs_sft = variants["by_variant"]["heal"], variants["by_variant"]["rs_sft"]
    assert heal["steps"] == rs_sft["steps"] == variants["step_budget"] > 0  # one budget for every variant
    assert heal["seeds"] == rs_sft["seeds"] == [0]
    assert heal["pass_at_1_held_out"]["estimate"] == summary["held_out_pass_at_1"]["heal"]
    assert json.loads((run / "summary.json").read_text()) == summary
    assert f"Every variant: {variants['step_budget']} optimizer steps" in report.split("## Variants", 1)[1]
    truth = summary["ground_truth"]  # the demo task has a step checker: the run grades its components
    assert {"breakpoint_hit_rate", "breakpoint_hit_rate_random", "pure_auroc"} <= set(truth)
    assert {"heal", "stage2_no_pure"} <= set(truth["wrong_step_share"])
    assert "| Stage II's new examples (no PURE) |" in report
    gear = summary["gear_samples"]  # what GEAR did, from drawn to what the curriculum gained
    assert gear["kept"] <= gear["verified"] <= gear["generated"] and 0 <= gear["new_examples"] <= gear["kept"]
    assert f"| GEAR's new examples in PACE stage3 (after deduplication) | {gear['new_examples']} |" in report
    assert "## Ground truth (step checker)" in report

    # Behaviour is pinned: the datasets and the evaluation are the ones this config has always produced.
    # After an intended change of behaviour, HEAL_UPDATE_GOLDEN=1 rewrites the pin (review its diff).
    fingerprint = _fingerprint(run)
    if os.environ.get("HEAL_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
    assert fingerprint == json.loads(GOLDEN.read_text())
    _export_loads_as_it_is(run, tmp_path / "export", summary)

    # Resume after an interrupted stage III: nothing finished is redone.
    heal = run / "models" / "heal" / "seed-0"
    (heal / "stage3" / "heal_stage.json").unlink()
    (heal / "variant.json").unlink()
    for marker in (tmp_path / "cache").rglob("stage3/heal_stage.json"):
        marker.unlink()
    finished = (heal / "stage1", run / "models" / "rs_sft")
    before = _mtimes(run / "samples") | {f"m/{k}": v for d in finished for k, v in _mtimes(d).items()}
    heal_pipeline(reduced.model_dump(mode="json"), "e2e")
    after = _mtimes(run / "samples") | {f"m/{k}": v for d in finished for k, v in _mtimes(d).items()}
    assert before == after
    assert (heal / "stage3" / "heal_stage.json").exists() and (heal / "variant.json").exists()


def _export_loads_as_it_is(run: Path, dest: Path, summary: dict) -> None:
    """``heal export``: datasets and transformers load the folder as it is, and the cards hold the run's counts."""
    import datasets
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["export", "e2e", str(dest), "--storage", str(run.parent.parent)])
    assert result.exit_code == 0, result.output
    loaded = datasets.load_dataset("parquet", data_dir=str(dest / "dataset"))
    sizes = {
        name: pq.read_metadata(run / "curriculum" / f"{name}.parquet").num_rows
        for name in ("stage1", "stage2", "stage3", "stage2_no_pure", "stage3_no_pure", "mixed", "rs_sft", "keep_all")
    }
    assert {name: split.num_rows for name, split in loaded.items()} == sizes
    assert loaded["stage3"][0]["completion"][0]["role"] == "assistant"
    card = (dest / "dataset" / "README.md").read_text()
    assert card.startswith("---\n") and all(f"| {name} | {n} |" in card for name, n in sizes.items())
    assert f"rejected by PURE: {summary['pure_rejections']}" in card
    dataset_card = DatasetCard.load(dest / "dataset" / "README.md")  # parses as the Hub's library reads it
    assert [f["split"] for f in dataset_card.data.configs[0]["data_files"]] == list(sizes)
    model = AutoModelForCausalLM.from_pretrained(dest / "model")
    assert model.num_parameters() > 0 and AutoTokenizer.from_pretrained(dest / "model").chat_template
    assert not (dest / "model" / "checkpoints").exists()
    heal = json.loads((run / "models" / "heal" / "seed-0" / "variant.json").read_text())
    model_card = (dest / "model" / "README.md").read_text()
    assert all(f"| {s['name']} | {s['examples']} | {s['steps']} |" in model_card for s in heal["stages"])
    results = ModelCard.load(dest / "model" / "README.md").data.eval_results  # its model-index
    held_out = pq.read_table(run / "eval" / "summary.parquet").to_pylist()
    mine = next(r for r in held_out if r["model"] == "heal" and r["benchmark"] == "held_out" and not r["group_field"])
    assert {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in results} == {
        ("held_out", None, "pass@1"): round(mine["pass_at_1"], 4),
        ("held_out", None, f"pass@{mine['samples']}"): round(mine["pass_at_k"], 4),
        ("held_out", "hard", "pass@1"): round(
            summary["variants"]["by_variant"]["heal"]["pass_at_1_hard"]["estimate"], 4
        ),
    }
    again = CliRunner().invoke(app, ["export", "e2e", str(dest), "--storage", str(run.parent.parent)])
    assert again.exit_code == 2 and "exists: export writes a new folder" in again.output


def test_missing_model_path_fails_before_any_work(prefect_api, reduced, tmp_path):
    from flows.pipeline import heal_pipeline

    cfg = parse_config(
        reduced.model_dump(mode="json"),
        [f"teacher.model={tmp_path / 'no-such-model'}", f"storage.uri={tmp_path / 'store'}"],
    )
    with pytest.raises(FileNotFoundError, match="teacher model path .*no-such-model does not exist"):
        heal_pipeline(cfg.model_dump(mode="json"), "missing")
    assert not os.path.exists(tmp_path / "store")


@pytest.mark.slow
def test_two_resumes_at_once_one_works_and_the_other_names_the_holder(reduced, tmp_path):
    """Two ``heal resume``s of one run, each with a Prefect server of its own (as on two laptops, or a resume
    beside a UI retry): the second starts while the first holds the run's lease, exits 2 naming it, and the
    first's result is the clean run's (the golden pin)."""
    import subprocess
    import sys
    import time

    from heal_core.run import Run

    Run.of(reduced, "twice").pin(reduced)
    env = {**os.environ, "HEAL_CACHE_DIR": str(tmp_path / "cache")}
    resume = [
        sys.executable,
        "-c",
        "from flows.cli import app; app()",
        "resume",
        "twice",
        "--storage",
        reduced.storage.uri,
    ]
    first = subprocess.Popen(resume, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    leases = Path(reduced.storage.uri) / "runs" / "twice" / "leases"
    deadline = time.monotonic() + 300
    while not list(leases.glob("lease-*.json")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.2)
    second = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    output = " ".join((second.stdout + second.stderr).split())
    assert second.returncode == 2, output
    assert re.search(r"is being worked on by \S+ pid \d+ \(flow run \S+ [0-9a-f-]{36}\)", output), output
    assert first.communicate(timeout=900)[0] and first.returncode == 0
    assert _fingerprint(Path(reduced.storage.uri) / "runs" / "twice") == json.loads(GOLDEN.read_text())
