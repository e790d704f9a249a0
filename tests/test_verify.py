"""Answer verification: extraction, Math-Verify semantics, benchmark agreement, threads, timeouts, crashes.

Nothing here is mocked: every check runs Math-Verify in the real worker pool.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from heal_core import verify
from heal_core.verify import Verdict, check, check_many, extract_answer, is_correct

WORKERS = min(4, os.cpu_count() or 1)
# Sympy tries to evaluate the tower when comparing it with 1: measured > 120 s without a limit (CPU-bound,
# ~160 MB), so any finite timeout must cut it.
TOWER = "9^{9^{9^{9^{9}}}}"
SLOW = f"So the answer is \\boxed{{{TOWER}}}."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $x = \boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b^{2}}}}", r"\sqrt{\frac{a}{b^{2}}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not grouping
        (r"first \boxed{7}, then corrected: \boxed {9}", "9"),
        (r"\boxed{a + \fbox{b}}", r"a + \fbox{b}"),  # a nested box belongs to the outer one
        (r"\fbox{42}", "42"),
        (r"\boxed{ 12 }", "12"),
        (r"\boxed{3} but wait, \boxed{4", None),  # a truncated last box is no answer, not the earlier one
        (r"\boxed{\frac{1}{2}", None),
        ("the answer is 7", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


CASES = [
    (r"\boxed{0.5}", r"\frac12", "correct"),
    (r"\boxed{\frac12}", "0.5", "correct"),
    (r"\boxed{\dfrac72}", "3.5", "correct"),
    (r"\boxed{3.5}", r"\dfrac{7}{2}", "correct"),
    (r"\boxed{3.6}", r"\dfrac{7}{2}", "wrong"),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}", "correct"),
    (r"\boxed{\{1, 3\}}", r"\{1,2\}", "wrong"),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", "correct"),
    (r"\boxed{(\frac{\pi}{2}, 3)}", r"\left( 3, \frac{\pi}{2} \right)", "wrong"),
    (r"\boxed{10\%}", r"10\%", "correct"),
    (r"\boxed{10}", r"10\%", "correct"),
    (r"\boxed{1\,000}", "1000", "correct"),  # without normalisation Math-Verify reads 1*0
    (r"\boxed{1000}", r"1\,000", "correct"),
    (r"\boxed{1{,}000}", "1000", "correct"),
    (r"\boxed{1~000}", "1000", "correct"),
    (r"\boxed{2\,500\,000}", "2500000", "correct"),
    (r"\boxed{1\,001}", "1000", "wrong"),
    (r"\boxed{(1,\,2)}", "(1, 2)", "correct"),  # a spaced list is not a thousands separator
    (r"\boxed{4{,}321}", r"\$4,\!321", "correct"),  # an escaped dollar is not a math delimiter
    (r"\boxed{x = 3}", "3", "correct"),
    (r"\boxed{8}", "7", "wrong"),
    ("the answer is 7", "7", "no_answer"),  # never "the last number in the text"
    ("so it is \\boxed{7", "7", "no_answer"),
    (r"\boxed{}", "7", "unparseable"),
    (r"\boxed{1 +}", "7", "unparseable"),
    (r"\boxed{1}", "", "bad_gold"),
    (r"\boxed{1}", r"\frac{", "bad_gold"),
    ("no box at all", r"\frac{", "bad_gold"),  # a bad gold is reported for every sample of the problem
]


def test_constructed_cases() -> None:
    verdicts = check_many([(prediction, gold) for prediction, gold, _ in CASES])
    got = [(prediction, gold, verdict.status) for (prediction, gold, _), verdict in zip(CASES, verdicts)]
    assert got == CASES
    assert all(verdict.correct == (verdict.status == "correct") for verdict in verdicts)


def test_a_truncated_generation_is_never_correct() -> None:
    pairs = [(r"so \boxed{4}, or is it", "4"), (r"so \boxed{4}.", "4")]
    cut, finished = check_many(pairs, truncated=[True, False])
    assert cut == Verdict(False, "truncated", "4") and finished == Verdict(True, "correct", "4")
    with pytest.raises(ValueError, match="flags"):
        check_many(pairs, truncated=[True])


def test_single_check_api() -> None:
    assert check(r"It is \boxed{\frac{1}{2}}.", "0.5") == Verdict(True, "correct", r"\frac{1}{2}")
    assert is_correct(r"\boxed{2}", "2")
    assert not is_correct("2", "2")
    assert check_many([]) == []
    with pytest.raises(ValueError, match="timeout"):
        check(r"\boxed{2}", "2", timeout=0)
    with pytest.raises(ValueError, match="inconsistent"):
        Verdict(True, "wrong", "2")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_math500_solutions_verify_against_their_answers(benchmarks_dir: Path) -> None:
    records = _read_jsonl(benchmarks_dir / "math500_test.jsonl")
    start = time.monotonic()
    verdicts = check_many([(r["solution"], r["answer"]) for r in records], workers=WORKERS)
    disagree = [(r["unique_id"], v.status) for r, v in zip(records, verdicts) if not v.correct]
    agreement = 1 - len(disagree) / len(records)
    print(
        f"\nMATH-500 solution vs answer: {agreement:.1%} agree ({len(records) - len(disagree)}/{len(records)}), "
        f"{time.monotonic() - start:.1f} s; disagreeing: {disagree}"
    )
    assert agreement >= 0.97

    rng = random.Random(0)
    others = [rng.choice([o for o in records if o["answer"].strip() != r["answer"].strip()]) for r in records]
    verdicts = check_many([(r["solution"], o["answer"]) for r, o in zip(records, others)], workers=WORKERS)
    passed = [(r["unique_id"], o["unique_id"]) for r, o, v in zip(records, others, verdicts) if v.correct]
    rate = len(passed) / len(records)
    print(f"MATH-500 shuffled pairs verified correct: {rate:.1%} ({len(passed)}/{len(records)}): {passed}")
    assert rate <= 0.02


def test_gsm8k_final_answers(benchmarks_dir: Path) -> None:
    records = _read_jsonl(benchmarks_dir / "gsm8k_test.jsonl")
    finals = [r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in records]
    start = time.monotonic()
    right = check_many([(f"The total is \\boxed{{{n}}}.", n) for n in finals], workers=WORKERS)
    wrong = check_many([(f"\\boxed{{{int(n) + 1}}}", n) for n in finals], workers=WORKERS)
    print(f"\nGSM8K: {2 * len(finals)} checks in {time.monotonic() - start:.1f} s")
    assert [n for n, v in zip(finals, right) if v.status != "correct"] == []
    assert [n for n, v in zip(finals, wrong) if v.status != "wrong"] == []


def test_pool_created_and_used_from_a_thread() -> None:
    before = verify._pools.get(os.getpid())
    result: list[list[Verdict]] = []
    # A size no other test uses, so this thread creates a new pool.
    thread = threading.Thread(
        target=lambda: result.append(
            check_many([(r"\boxed{\frac{1}{2}}", "0.5"), (r"\boxed{3}", "4")], workers=WORKERS + 1)
        )
    )
    thread.start()
    thread.join(timeout=60)
    assert verify._pools[os.getpid()] != before
    assert [v.status for v in result[0]] == ["correct", "wrong"]


def test_checks_from_a_thread_pool_executor() -> None:
    with ThreadPoolExecutor(max_workers=4) as executor:
        verdicts = list(executor.map(lambda i: check(f"\\boxed{{{i}}}", str(i + i % 2)), range(8)))
    assert [v.status for v in verdicts] == ["correct", "wrong"] * 4


def test_pathological_input_times_out_from_a_thread_and_pool_recovers() -> None:
    timeout = 2.0
    # The same check without our limit, to show the input really runs past it.
    unbounded = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from math_verify import parse, verify; "
            f"verify(parse('$1$', parsing_timeout=None), parse(r'{SLOW}', parsing_timeout=None), timeout_seconds=None)",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        with ThreadPoolExecutor(max_workers=1) as executor:
            start = time.monotonic()
            verdict = executor.submit(check, SLOW, "1", timeout=timeout).result()
            elapsed = time.monotonic() - start
        print(f"\ntimeout verdict after {elapsed:.1f} s (limit {timeout} s)")
        assert verdict == Verdict(False, "timeout", TOWER)
        assert elapsed < timeout + 5
        with pytest.raises(subprocess.TimeoutExpired):  # still running after twice the limit
            unbounded.wait(timeout=max(0.0, 2 * timeout - elapsed))
    finally:
        unbounded.kill()
        unbounded.wait()
    verdicts = check_many([(SLOW, "1"), (r"\boxed{2}", "2"), (r"\boxed{3}", "2")], timeout=timeout)
    assert [v.status for v in verdicts] == ["timeout", "correct", "wrong"]


def test_killed_worker_gives_error_and_pool_recovers() -> None:
    with ThreadPoolExecutor(max_workers=1) as executor:
        future = executor.submit(check_many, [(SLOW, "1")], timeout=60, workers=1)
        time.sleep(3)  # the one-worker pool starts and runs the slow check
        workers = [p for p in multiprocessing.active_children() if p.name == "pebble_pool_worker"]
        assert workers
        for worker in workers:  # what the out-of-memory killer would do
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
        verdict = future.result(timeout=30)[0]
    assert verdict == Verdict(False, "error", TOWER)
    assert check(r"\boxed{\frac{3}{4}}", "0.75") == Verdict(True, "correct", r"\frac{3}{4}")


_SLOW_STARTING_CALLER = """
import os, signal, sys, threading, time
if __name__ == "__mp_main__":
    time.sleep(3)  # a worker re-imports its caller's main module first: here, a slow one (a CLI's imports)
if __name__ == "__main__":
    from heal_core.verify import check_many
    signal.signal(signal.SIGINT, lambda *_: print("caller interrupted", flush=True))
    threading.Timer(1.0, os.killpg, (0, signal.SIGINT)).start()  # Ctrl-C while the worker is still starting
    print([v.status for v in check_many([(r"\\boxed{2}", "2"), (r"\\boxed{3}", "2")], workers=1)], flush=True)
"""


def test_ctrl_c_while_a_worker_starts_leaves_it_running_and_prints_no_traceback(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches every process of its group, workers too, and it can land before a fresh
    worker's initializer ignores it: while the worker re-imports its caller's main module. That printed a
    KeyboardInterrupt traceback from the middle of a CLI's imports, and killed the worker (seen in CI)."""
    script = tmp_path / "caller.py"
    script.write_text(_SLOW_STARTING_CALLER)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["caller interrupted", "['correct', 'wrong']"], done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
