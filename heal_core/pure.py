"""PURE: reject shortcut trajectories, whose stated answer is not supported by the steps before it.

Our formulation (the paper gives the idea and lambda=0.2, epsilon=0.01, not every detail). Everything is
scored under the *unaided* teacher (the prompt without any hint), so a trajectory that only reaches its
answer because the hint was in the prompt looks unsupported here. Steps s_1..s_K are split on blank lines;
s_K states the boxed answer.

* U_k = mean NLL per token of the gold answer, written as ``answer_lead + answer``, placed right after
  s_1..s_k (k = 0..K-1): how uncertain the teacher still is about the answer after k steps.
* P_k = exp(mean token NLL of s_k given the problem and s_<k): how surprising step k itself is.
* R = U_{K-1} / (U_0 + eps): the share of the answer's uncertainty still left when the answer is stated.
  Genuine reasoning drives it towards 0; a shortcut asserts an answer the steps never made likely.
  Reject when R > lambda.
* Leap check: one step that causes most of the total uncertainty drop while being far more surprising
  than the trajectory's median step is a leap (the answer smuggled into one implausible step). Reject it.

A trajectory with a single step cannot show support and is rejected with that reason: it is only ever
scored for hint-conditioned stages, where an unsupported answer is exactly the risk.

A thinking trace (``teacher.reasoning_format: think_tags``): its steps are the thinking block's blank-line steps,
and the text from ``</think>`` on is its last step, s_K, the one that states the answer. The answer probe after
s_1..s_k closes the thinking first (``\n</think>`` + ``answer_lead``), so U_k asks what the teacher would answer
if it stopped thinking there; the same probe inside the block would be read as more thinking, a different
question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from heal_core import progress
from heal_core.backends.base import PrefixQuery, TeacherBackend
from heal_core.config import PureConfig
from heal_core.entropy import split_steps
from heal_core.reasoning import THINK_END, ReasoningFormat, thinking_end

Verdict = Literal["keep", "reject_ratio", "reject_leap", "reject_unscorable"]


@dataclass(frozen=True)
class PureResult:
    """PURE's judgement of one trajectory; stored on its row as the ``pure_*`` columns (``heal_core.trajectory``)."""

    verdict: Verdict
    reason: str
    answer_nll: list[float]  # U_0..U_{K-1}
    step_ppl: list[float]  # P_1..P_K
    ratio: float | None

    @property
    def kept(self) -> bool:
        return self.verdict == "keep"


def forced_answer_ratio(answer_nll: list[float], eps: float) -> float:
    return float(answer_nll[-1] / (answer_nll[0] + eps))


def _largest_drop(answer_nll: list[float], step_ppl: list[float]) -> tuple[int, float, float] | None:
    """The step with the largest uncertainty drop: (0-based index, its share of the total drop, its
    log-perplexity excess over the median step), or None where uncertainty does not fall overall (only a real
    overall drop can contain a leap). Step k lowers uncertainty by U_{k-1} - U_k."""
    u = np.asarray(answer_nll)
    if len(u) < 2 or u[0] - u[-1] <= 0:
        return None
    drops = u[:-1] - u[1:]
    k = int(np.argmax(drops))
    log_ppl = np.log(np.asarray(step_ppl))
    return k, float(drops[k] / (u[0] - u[-1])), float(log_ppl[k] - np.median(log_ppl))


def leap_step(answer_nll: list[float], step_ppl: list[float], cfg: PureConfig) -> int | None:
    """1-based index of a step that is a leap (most of the drop, at a perplexity well above the median), or None."""
    drop = _largest_drop(answer_nll, step_ppl)
    if drop is None:
        return None
    k, share, excess = drop
    return k + 1 if share >= cfg.leap_drop_share and excess > cfg.leap_log_ppl_margin else None


def shortcut_score(answer_nll: list[float], step_ppl: list[float], cfg: PureConfig) -> float:
    """How far a trajectory goes past PURE's nearer rejection rule, in units of that rule's threshold: above 1
    it is rejected (``judge``), and higher means more clearly unsupported. A ranking score, so PURE can be graded
    by AUROC where the truth is known (``heal_core.truth``): the larger of R / lambda and, for the step with the
    largest uncertainty drop, the smaller of its drop share / ``leap_drop_share`` and its log-perplexity excess
    over the median step / ``leap_log_ppl_margin`` (both must pass for a leap). Unscorable trajectories get inf,
    as ``judge`` rejects them."""
    if len(step_ppl) < 2:
        return math.inf
    ratio = _over(forced_answer_ratio(answer_nll, cfg.eps), cfg.lam)
    drop = _largest_drop(answer_nll, step_ppl)
    if drop is None:
        return ratio
    _, share, excess = drop
    return max(ratio, min(_over(share, cfg.leap_drop_share), _over(excess, cfg.leap_log_ppl_margin)))


def _over(value: float, threshold: float) -> float:
    if threshold > 0:
        return float(value / threshold)
    return math.inf if value > 0 else 0.0


def judge(answer_nll: list[float], step_ppl: list[float], cfg: PureConfig) -> PureResult:
    """Verdict from U and P alone (separate from scoring so it can be tested on hand-built sequences)."""
    if len(step_ppl) < 2:
        return PureResult(
            "reject_unscorable", "no blank-line step boundary: support cannot be checked", answer_nll, step_ppl, None
        )
    ratio = forced_answer_ratio(answer_nll, cfg.eps)
    if ratio > cfg.lam:
        return PureResult("reject_ratio", f"R={ratio:.3f} > lambda={cfg.lam}", answer_nll, step_ppl, ratio)
    leap = leap_step(answer_nll, step_ppl, cfg)
    if leap is not None:
        return PureResult(
            "reject_leap",
            f"step {leap} makes most of the answer's uncertainty drop with perplexity {step_ppl[leap - 1]:.2f}",
            answer_nll,
            step_ppl,
            ratio,
        )
    return PureResult("keep", f"R={ratio:.3f} <= lambda={cfg.lam}", answer_nll, step_ppl, ratio)


def steps(text: str, cfg: PureConfig, fmt: ReasoningFormat = "none") -> tuple[list[str], str]:
    """(s_1..s_K, the answer probe's lead) of a trajectory; see the module docstring for thinking traces."""
    end = thinking_end(text, fmt)
    if end is None:
        return split_steps(text), cfg.answer_lead
    return [*split_steps(text[:end]), text[end:]], "\n" + THINK_END + cfg.answer_lead


def score(
    backend: TeacherBackend,
    trajectories: Sequence[tuple[str, str, str]],
    cfg: PureConfig,
    reasoning_format: ReasoningFormat = "none",
) -> list[PureResult]:
    """Score (prompt, text, gold answer) trajectories under the unaided teacher, in one batched call, and judge
    each."""
    split = [steps(text, cfg, reasoning_format) for _, text, _ in trajectories]
    scorable = [i for i, (segments, _) in enumerate(split) if len(segments) >= 2]
    queries = [PrefixQuery(trajectories[i][0], tuple(split[i][0]), split[i][1], trajectories[i][2]) for i in scorable]
    progress.stage("PURE", len(queries))
    scored = dict(zip(scorable, backend.score_prefixes(queries) if queries else [], strict=True))
    progress.advance(len(queries))
    results = []
    for i, (segments, _) in enumerate(split):
        if i not in scored:
            results.append(judge([], [], cfg))
            continue
        answer_nll = [float(-lp.mean()) for lp in scored[i].answer_logprobs[: len(segments)]]
        step_ppl = [float(np.exp(-lp.mean())) for lp in scored[i].segment_logprobs]
        results.append(judge(answer_nll, step_ppl, cfg))
    return results
