"""The generation store (issue I): a problem is sampled once, and later runs re-use or re-select it.

Every test runs the shard chain on the bundled demo teacher at settings where waves matter (test_waves.py's), and
counts what reaches the teacher by recording the real backend's ``generate`` requests.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from heal_core import fingerprints, pure
from heal_core.backends.hf import HFBackend
from heal_core.config import parse_config
from heal_core.demo import bundled_model, demo_defaults
from heal_core.demo.teacher import split
from heal_core.generation_store import GenerationStore, generate_stored
from heal_core.shard import generate_shard
from heal_core.trajectory import from_table, to_table

SETTINGS = [
    "teacher.sampling.n=4",
    "hints.n=4",
    "hints.wave_samples=2",
    "hints.max_per_problem=1",
    "gear.failed_paths=3",
    "gear.continuations=3",
    "gear.max_per_problem=2",
    "gear.wave_paths=1",
]
TEACHER = str(bundled_model("teacher"))


def _problems():
    return [w.problem for w in sorted(split("generation"), key=lambda w: -w.steps)[:6]]


def _config(*extra: str):
    return parse_config(demo_defaults(), [*SETTINGS, *extra])


def _store(root: Path, cfg) -> GenerationStore:
    return GenerationStore.under(str(root), {}, fingerprints.generation(cfg, fingerprints.model_identity(TEACHER)))


def _rows(out):
    """What a row is, less its float traces (a batch of another size moves an entropy's last bits, never a token)."""
    return [(r.sample_id, r.kept, r.pure and r.pure.verdict, r.token_ids, r.text) for r in out.trajectories]


@pytest.fixture(scope="module")
def teacher():
    torch.set_num_threads(1)
    return HFBackend(TEACHER, "float32", "cpu", 64)


@pytest.fixture
def requests(teacher, monkeypatch):
    """Every request that reaches the real teacher."""
    seen = []
    real = teacher.generate

    def recording(batch, sampling):
        seen.extend(batch)
        return real(batch, sampling)

    monkeypatch.setattr(teacher, "generate", recording)
    return seen


def _through(store, problems, cfg, teacher):
    return generate_stored(problems, cfg, store, fingerprints.selection(cfg), TEACHER, lambda: teacher, lambda: None)


def test_a_second_run_samples_only_the_new_problems_and_reuses_the_rest_as_stored(tmp_path, teacher, requests):
    cfg, problems = _config(), _problems()
    first = _through(_store(tmp_path, cfg), problems[:4], cfg, teacher)
    assert first.sampled == 4 and requests
    requests.clear()
    second = _through(_store(tmp_path, cfg), problems, cfg, teacher)
    assert (second.reused, second.reselected, second.sampled) == (4, 0, 2)
    new = [p.problem for p in problems[4:]]
    assert requests and all(any(text in r.prompt for text in new) for r in requests)
    assert second.usage.samples == sum(r.n for r in requests)
    requests.clear()
    old = {p.problem_id for p in problems[:4]}
    as_stored = from_table(to_table(first.trajectories))  # float32 columns, as the first run's shard stored them
    assert [r for r in second.trajectories if r.problem_id in old] == as_stored
    assert _rows(second) == _rows(generate_shard(teacher, problems, cfg))  # the shard generating it whole gives
    requests.clear()
    third = _through(_store(tmp_path, cfg), problems, cfg, teacher)
    assert (third.reused, third.usage.tokens, requests) == (6, 0, [])


@pytest.mark.parametrize("lam", [1e-4, 5.0])
def test_a_new_lambda_re_judges_the_stored_scores_and_draws_only_missing_waves(tmp_path, teacher, requests, lam):
    cfg, problems = _config(), _problems()
    stored = _through(_store(tmp_path, cfg), problems, cfg, teacher)
    drawn = {(r.hint.hint if r.hint else r.prompt, r.seed) for r in stored.trajectories}
    requests.clear()
    strict = _config(f"pure.lam={lam}")
    assert fingerprints.generation(strict, "t") == fingerprints.generation(cfg, "t")
    again = _through(_store(tmp_path, strict), problems, strict, teacher)
    asked = list(requests)
    assert (again.reused, again.reselected, again.sampled) == (0, 6, 0)
    assert all((r.prompt, r.seed) not in drawn for r in asked)  # nothing stored is asked for again
    assert bool(asked) == (lam < 1)  # a stricter λ needs waves the store lacks; a laxer one fills the caps sooner
    assert _rows(again) == _rows(generate_shard(teacher, problems, strict))  # as if drawn under the new λ
    before = {r.sample_id: r.pure for r in stored.trajectories if r.pure is not None}
    judged = {r.sample_id for r in again.trajectories if r.pure is not None}
    assert again.usage.scored == len(judged - set(before))  # PURE scores only rows it never scored
    flipped = 0
    for row in again.trajectories:
        if row.pure is not None and row.sample_id in before and before[row.sample_id].ratio is not None:
            assert (
                row.pure.verdict
                == pure.judge(before[row.sample_id].answer_nll, before[row.sample_id].step_ppl, strict.pure).verdict
            )
            assert (row.pure.verdict == "reject_ratio") == (row.pure.ratio > lam)
            flipped += row.pure.verdict != before[row.sample_id].verdict
    assert flipped, "no verdict crossed the new λ: the test no longer tests re-judging"


def test_a_corrupt_object_is_reported_and_generated_again(tmp_path, teacher, requests):
    cfg, problems = _config(), _problems()[:2]
    store = _store(tmp_path, cfg)
    first = _through(store, problems, cfg, teacher)
    target = Path(store.object(problems[0], fingerprints.selection(cfg)))
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    requests.clear()
    again = _through(store, problems, cfg, teacher)
    assert len(again.corrupt) == 1 and str(target) in again.corrupt[0]
    assert (again.reused, again.sampled) == (1, 1) and requests
    assert _rows(again) == _rows(first)
    assert store.read(str(target)).rows == [r for r in again.trajectories if r.problem_id == problems[0].problem_id]


def _generate_in_process(root: str, start, out) -> None:
    torch.set_num_threads(1)
    cfg, problems = _config(), _problems()[:3]
    backend = HFBackend(TEACHER, "float32", "cpu", 64)
    start.wait()
    result = _through(_store(Path(root), cfg), problems, cfg, backend)
    out.put((result.sampled, [r.sample_id for r in result.trajectories]))


def test_two_runs_missing_the_same_problems_at_once_leave_whole_objects_and_no_duplicates(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_generate_in_process, args=(str(tmp_path), start, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [sampled for sampled, _ in results] == [3, 3]  # both missed: both generated
    ids = [ids for _, ids in results]
    assert ids[0] == ids[1] and len(set(ids[0])) == len(ids[0])
    cfg, problems = _config(), _problems()[:3]
    store = _store(tmp_path, cfg)
    for problem in problems:
        objects = list((Path(store.root) / problem.key).iterdir())
        assert [o.name for o in objects] == [f"{fingerprints.selection(cfg)}.parquet"]  # no temp file left behind
        rows = store.read(str(objects[0])).rows
        assert len({r.sample_id for r in rows}) == len(rows) > 0


def test_a_model_is_named_by_its_files_bytes_not_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    first, moved = tmp_path / "a" / "teacher", tmp_path / "b" / "elsewhere"
    for root in (first, moved):
        root.mkdir(parents=True)
        (root / "config.json").write_text('{"layers": 2}')
        (root / "model.safetensors").write_bytes(b"\x01" * 64)
    assert fingerprints.model_identity(str(first)) == fingerprints.model_identity(str(moved))
    before = fingerprints.model_identity(str(first))
    weights = first / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\x02" * 64)  # fine-tuned in place: the same shapes, the same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert fingerprints.model_identity(str(first)) != before
