from pathlib import Path

import pytest
import torch
from rows import built_datasets, trajectory
from safetensors.torch import load_file

from heal_core.config import HealConfig, PaceConfig
from heal_core.demo.arithmetic import make_problems
from heal_core.testing import build_tiny_model
from heal_core.train import MARKER, train_variant
from heal_core.variants import StagePlan, VariantPlan, plan, stage_steps


def _weights(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def _rows(count: int, stage: int):
    return [
        trajectory(
            f"{w.problem.problem_id}|{stage}",
            stage,
            w.problem.problem_id,
            prompt=w.problem.problem,
            text=w.solution,
            kept=True,
        )
        for w in make_problems(count, seed=stage)
    ]


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("student"), arch="llama"))


def test_stage_steps():
    cfg = PaceConfig(epochs=2, batch_size=4)
    assert stage_steps(10, cfg) == 6
    assert stage_steps(1, cfg) == 2


def _heal(rows, workdir: Path) -> dict[str, list[dict]]:
    """PACE's cumulative stage datasets of kept ``rows``, as a run's curriculum step assembles them."""
    built = built_datasets(rows, HealConfig(), workdir)
    return {f"stage{k}": built[f"stage{k}"] for k in (1, 2, 3)}


def test_three_stages_chain_and_resume(student, tmp_path):
    datasets = _heal(_rows(6, 1) + _rows(3, 2) + _rows(2, 3), tmp_path / "data")
    assert [len(datasets[f"stage{s}"]) for s in (1, 2, 3)] == [6, 9, 11]
    cfg = PaceConfig(epochs=1, batch_size=4, learning_rate=1e-3, max_length=256)
    heal = plan("heal", {name: len(rows) for name, rows in datasets.items()}, cfg)
    dirs = {name: tmp_path / name for name in datasets}
    done = []
    result = train_variant(student, heal, datasets, dirs, 0, cfg, on_stage_done=done.append)
    results = result.stages
    assert [r.name for r in results] == ["stage1", "stage2", "stage3"] == [r.name for r in done]
    assert [r.steps for r in results] == [2, 3, 3] and result.budget == 8
    assert all(r.train_loss is not None and not r.resumed for r in results)
    assert [len(r.losses) for r in results] == [2, 3, 3]  # every step logged: the report's training curves
    args = torch.load(Path(results[0].model_dir) / "training_args.bin", weights_only=False)
    assert args.run_name == "heal-seed0-stage1" and args.report_to in ([], "none", ["none"])
    assert result.model_dir == str(dirs["stage3"])
    base, w1, w2, _w3 = (_weights(p) for p in (student, *(r.model_dir for r in results)))
    key = next(k for k in base if "layers.0.mlp" in k)
    assert not torch.equal(base[key], w1[key]) and not torch.equal(w1[key], w2[key])

    # resume: finished stages are not retrained (weights on disk untouched)
    mtimes = [Path(r.model_dir, "model.safetensors").stat().st_mtime_ns for r in results]
    (Path(results[2].model_dir) / MARKER).unlink()  # stage III was interrupted before it finished
    again = train_variant(student, heal, datasets, dirs, 0, cfg).stages
    assert [r.resumed for r in again] == [True, True, False]
    assert [Path(r.model_dir, "model.safetensors").stat().st_mtime_ns for r in again][:2] == mtimes[:2]
    assert again[2].steps == 3


def test_each_stage_starts_from_the_previous_stage(student, tmp_path):
    # With a vanishing learning rate stage II must reproduce stage I's weights exactly: it started there,
    # not from the base student. An empty stage III trains nothing and keeps stage II's model.
    datasets = _heal(_rows(4, 1) + _rows(2, 2), tmp_path / "data")
    datasets["stage3"] = []
    dirs = {name: tmp_path / name for name in datasets}
    normal = PaceConfig(epochs=1, batch_size=4, learning_rate=1e-3, max_length=256)
    first = train_variant(student, VariantPlan("heal", 1, (StagePlan("stage1", 4, 1),)), datasets, dirs, 0, normal)
    tiny = PaceConfig(epochs=1, batch_size=4, learning_rate=1e-30, max_length=256)
    rest = VariantPlan("heal", 2, (StagePlan("stage2", 6, 2), StagePlan("stage3", 0, 0)))
    second = train_variant(first.model_dir, rest, datasets, dirs, 0, tiny)
    w1, w2 = _weights(first.model_dir), _weights(second.stages[0].model_dir)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    assert second.stages[1].steps == 0 and second.model_dir == second.stages[0].model_dir


def test_a_plan_that_does_not_match_the_data_is_refused(student, tmp_path):
    datasets = {"rs_sft": _heal(_rows(3, 1), tmp_path / "data")["stage1"]}
    wrong = VariantPlan("rs_sft", 2, (StagePlan("rs_sft", 5, 2),))
    with pytest.raises(ValueError, match="rs_sft holds 3 examples, the plan 5"):
        train_variant(student, wrong, datasets, {"rs_sft": tmp_path / "rs_sft"}, 0, PaceConfig())
