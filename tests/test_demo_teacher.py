import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from heal_core.demo import teacher as T

torch.set_num_threads(2)


def _texts(name: T.Split) -> list[str]:
    return [w.problem.problem for w in T.split(name)]


def test_splits_are_deterministic_and_disjoint():
    splits = {name: _texts(name) for name in T.SPLIT_SEEDS}
    assert splits == {name: _texts(name) for name in T.SPLIT_SEEDS}
    for a, b in [("train", "generation"), ("train", "eval"), ("generation", "eval")]:
        assert not set(splits[a]) & set(splits[b]), (a, b)
    steps = {w.steps for w in T.split("generation")}
    assert steps == set(range(T.GENERATION_STEPS[0], T.GENERATION_STEPS[1] + 1))
    assert [p.problem for p in T.generation_problems()] == splits["generation"]


def test_solutions_never_trip_the_hint_leakage_filter():
    patterns = T.demo_config().hints.leakage_patterns
    for w in T.split("train", 700):
        assert w.solution.endswith(f"\\boxed{{{w.problem.answer}}}.")
        assert not any(re.search(p, w.solution, re.IGNORECASE) for p in patterns)


def test_training_runs_and_saves_a_loadable_model(tmp_path):
    teacher = T.train_teacher(tmp_path / "teacher", steps=2, examples=24, hidden_size=32, layers=1, batch_size=8)
    student = T.train_student_base(tmp_path / "student", teacher, steps=2, examples=24, hidden_size=32, layers=1,
                                   batch_size=8)
    for path in (teacher, student):
        assert {p.name for p in path.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
        assert not any(p.name in {"_trainer", "training_args.bin"} for p in path.iterdir())
        AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(student)
    assert len(tokenizer.encode(" 9183", add_special_tokens=False)) == 5  # one token per digit, after the space


@pytest.fixture(scope="module")
def committed_teacher():
    path = T.MODELS_DIR / "teacher"
    if not (path / "model.safetensors").exists():
        pytest.fail(f"the bundled teacher is missing; build it with python -m heal_core.demo.teacher ({path})")
    return path


def test_committed_teacher_solves_easy_problems_and_hints_help_on_hard_ones(committed_teacher):
    problems = T.split("generation")
    easy = [w for w in problems if w.steps == T.GENERATION_STEPS[0]][:4]
    hard = [w for w in problems if w.steps == T.GENERATION_STEPS[1]][:4]
    assert sum(T.pass_rates(committed_teacher, easy, hinted=False)) > 0
    assert sum(T.pass_rates(committed_teacher, hard, hinted=True)) >= sum(
        T.pass_rates(committed_teacher, hard, hinted=False)
    )


def test_heal_demo_train_teacher_command(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["demo", "train-teacher", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "teacher" / "model.safetensors").exists() and (tmp_path / "student" / "model.safetensors").exists()
    assert "| all | 2 |" in result.output  # the calibration table of the quick run
