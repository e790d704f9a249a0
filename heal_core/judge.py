"""An optional LLM judge for the verifier's rejections: is ``\\boxed{4\\text{ days}}`` the gold ``4``?

Why: a verifier false negative is doubly costly in HEAL, because a problem the teacher did solve is sent to
the hint and repair stages as if it were hard. Rules (Math-Verify plus heal's normalisation) stay the judge of
first resort; a model is asked only about samples they reject (``wrong``, ``unparseable``, ``timeout``) whose
boxed answer is not trivially different from the gold one. Two plain numbers that differ are trivially
different: the rules compare numbers exactly, so a model could only add errors there.

The verdict is lineage of its own (``judge_verdict``): ``verified`` becomes true on ``equivalent``, while
``verify_status`` keeps the rules' verdict, so every judge-accepted sample can be found and audited. We wrote
this ourselves: no library judges answer equivalence with an arbitrary configured backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from heal_core.backends.base import BackendUnavailable, Request, TeacherBackend, require_usable
from heal_core.config import JudgeConfig, SamplingConfig
from heal_core.seeds import request_seed
from heal_core.trajectory import Trajectory

JudgeVerdict = Literal["equivalent", "different", "unclear"]

JUDGED_STATUSES = frozenset({"wrong", "unparseable", "timeout"})
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_REPLY = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)


def _plain_number(text: str) -> float | None:
    compact = text.replace(" ", "").replace("{,}", "").replace(",", "")
    return float(compact) if _NUMBER.fullmatch(compact) else None


def worth_judging(status: str, extracted: str | None, gold: str) -> bool:
    """A rejection the rules may have got wrong: rejected for a reason a judge can weigh, and not two numbers."""
    if status not in JUDGED_STATUSES or not extracted or not extracted.strip():
        return False
    a, b = _plain_number(extracted), _plain_number(gold)
    return a is None or b is None or a == b


def parse_reply(text: str) -> JudgeVerdict:
    """The reply's first word decides; anything else is ``unclear`` (and changes nothing)."""
    match = _REPLY.match(text)
    if match is None:
        return "unclear"
    return "equivalent" if match[1].lower() == "yes" else "different"


def judge_rows(rows: Sequence[Trajectory], backend: TeacherBackend, cfg: JudgeConfig) -> list[Trajectory]:
    """The rows, with the ones worth judging judged: ``judge_verdict`` set, ``verified`` on ``equivalent``.

    One batched call for all of them. A judge that answers none of more than one question with yes or no is a
    broken judge, not data: ``BackendUnavailable``.
    """
    todo = [i for i, r in enumerate(rows) if worth_judging(r.verify_status, r.extracted_answer, r.gold_answer)]
    if not todo:
        return list(rows)
    requests = [
        Request(
            cfg.template.format(prediction=rows[i].extracted_answer, gold=rows[i].gold_answer),
            1,
            request_seed(0, "judge", rows[i].sample_id),
        )
        for i in todo
    ]
    sampling = SamplingConfig(n=1, temperature=cfg.temperature, top_p=1.0, top_k=0, max_new_tokens=cfg.max_new_tokens)
    replies = require_usable(backend.generate(requests, sampling), "the judge")
    verdicts = [parse_reply(reply[0].text) for reply in replies]
    if len(verdicts) > 1 and set(verdicts) == {"unclear"}:
        raise BackendUnavailable(
            f"the judge answered none of {len(verdicts)} questions with yes or no (first reply: "
            f"{replies[0][0].text[:80]!r}): check judge.model and judge.template"
        )
    judged = list(rows)
    for i, verdict in zip(todo, verdicts, strict=True):
        judged[i] = replace(rows[i], judge_verdict=verdict, verified=rows[i].verified or verdict == "equivalent")
    return judged
