import re
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from heal_core.demo import teacher as T
from heal_core.demo.arithmetic import STEPS, first_wrong_step

torch.set_num_threads(2)


def _texts(name: T.Split) -> list[str]:
    return [w.problem.problem for w in T.split(name)]


@pytest.mark.slow
def test_splits_are_deterministic_and_disjoint():
    splits = {name: _texts(name) for name in T.SPLIT_SEEDS}
    assert splits == {name: _texts(name) for name in T.SPLIT_SEEDS}
    for a, b in [("train", "generation"), ("train", "eval"), ("generation", "eval")]:
        assert not set(splits[a]) & set(splits[b]), (a, b)
    for name in ("generation", "eval"):
        problems = T.split(name)
        assert {w.steps for w in problems} == set(range(STEPS[0], STEPS[1] + 1))
        assert sum(w.hard for w in problems) == round(T.HARD_SHARE[name] * len(problems))


def test_the_teacher_is_trained_on_the_behaviour_the_demo_needs():
    """Targets drawn as the design says: unaided, the unseen step is rarely right and every slip is at that step;
    hinted, mostly right, and every slip is a shortcut that boxes the gold answer anyway; easy problems always
    right."""
    cfg = T.demo_config()
    problems = T.split("train", 4000)
    kinds: Counter[tuple[bool, bool, str]] = Counter()
    for w, row in zip(problems, T.teacher_rows(problems, cfg, seed=0), strict=True):
        hinted = "Hint" in row["prompt"][0]["content"]
        text = row["completion"][0]["content"]
        wrong = first_wrong_step(w.problem.problem, text)
        boxes_gold = text.endswith(f"\\boxed{{{w.problem.answer}}}.")
        assert wrong in (None, 1, w.steps, w.steps + 1), text  # the slip, a leap onto the hint, the boxed hint
        kind = "right" if wrong is None else "shortcut" if boxes_gold else "wrong"
        kinds[(w.hard, hinted, kind)] += 1
    assert kinds[(False, False, "right")] + kinds[(False, True, "right")] == sum(not w.hard for w in problems)

    def share(hinted: bool, kind: str) -> float:
        return kinds[(True, hinted, kind)] / sum(kinds[(True, hinted, k)] for k in ("right", "shortcut", "wrong"))

    assert share(False, "right") == pytest.approx(T.UNAIDED_CORRECT, abs=0.015) and share(False, "shortcut") == 0
    assert share(True, "right") == pytest.approx(T.HINTED_CORRECT, abs=0.04) and share(True, "wrong") == 0


def test_solutions_never_trip_the_hint_leakage_filter():
    cfg = T.demo_config()
    problems = T.split("train", 700)
    for row in T.teacher_rows(problems, cfg, seed=0):
        text = row["completion"][0]["content"]
        assert not any(re.search(p, text, re.IGNORECASE) for p in cfg.hints.leakage_patterns), text


def test_training_runs_and_saves_a_loadable_model(tmp_path):
    teacher = T.train_teacher(tmp_path / "teacher", steps=2, examples=24, hidden_size=32, layers=1, batch_size=8)
    student = T.train_student_base(
        tmp_path / "student", teacher, steps=2, examples=24, hidden_size=32, layers=1, batch_size=8
    )
    for path in (teacher, student):
        assert {p.name for p in path.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
        assert not any(p.name in {"_trainer", "training_args.bin"} for p in path.iterdir())
        AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(student)
    assert len(tokenizer.encode("47#3=77", add_special_tokens=False)) == 7  # one token per digit and sign


@pytest.fixture(scope="module")
def committed_teacher():
    path = T.MODELS_DIR / "teacher"
    if not (path / "model.safetensors").exists():
        pytest.fail(f"the bundled teacher is missing; build it with python -m heal_core.demo.teacher ({path})")
    return path


def test_committed_teacher_solves_easy_problems_and_hints_lift_its_ceiling(committed_teacher):
    problems = T.split("generation")
    rows = {
        c.kind: c
        for c in T.calibrate(
            committed_teacher, [w for w in problems if not w.hard][:6] + [w for w in problems if w.hard][:6]
        )
    }
    assert rows["easy"].pass_unaided >= 0.5
    assert rows["hard"].pass_hinted >= 1.5 * rows["hard"].pass_unaided + 0.2


@pytest.mark.slow
def test_heal_demo_train_teacher_command(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["demo", "train-teacher", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "teacher" / "model.safetensors").exists() and (
        tmp_path / "student" / "model.safetensors"
    ).exists()
    assert "| all | 2 |" in result.output  # the calibration table of the quick run
