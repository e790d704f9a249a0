"""heal-eval by (model, set shard): tiny models, a real Prefect API server.

What is checked: the sets cut into shards give the rows of an uncut evaluation, in the same order, one part per
(model, shard) in the run; the results are assembled from the parts; one deployment-run's worth of units evaluates
only those and assembles nothing; a model that cannot be loaded fails the evaluation naming it after the others are
evaluated, and once it is fixed only its units are evaluated again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from heal_core import storage
from heal_core.config import HealConfig, parse_config
from heal_core.evaluate import EvalUnit, evaluation_units
from heal_core.run import Run

HELD_OUT = 5


def _config(tmp_path: Path, tiny_model_dirs: dict[str, Path], store: str, shard_size: int) -> HealConfig:
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(
            json.dumps({"id": f"h{i}", "problem": f"What is {i} + 7?", "answer": str(i + 7)}) + "\n"
            for i in range(HELD_OUT)
        )
    )
    return parse_config(
        {
            "teacher": {"model": str(tiny_model_dirs["qwen2"]), "sampling": {"max_new_tokens": 8}},
            "student": {"model": str(tiny_model_dirs["llama"])},
            "evaluation": {"uri": str(held_out), "samples": 2, "shard_size": shard_size},
            "storage": {"uri": str(tmp_path / store)},
        }
    )


def _parts(layout: Run) -> dict[str, int]:
    root = Path(layout.root) / "eval" / "parts"
    return {p.stem: p.stat().st_mtime_ns for p in sorted(root.glob("*.parquet"))}


def test_units_cover_each_set_in_order():
    sets = {"held_out": list("abcde"), "math": list("xy"), "empty": []}
    units = evaluation_units([("teacher", None), ("heal", 1)], sets, 2)
    assert [(u.model, u.benchmark, u.start, u.stop) for u in units[:4]] == [
        ("teacher", "held_out", 0, 2),
        ("teacher", "held_out", 2, 4),
        ("teacher", "held_out", 4, 5),
        ("teacher", "math", 0, 2),
    ]
    assert units[4].name == "heal-seed-1-held_out-0-2"
    assert [(u.benchmark, u.start, u.stop) for u in evaluation_units([("teacher", None)], sets, 0)] == [
        ("held_out", 0, 5),
        ("math", 0, 2),
    ]


def test_shards_give_an_uncut_evaluation_s_rows_and_a_broken_model_fails_alone(
    prefect_api, tiny_model_dirs, tmp_path, monkeypatch
):
    from flows.evaluate import EvaluationFailed, heal_eval
    from tasks.training import TrainedModel

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    whole_cfg = _config(tmp_path, tiny_model_dirs, "whole", 0)
    whole = Run.of(whole_cfg, "whole")
    students = [TrainedModel("heal", 0, str(tiny_model_dirs["qwen2"])), TrainedModel("rs_sft", 0, str(tmp_path / "rs"))]
    (tmp_path / "rs").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "rs" / name).write_bytes((tiny_model_dirs["llama"] / name).read_bytes())
    (tmp_path / "rs" / "model.safetensors").write_bytes(b"not a safetensors file")  # weights broken on disk

    with pytest.raises(EvaluationFailed, match=r"1 model\(s\) not evaluated[\s\S]*rs_sft seed 0: .*cannot be loaded"):
        heal_eval(whole.root, whole_cfg, students)
    assert sorted(_parts(whole)) == ["heal-seed-0-held_out-0-5", "student_base-held_out-0-5", "teacher-held_out-0-5"]
    assert not storage.exists(whole.evaluation)  # nothing assembled while a model is missing

    (tmp_path / "rs" / "model.safetensors").write_bytes((tiny_model_dirs["llama"] / "model.safetensors").read_bytes())
    before = _parts(whole)
    assert heal_eval(whole.root, whole_cfg, students) == 4 * HELD_OUT
    after = _parts(whole)
    assert {name for name in after if after[name] != before.get(name)} == {"rs_sft-seed-0-held_out-0-5"}
    uncut = pq.read_table(whole.evaluation).to_pylist()

    cut_cfg = _config(tmp_path, tiny_model_dirs, "cut", 2)
    cut = Run.of(cut_cfg, "cut")
    one = EvalUnit("heal", 0, "held_out", 2, 4)  # what one heal-eval deployment run is given
    assert heal_eval(cut.root, cut_cfg, students[:1], units=[one]) == 2
    assert list(_parts(cut)) == [one.name] and not storage.exists(cut.evaluation)
    assert heal_eval(cut.root, cut_cfg, students) == 4 * HELD_OUT
    assert len(_parts(cut)) == 4 * 3  # four models, shards of 2 + 2 + 1 problems
    rows = pq.read_table(cut.evaluation).to_pylist()
    assert [(r["model"], r["problem_id"]) for r in rows] == [(r["model"], r["problem_id"]) for r in uncut]
    assert rows == uncut  # a problem's samples are seeded by its id: the cut changes no result


def test_openai_backend_serves_each_model_and_samples_as_transformers_does(prefect_api, tmp_path, monkeypatch):
    """``evaluation.backend: openai`` without ``vllm_python``: heal serves each model (teacher, student base, a
    trained student: here the bundled demo models, which solve some of the demo's problems) with its own server on
    transformers for the length of its evaluation and samples it through the OpenAI backend; the rows say so, no
    server outlives its evaluation, and every problem's draws are the in-process backend's (both draw choice j of a
    problem with its seed + j), problem by problem."""
    import psutil
    from rows import problems_file

    from flows.evaluate import heal_eval
    from heal_core.backends.served import SERVED_NAME
    from heal_core.demo import bundled_model, demo_defaults
    from tasks.training import TrainedModel

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    students = [TrainedModel("heal", 0, str(bundled_model("teacher")))]  # a student as good as the teacher
    held_out = problems_file(tmp_path / "eval.jsonl", "eval", 8)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rows = {}
    for backend in ("hf", "openai"):
        cfg = parse_config(
            demo_defaults(),
            [
                f"evaluation.uri={held_out}",
                "evaluation.samples=4",
                f"storage.uri={tmp_path / backend}",
                f"evaluation.backend={backend}",
            ],
        )
        layout = Run.of(cfg, backend)
        assert heal_eval(layout.root, cfg, students) == 3 * 8
        rows[backend] = pq.read_table(layout.evaluation).to_pylist()
    assert {r["backend"] for r in rows["openai"]} == {"openai"} and {r["backend"] for r in rows["hf"]} == {"hf"}
    served = [
        p.cmdline()
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and {"serve-teacher", SERVED_NAME} & set(p.cmdline())
    ]
    assert not served, served  # every server an evaluation started is stopped

    def draws(table: list[dict]) -> list[tuple]:
        return [(r["model"], r["problem_id"], r["samples"], r["correct"]) for r in table]

    assert sum(r["correct"] for r in rows["hf"]) > 0  # something to compare: the demo models solve some
    assert draws(rows["openai"]) == draws(rows["hf"])


def test_the_evaluation_store_keys_by_backend_and_keeps_heal_0_1_keys_at_the_default(tmp_path):
    from heal_core import fingerprints, stores
    from heal_core.demo import demo_defaults, demo_problems
    from heal_core.evaluate import stored_evaluation

    problems = demo_problems("eval")[:2]

    def key(label: str, *overrides: str) -> str:
        cfg = parse_config(demo_defaults(), [f"storage.uri={tmp_path}", *overrides])
        return stored_evaluation(cfg, "model-id", label, None, "held_out", problems)

    students = {b: key("student_base", f"evaluation.backend={b}") for b in ("hf", "vllm", "openai")}
    served_by_vllm = key("student_base", "evaluation.backend=openai", "evaluation.vllm_python=/envs/vllm/bin/python")
    assert len({*students.values(), served_by_vllm}) == 4
    assert key("student_base") == students["hf"] and key("teacher") == key("teacher", "evaluation.backend=hf")

    cfg = parse_config(demo_defaults(), [f"storage.uri={tmp_path}"])  # the key as heal 0.1 computed it
    old = {
        "evaluation": fingerprints.evaluation(cfg),
        "model": "model-id",
        "label": "student_base",
        "train_seed": None,
        "backend": ("hf", cfg.student.dtype),
        "reasoning_format": cfg.student.reasoning_format,
        "set": "held_out",
        "problems": [(p.problem_id, p.problem, p.answer, sorted(p.metadata.items())) for p in problems],
    }
    assert key("student_base") == stores.evaluation_object(cfg, fingerprints.digest(old))


def test_one_vllm_engine_per_process_is_enforced_before_any_model_loads(tmp_path):
    from flows.evaluate import check_one_engine
    from heal_core.demo import demo_defaults

    cfg = parse_config(demo_defaults(), [f"storage.uri={tmp_path}", "evaluation.backend=vllm"])
    check_one_engine(cfg, {("heal", 0)})  # one model: one engine, as a heal-eval deployment run has
    with pytest.raises(ValueError, match=r"would load 2 \(heal seed 0, heal seed 1\).*deployment mode"):
        check_one_engine(cfg, {("heal", 0), ("heal", 1)})
    check_one_engine(parse_config(demo_defaults(), [f"storage.uri={tmp_path}"]), {("heal", 0), ("heal", 1)})
