"""Answer verification: is a sample's final ``\\boxed{}`` answer equal to the gold answer?

Built on Math-Verify, with three HEAL rules on top:

* Only a boxed answer counts. Math-Verify falls back to the last number of unboxed text, which turns an
  unfinished trace ("... 8 total? no, 7") into a false positive; here no box means ``no_answer``.
* Failures are told apart (see ``Status``): a gold answer that does not parse (``bad_gold``) is a problem
  with the data, not a wrong sample, and an ``unparseable`` or ``timeout`` sample is not a ``wrong`` one.
* Every check runs in a worker process with a hard time limit. Math-Verify's own limits use
  ``signal.alarm``, which raises off the main thread (Prefect runs tasks in threads), and a sympy
  simplification can run for hours, so both are disabled and a pebble pool kills and replaces any worker
  that runs past the limit. All checks take this path, so a verdict never depends on the calling thread.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.util
import os
import re
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Literal

from pebble import ProcessFuture, ProcessPool

from heal_core.reasoning import ReasoningFormat, answer_part

logger = logging.getLogger(__name__)

Status = Literal["correct", "wrong", "no_answer", "unparseable", "bad_gold", "timeout", "error", "truncated"]
"""``error``: the worker died (killed, out of memory) or the check raised; the sample's correctness is unknown."""

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ERROR_SHARE = 0.1  # orchestration.max_verify_error_share


class VerifierUnavailable(RuntimeError):
    """The verifier cannot verify: its process pool broke (workers that died or could not start), or too many
    checks of one call failed. Raised, never recorded: every sample would read ``error`` and look unsolved, the
    run would spend teacher compute on hints and repairs for solved problems, and a broken tool would become
    data. The caller's work fails, so Prefect's retries and the UI's Retry apply once the cause is fixed."""


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox|framebox)\s*\{")  # AoPS solutions box AIME answers with \framebox
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
# A thousands separator typed as LaTeX spacing between digit groups ("1\,000", "1{,}000", "1~000"):
# Math-Verify reads "1\,000" as the product 1*0 ("1,000" and "10,\!080" it already reads as numbers).
# Only a separator followed by exactly three digits is removed, so "(1,2)" or "1,\,2" stay lists.
_THOUSANDS = re.compile(r"(?<=\d)(?:\\,|\{,\}|~)(?=\d{3}(?!\d))")
# A lone number inside a text or bold wrapper ("\text{073}", AoPS's "\textbf{(073)}"): Math-Verify compares it as a
# string, so "073" != "73". Unwrapped it is a number again (and "(073)" reads as 73). Wrappers around words stay.
_WRAPPED_NUMBER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{\s*(\(?\s*[-+]?\d[\d.]*\s*\)?)\s*\}")
# A sentence's full stop typed inside the box ("\boxed{104.}"): Math-Verify cannot parse "104." at all.
# An ellipsis ("1, 2, \ldots" or "...") is left alone.
_FULL_STOP = re.compile(r"(?<![.\\])\.\s*$")
_MATH_DELIMITER = re.compile(r"(?<!\\)\$")  # "$", not the escaped dollar sign of "\$36"


@dataclass(frozen=True)
class Verdict:
    correct: bool
    status: Status
    extracted: str | None  # the last boxed answer, stripped; None when there is none

    def __post_init__(self) -> None:
        if self.correct != (self.status == "correct"):
            raise ValueError(f"inconsistent verdict: correct={self.correct} with status {self.status!r}")


def extract_answer(text: str, reasoning_format: ReasoningFormat = "none") -> str | None:
    """The content of the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\framebox{...}``), stripped.

    Braces are matched by hand rather than left to Math-Verify, whose extraction falls back to the last
    number of unboxed text. A last box that is never closed (a truncated trace) gives None, not an
    earlier box: the sample did not finish its final answer. With ``think_tags`` only the text after the
    thinking block counts, and a block that never closes gives None (``heal_core/reasoning.py``).
    """
    text = answer_part(text, reasoning_format)
    if text is None:
        return None
    answer = None
    pos = 0
    while match := _BOX_OPEN.search(text, pos):
        end = _closing_brace(text, match.end())
        if end is None:
            return None
        answer = text[match.end() : end].strip()
        pos = end + 1
    return answer


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the brace closing the group opened just before ``start``; escapes such as ``\\{`` do not count."""
    depth = 1
    for token in _BRACE_TOKEN.finditer(text, start):
        depth += {"{": 1, "}": -1}.get(token.group(), 0)
        if depth == 0:
            return token.start()
    return None


def check(prediction_text: str, gold_answer: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Verify one sample; see ``check_many``."""
    return check_many([(prediction_text, gold_answer)], timeout=timeout)[0]


def is_correct(prediction_text: str, gold_answer: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    return check(prediction_text, gold_answer, timeout=timeout).correct


def check_many(
    pairs: Sequence[tuple[str, str]],
    *,
    truncated: Sequence[bool] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    max_error_share: float = DEFAULT_MAX_ERROR_SHARE,
    reasoning_format: ReasoningFormat = "none",
) -> list[Verdict]:
    """Verify ``(prediction_text, gold_answer)`` pairs in parallel, in order.

    A pair flagged in ``truncated`` (its generation hit the token limit) is ``truncated``, never correct,
    and not checked: a trace cut off mid-thought can hold an early box it went on to doubt, and training on
    it would teach the student not to stop. ``timeout`` bounds each check (from when a worker starts it); a
    check past it is ``timeout``. ``workers`` sizes the process pool (default ``min(4, cpu_count)``); a size
    different from the running pool's replaces it. ``reasoning_format`` says where a prediction's final answer
    is (``extract_answer``). Safe to call from any thread.

    One check that raises, or whose worker dies (a pathological answer that runs a worker out of memory), is
    that sample's ``error``: data. A pool that breaks, or more than one ``error`` making up more than
    ``max_error_share`` of the checks, raises ``VerifierUnavailable``: the verifier, not the samples, failed.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")  # pebble reads 0/None as "no limit"
    cut = list(truncated) or [False] * len(pairs)
    if len(cut) != len(pairs):
        raise ValueError(f"truncated has {len(cut)} flags for {len(pairs)} pairs")
    if not pairs:
        return []
    extracted = [extract_answer(prediction, reasoning_format) for prediction, _ in pairs]
    checked = [i for i, c in enumerate(cut) if not c]
    statuses: list[Status] = ["truncated"] * len(pairs)
    if checked:
        pool = _get_pool(workers)
        futures = [pool.schedule(_grade, args=(pairs[i][1], extracted[i]), timeout=timeout) for i in checked]
        for i, status in zip(checked, _collect(pool, futures, max_error_share), strict=True):
            statuses[i] = status
    return [Verdict(status == "correct", status, answer) for answer, status in zip(extracted, statuses)]


def _collect(pool: ProcessPool, futures: list[ProcessFuture[Status]], max_error_share: float) -> list[Status]:
    """Wait for every check; pebble itself kills a check that runs past its timeout.

    A pool whose workers all died (one killed while the pool was idle, or workers that cannot start) fails
    the checks it had dispatched and never runs those still queued: stop waiting when it breaks, and raise.
    """
    pending = set(futures)
    while pending and pool.active:
        pending = wait(pending, timeout=1.0).not_done
    statuses = [_status(future) for future in futures]
    errors = statuses.count("error")
    if not errors:
        return statuses
    first = next((f.exception() for f, s in zip(futures, statuses) if s == "error" and f.done()), None)
    summary = f"{errors} of {len(futures)} answer checks failed; first error: {first!r}"
    if not pool.active:
        raise VerifierUnavailable(f"the verifier's process pool broke (its workers died or could not start): {summary}")
    if errors > 1 and errors > max_error_share * len(futures):
        raise VerifierUnavailable(f"{summary}, above orchestration.max_verify_error_share={max_error_share:g}")
    logger.warning("%s", summary)
    return statuses


def _status(future: ProcessFuture[Status]) -> Status:
    if not future.done():
        return "error"  # still queued on a pool that broke
    error = future.exception()  # pebble.ProcessExpired when the worker died, or what the check raised
    if error is None:
        return future.result()
    return "timeout" if isinstance(error, FutureTimeout) else "error"


# --- worker side ---------------------------------------------------------------------------------------


def _grade(gold: str, answer: str | None) -> Status:
    """Gold first: a bad gold answer is reported as such for every sample, boxed or not."""
    gold_parsed = _parse_gold(gold)
    if not _has_value(gold_parsed):
        return "bad_gold"
    if answer is None:
        return "no_answer"
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    predicted = parse(
        "\\boxed{" + _normalise(answer) + "}",
        parsing_timeout=None,
        extraction_config=(LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()),
    )
    if not _has_value(predicted):
        return "unparseable"
    # Argument order matters: Math-Verify is deliberately asymmetric (gold inequality vs predicted interval).
    return "correct" if verify(list(gold_parsed), predicted, timeout_seconds=None) else "wrong"


@functools.lru_cache(maxsize=1024)
def _parse_gold(gold: str) -> tuple[object, ...]:
    """Cached because a batch holds many samples of one problem. Bare gold LaTeX is wrapped in ``$``:
    Math-Verify only reads LaTeX inside a math environment."""
    from math_verify import parse

    text = _normalise(gold.strip())
    if "\\boxed" not in text and not _MATH_DELIMITER.search(text):
        text = "$" + text + "$"
    return tuple(parse(text, parsing_timeout=None))


def _normalise(answer: str) -> str:
    """Notation Math-Verify misreads, rewritten the same way on both sides (see the patterns above)."""
    answer = _THOUSANDS.sub("", answer).replace("°", "^\\circ")
    return _FULL_STOP.sub("", _WRAPPED_NUMBER.sub(r"\1", answer))


def _has_value(parsed: Sequence[object]) -> bool:
    """Math-Verify returns ``[value, text]``, or only the matched text when it could not parse it."""
    return any(not isinstance(item, str) for item in parsed)


def _init_worker() -> None:
    """Math-Verify (sympy: seconds of imports) is imported here, not where this module is imported, so its import
    time stays out of the first check's timeout. SIGINT reaches a worker blocked (``_QuietSpawnProcess``) and is
    ignored here for good: the caller decides what stops and how."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import math_verify  # noqa: F401

    # Math-Verify warns once per process that its timeouts are off; that is deliberate here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


class _QuietSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that starts with SIGINT blocked. A terminal's Ctrl-C reaches every process of its group,
    and a fresh worker re-imports its caller's main module (a CLI: a second of imports) before any initializer
    can ignore it: a Ctrl-C then killed the worker, broke the pool and printed a traceback. A blocked signal stays
    blocked through fork and exec, so the whole start is covered; the caller's thread is blocked only while it
    forks, and a Ctrl-C it gets meanwhile is delivered when it unblocks."""

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _QuietSpawnContext(multiprocessing.context.SpawnContext):
    Process = _QuietSpawnProcess


# --- the pool --------------------------------------------------------------------------------------------

_lock = threading.Lock()
_pools: dict[int, tuple[int, ProcessPool]] = {}  # pid -> (workers, pool): a forked child never uses its parent's


def _get_pool(workers: int | None) -> ProcessPool:
    """This process's pool, created on first use and replaced when broken or asked for another size.

    Spawned, not forked: forking a process that runs threads (Prefect) or holds torch can deadlock the
    child. As with any spawn pool, a script that uses it needs the ``if __name__ == "__main__"`` guard.
    """
    with _lock:
        size, old = _pools.get(os.getpid(), (0, None))
        wanted = workers or size or min(4, os.cpu_count() or 1)
        if old is not None and size == wanted and old.active:
            return old
        pool = ProcessPool(max_workers=wanted, initializer=_init_worker, context=_QuietSpawnContext())
        _pools[os.getpid()] = (wanted, pool)
    if old is not None:
        if old.active:
            old.close()  # checks that other threads still run on it finish first
        threading.Thread(target=old.join, name="heal-verify-old-pool", daemon=True).start()
    return pool


def _shutdown() -> None:
    _, pool = _pools.get(os.getpid(), (0, None))
    if pool is not None:
        pool.stop()
        pool.join()


# A multiprocessing finalizer, not atexit: a process started by multiprocessing runs no atexit handlers, and it joins
# its non-daemon children (this pool's workers) before it exits, so without this it would wait for them for ever.
# Finalizers of priority >= 0 run before that join, in every process, the main one included.
multiprocessing.util.Finalize(None, _shutdown, exitpriority=10)
