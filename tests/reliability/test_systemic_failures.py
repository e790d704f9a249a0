"""A verifier, teacher or judge that cannot work fails the work; it never becomes data (issue K, item 1).

The verifier's pool is made unable to start its workers by a real cause: spawned workers re-run the parent's
``__main__`` file, and that file is gone (as when a deployment replaces the code under a running worker).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
from prefect import flow
from rows import trajectory

from heal_core.backends.base import BackendUnavailable, Generation, require_usable
from heal_core.backends.hf import HFBackend
from heal_core.config import JudgeConfig, parse_config
from heal_core.demo import bundled_model, demo_defaults, demo_problems
from heal_core.judge import judge_rows
from heal_core.run import Run
from heal_core.verify import VerifierUnavailable, check_many
from tasks.generate import run_shard, shard_done, write_shards

SLOW = r"So the answer is \boxed{9^{9^{9^{9^{9}}}}}."  # sympy evaluates this tower for minutes


@flow
def _shard(layout: Run, cfg) -> dict:
    write_shards(layout, demo_problems("generation")[:2], cfg)
    return run_shard(layout, 0, cfg, str(bundled_model("teacher")))


@flow
def _done(layout: Run, cfg) -> bool:
    return shard_done(layout, 0, cfg) is not None


def _config(tmp_path):
    """The bundled teacher: its answers finish, so the verifier is used (a cut-off sample is never checked)."""
    return parse_config(
        demo_defaults(),
        [f"storage.uri={tmp_path}", "teacher.sampling.n=2", "hints.n=2", "orchestration.shard_retries=0"],
    )


def test_a_verifier_pool_that_cannot_start_fails_the_shard_and_a_retry_equals_a_clean_run(
    prefect_api, tmp_path, monkeypatch
):
    clean_cfg, cfg = _config(tmp_path / "clean"), _config(tmp_path / "broken")  # two stores: no row is re-used
    clean_layout = Run.of(clean_cfg, "clean")
    _shard(clean_layout, clean_cfg)
    clean = pq.read_table(clean_layout.shard_samples(0))
    assert set(clean.column("verify_status").to_pylist()) & {"correct", "wrong"}  # the verifier was used

    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__spec__", None, raising=False)  # spawn re-runs the main file by path ...
    monkeypatch.setattr(main, "__file__", str(tmp_path / "gone.py"), raising=False)  # ... and it is gone
    with pytest.raises(VerifierUnavailable, match="process pool broke"):
        check_many([(r"\boxed{2}", "2")] * 3, workers=3)  # a new pool (new size): its workers cannot start

    layout = Run.of(cfg, "broken")
    with pytest.raises(VerifierUnavailable):
        _shard(layout, cfg)
    assert not _done(layout, cfg)  # nothing recorded as finished
    assert not (tmp_path / "broken" / "runs" / "broken" / "samples" / "shard-00000.parquet").exists()
    stored = [p for p in (tmp_path / "broken" / "generations").rglob("*.parquet") if "_journal" not in p.parts]
    assert stored == []  # nor stored for another run to re-use (the teacher's raw answers are journaled, no verdicts)

    monkeypatch.undo()  # the cause removed: the same shard, retried, is the clean run's
    _shard(layout, cfg)
    assert pq.read_table(layout.shard_samples(0)).equals(clean)


def test_one_dead_check_is_that_samples_error_but_a_call_of_dead_checks_fails():
    import multiprocessing
    import os
    import signal

    def kill_workers_while(pairs, workers):
        with ThreadPoolExecutor(max_workers=1) as executor:
            future = executor.submit(check_many, pairs, timeout=60, workers=workers)
            time.sleep(3)  # the pool starts and runs the slow checks
            for worker in [p for p in multiprocessing.active_children() if p.name == "pebble_pool_worker"]:
                os.kill(worker.pid, signal.SIGKILL)  # what the out-of-memory killer would do
            return future.result(timeout=60)

    one = kill_workers_while([(SLOW, "1")], workers=1)
    assert [v.status for v in one] == ["error"]
    with pytest.raises(VerifierUnavailable, match="2 of 2 answer checks failed"):
        kill_workers_while([(SLOW, "1"), (SLOW, "1")], workers=2)
    assert [v.status for v in check_many([(r"\boxed{2}", "2")] * 2)] == ["correct", "correct"]  # and recovers


def _generation(text: str) -> Generation:
    return Generation(
        token_ids=[1] if text else [], text=text, entropy=np.zeros(1 if text else 0), finish_reason="stop", seed=0
    )


def test_a_whole_batch_without_text_is_a_backend_failure_one_empty_reply_is_data():
    batches = [[_generation(""), _generation("7.")], [_generation("")]]
    assert require_usable(batches, "Stage I sampling") is batches
    assert require_usable([[_generation("")]], "Stage I sampling")  # one empty completion: the model's choice
    with pytest.raises(BackendUnavailable, match="Stage I sampling: the backend returned 3 generations without text"):
        require_usable([[_generation(""), _generation(" ")], [_generation("\n")]], "Stage I sampling")


def _judged_rows():
    return [trajectory(f"s{i}", 1, verified=False, extracted_answer=answer) for i, answer in enumerate(["four", "x=4"])]


def test_a_judge_that_never_answers_yes_or_no_fails_instead_of_recording_unclear():
    """The demo teacher as the judge (a misconfigured judge.model): it answers with arithmetic, never yes or no."""
    rows = _judged_rows()
    with pytest.raises(BackendUnavailable, match="the judge answered none of 2 questions with yes or no"):
        judge_rows(rows, HFBackend(str(bundled_model("teacher")), "float32", "cpu"), JudgeConfig(enabled=True))


def test_a_model_that_writes_nothing_fails_the_call(tiny_model_dirs):
    """A random-weight model stops at once on every prompt: no text at all, a backend that does not work."""
    rows = _judged_rows()
    with pytest.raises(BackendUnavailable, match="the judge: the backend returned 2 generations without text"):
        judge_rows(rows, HFBackend(str(tiny_model_dirs["qwen2"]), "float32", "cpu"), JudgeConfig(enabled=True))
