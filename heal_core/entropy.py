"""Reasoning breakpoints from a teacher's token-entropy trace, and the step structure they snap to.

A breakpoint is where the teacher's next-token distribution suddenly widens: the largest *surge*, entropy
minus its trailing moving average, so a long uncertain stretch does not count, only a jump above the
recent level. The paper searches the first third of the trajectory (errors made early derail the rest);
``fraction`` keeps that configurable. Steps are split on blank lines, the same rule PURE uses.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STEP_SEPARATOR = re.compile(r"\n[ \t]*\n\s*")
_NOISE = 1e-6  # nats; below this a "surge" is cumulative-sum rounding on a flat trace


@dataclass(frozen=True)
class Breakpoint:
    token: int  # index into the generated tokens
    surge: float  # entropy minus its trailing moving average, in nats


def surges(entropy: np.ndarray, window: int) -> np.ndarray:
    """``H[t] - mean(H[max(0, t-window):t])``; position 0 has no history and gets NaN."""
    h = np.asarray(entropy, dtype=np.float64)
    out = np.full(h.shape, np.nan)
    if h.size < 2:
        return out
    csum = np.concatenate([[0.0], np.cumsum(h)])
    t = np.arange(1, h.size)
    start = np.maximum(0, t - window)
    out[1:] = h[1:] - (csum[t] - csum[start]) / (t - start)
    return out


def find_breakpoint(entropy: np.ndarray, window: int, fraction: float) -> Breakpoint | None:
    """Largest positive surge among the first ``ceil(fraction * T)`` tokens; None when there is none."""
    s = surges(entropy, window)
    limit = min(len(s), math.ceil(fraction * len(s)))
    candidates = s[1:limit]
    if candidates.size == 0 or not np.isfinite(candidates).any():
        return None
    best = int(np.nanargmax(candidates)) + 1
    if not s[best] > _NOISE:
        return None
    return Breakpoint(token=best, surge=float(s[best]))


def split_steps(text: str) -> list[str]:
    """Segments that concatenate back to ``text``; each after the first starts with its blank-line separator.

    Keeping the separators inside the segments means scoring the segments scores the exact text.
    """
    cuts = [m.start() for m in STEP_SEPARATOR.finditer(text) if m.start() > 0 and m.end() < len(text)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def step_start(text: str, char_index: int) -> tuple[int, int]:
    """(character offset, step index) of the start of the step that contains ``char_index``.

    The start lies just after the blank-line separator, so a prefix cut there ends with the separator and
    the continuation begins a fresh step.
    """
    start, step = 0, 0
    for m in STEP_SEPARATOR.finditer(text):
        if m.end() > char_index or m.end() >= len(text):
            break
        start, step = m.end(), step + 1
    return start, step


Decode = Callable[[Sequence[int]], str]  # token ids -> the text they render as


def token_steps(text: str, token_ids: Sequence[int], decode: Decode, limit: int | None = None) -> list[int]:
    """The step of ``text`` each of its generated tokens starts in (tokens 0 .. ``limit`` - 1), mapped to steps
    exactly as ``gear`` maps a breakpoint."""
    ids = list(token_ids)
    return [step_start(text, len(decode(ids[:t])))[1] for t in range(min(len(ids), limit or len(ids)))]


def span_steps(text: str, token_ids: Sequence[int], decode: Decode, fraction: float) -> list[int]:
    """The step of each position the breakpoint search looks at (tokens 1 .. ceil(fraction * T) - 1, see
    ``entropy.find_breakpoint``)."""
    size = len(token_ids)
    return token_steps(text, token_ids, decode, min(size, math.ceil(fraction * size)))[1:]
