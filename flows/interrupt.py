"""Ctrl-C and SIGTERM on ``heal run``: stop within seconds, with one line saying how to continue.

Storage writes are atomic (``heal_core.storage``), so an interrupted run leaves nothing partial, and ``heal
resume`` redoes only what did not finish. The interrupt is re-sent every ``RESEND_S`` seconds until the run has
stopped: a ``KeyboardInterrupt`` that lands inside Prefect's own state handling can be swallowed there (seen
when it arrived as a shard task finished), and the run would go on to the end.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

RESEND_S = 2.0


@dataclass
class Interrupt:
    happened: bool = False


@contextmanager
def stop_on_signal() -> Iterator[Interrupt]:
    """Inside: SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread, and the block ends with
    ``happened`` set. After an interrupt both signals stay ignored, so the cleanup that follows (the local API
    server's shutdown) is not cut short by a second Ctrl-C; otherwise the previous handlers come back."""
    state, stop = Interrupt(), threading.Event()

    def resend() -> None:
        while not stop.wait(RESEND_S):
            os.kill(os.getpid(), signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if not state.happened:
            state.happened = True
            threading.Thread(target=resend, name="heal-interrupt", daemon=True).start()
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    except KeyboardInterrupt:
        state.happened = True
    finally:
        for s, old in previous.items():
            signal.signal(s, signal.SIG_IGN if state.happened else old)
        stop.set()
