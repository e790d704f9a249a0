"""Where a trace's reasoning ends and its answer begins: the one place that knows a teacher's reasoning format.

Reasoning models (Qwen3, DeepSeek-R1 and its distillations) write a ``<think> ... </think>`` block, often
thousands of tokens, and then the answer. With ``think_tags`` (``teacher.reasoning_format``):

* the final answer is read only after the block's last ``</think>``: a box written while thinking is a draft;
* a trace whose block never closes has no final answer, so it is ``no_answer`` (``truncated`` when the token
  limit cut it), never correct. The opening tag is not required: R1's chat template writes ``<think>`` into the
  generation prompt, so the sampled text holds only the closing one;
* GEAR and PURE work on the thinking (``heal_core/gear.py``, ``heal_core/pure.py`` say how).

``none`` reads the whole trace as the answer, as for any model that does not think in tags. The format is
configured, not guessed from the output, so that a trace that never closes its thinking is an error of the
trace and not a reason to read it another way; ``check_template`` holds the setting against the model's chat
template at startup.
"""

from __future__ import annotations

from typing import Literal

ReasoningFormat = Literal["none", "think_tags"]

THINK_END = "</think>"


def thinking_end(text: str, fmt: ReasoningFormat) -> int | None:
    """Character offset of the last ``</think>`` (where the answer part starts); None when the trace has no
    closed thinking block, or ``fmt`` has none."""
    if fmt == "none":
        return None
    at = text.rfind(THINK_END)
    return at if at >= 0 else None


def answer_part(text: str, fmt: ReasoningFormat) -> str | None:
    """The part of ``text`` that states the final answer: all of it (``none``), the text after the thinking block
    (``think_tags``), or None when the block never closes."""
    if fmt == "none":
        return text
    end = thinking_end(text, fmt)
    return None if end is None else text[end + len(THINK_END) :]


def template_thinks(chat_template: str) -> bool:
    """Whether a chat template handles thinking blocks (opens one, or strips them from assistant messages)."""
    return "<think>" in chat_template or THINK_END in chat_template


def check_template(fmt: ReasoningFormat, chat_template: str | None, setting: str, model: str) -> None:
    """Raise ``ValueError`` naming ``setting`` when ``fmt`` and ``model``'s chat template disagree: a template
    that handles thinking under ``none`` (every trace would be read whole, drafts and all), or ``think_tags``
    with a template that never mentions them (every trace would be ``no_answer``). No template: nothing to
    hold the setting against."""
    if not chat_template:
        return
    thinks = template_thinks(chat_template)
    if fmt == "none" and thinks:
        raise ValueError(
            f"{setting} is 'none', but {model}'s chat template handles <think> blocks: its traces would "
            f"be read whole, boxes written while thinking included; set {setting}: think_tags"
        )
    if fmt == "think_tags" and not thinks:
        raise ValueError(
            f"{setting} is 'think_tags', but {model}'s chat template never mentions <think>: every "
            f"trace without </think> would count as unanswered; set {setting}: none"
        )
