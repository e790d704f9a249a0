"""GEAR and PURE on a real (tiny, random) teacher: the mechanics, independent of whether answers verify."""

from dataclasses import replace

import numpy as np
import pytest
from rows import trajectory

from heal_core import gear, pure
from heal_core.backends.base import PrefixQuery
from heal_core.backends.hf import HFBackend
from heal_core.config import parse_config
from heal_core.entropy import split_steps
from heal_core.problems import Problem
from heal_core.trajectory import mentions_hint

CFG = parse_config(
    {},
    [
        "teacher.sampling.n=4",
        "teacher.sampling.max_new_tokens=40",
        "teacher.sampling.temperature=1.0",
        "teacher.sampling.top_p=1.0",
        "gear.continuations=3",
        "gear.surge_window=4",
    ],
)
PROBLEM = Problem("p1", "Start with 5, then apply in order: + 3, * 2. What is the result?", "16")


@pytest.fixture(scope="module")
def backend(tiny_model_dirs):
    return HFBackend(str(tiny_model_dirs["llama"]), dtype="float32", device="cpu")


def _failed_row(backend, text: str):
    """A Stage I-like row for ``text`` with a planted entropy surge inside its second step."""
    ids = backend.tokenizer.encode(text, add_special_tokens=False)
    entropy = [0.5] * len(ids)
    second = len(backend.tokenizer.encode(text[: text.index("5 + 3") + 2], add_special_tokens=False))
    entropy[second] = 4.0
    return trajectory(
        "p1|s1|0",
        1,
        "p1",
        text=text,
        token_ids=ids,
        entropy=entropy,
        verified=False,
        prompt=CFG.teacher.prompt_template.format(problem=PROBLEM.problem),
    )


def test_gear_backs_up_to_the_step_start_and_continues_from_there(backend):
    text = "Start with 5.\n\n5 + 3 = 8.\n\n8 * 2 = 17.\n\nThe result is \\boxed{17}.\n\nDone now, really done."
    row = _failed_row(backend, text)
    [plan] = gear.plan_repairs([row], backend, CFG)
    assert isinstance(plan, gear.RepairPlan)
    assert plan.prefix == "Start with 5.\n\n" and plan.repair.breakpoint_step == 1
    rows, skips = gear.repair(backend, [(PROBLEM, [row])], CFG, wave=2)
    assert not skips and len(rows) == 3
    for r in rows:
        assert r.hint.wave == 2 and r.teacher == backend.model_path  # the backend names the model it serves
        assert (
            r.text.startswith(plan.prefix) and r.repair == plan.repair and plan.repair.prefix_chars == len(plan.prefix)
        )
        assert r.stage == 3 and r.repair.parent_sample_id == "p1|s1|0"
        assert "16" in r.hint.hint and r.prompt == CFG.teacher.prompt_template.format(problem=PROBLEM.problem)
        assert len(r.entropy) == r.num_tokens > 0
        # leakage is judged on the teacher's continuation, not on the parent's prefix
        assert r.hint.leaked_hint == (mentions_hint(r.text[len(plan.prefix) :], CFG.hints.leakage_patterns) is not None)


def test_gear_records_why_it_cannot_repair(backend):
    row = _failed_row(backend, "Start with 5.\n\n5 + 3 = 8.\n\nSo \\boxed{8}.")
    empty = replace(row, entropy=[], sample_id="e")
    flat = replace(row, entropy=[0.5] * len(row.token_ids), sample_id="f")
    rows, skips = gear.repair(backend, [(PROBLEM, [empty, flat])], CFG)
    assert rows == []
    assert [(s.sample_id, s.reason.split(" ")[0]) for s in skips] == [("e", "empty"), ("f", "no")]


def test_pure_scores_every_step_under_the_unaided_teacher(backend):
    text = "Start with 5.\n\n5 + 3 = 8.\n\n8 * 2 = 16.\n\nThe result is \\boxed{16}."
    [result] = pure.score(backend, [("Start with 5 ...", text, "16")], CFG.pure)
    k = len(split_steps(text))
    assert len(result.step_ppl) == k == 4 and len(result.answer_nll) == k
    assert all(np.isfinite(result.answer_nll)) and all(p > 1 for p in result.step_ppl)
    assert result.ratio == pytest.approx(result.answer_nll[-1] / (result.answer_nll[0] + CFG.pure.eps))
    assert result.verdict in ("keep", "reject_ratio", "reject_leap")
    # the same numbers from the backend directly: U_k is the mean NLL of the answer tokens after k steps
    [direct] = backend.score_prefixes(
        [PrefixQuery("Start with 5 ...", tuple(split_steps(text)), CFG.pure.answer_lead, "16")]
    )
    assert result.answer_nll[2] == pytest.approx(float(-direct.answer_logprobs[2].mean()))


def test_pure_unscorable_single_step(backend):
    text = "Start with 5.\n\n5 + 3 = 8.\n\nThe result is \\boxed{8}."
    single, scored = pure.score(backend, [("q", "The answer is \\boxed{3}.", "3"), ("q", text, "8")], CFG.pure)
    assert single.verdict == "reject_unscorable" and single.ratio is None
    assert scored.ratio is not None and len(scored.step_ppl) == 3


def test_gear_cuts_at_the_exact_entropy_a_backend_recomputes(backend):
    """A backend that stored only a top-k bound (vLLM, a server) hands GEAR the exact trace: here the recorded trace
    is flat, the recomputed one has the surge, and the cut follows the recomputed one."""
    text = "Start with 5.\n\n5 + 3 = 8.\n\n8 * 2 = 17.\n\nThe result is \\boxed{17}.\n\nDone now, really done."
    planted = _failed_row(backend, text)
    recomputed = []

    class Recomputing:
        decode = staticmethod(backend.decode)

        def exact_entropy(self, traces, temperature):
            recomputed.extend((t.prompt, list(t.token_ids), temperature) for t in traces)
            return [np.asarray(planted.entropy) for _ in traces]

    flat = replace(planted, entropy=[0.5] * len(planted.token_ids))
    assert isinstance(gear.plan_repairs([flat], backend, CFG)[0], gear.Skip)
    [plan] = gear.plan_repairs([flat], Recomputing(), CFG)
    assert isinstance(plan, gear.RepairPlan) and plan.prefix == "Start with 5.\n\n"
    assert recomputed == [(planted.prompt, planted.token_ids, CFG.teacher.sampling.temperature)]
