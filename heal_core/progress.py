"""Progress inside long steps: which stage of which unit runs, rows and tokens done of those planned, rate, ETA.

On a GPU cluster one shard runs for an hour; without this a user sees "shard 0: 64 problems" and then silence.
The steps say where they are (``stage``: a shard's Stage I, II, III and PURE, an evaluation, a training stage),
backends and trainers say what they finished (``advance``), and whoever shows progress listens (``listen``): the
CLI's live line, a shard's Prefect progress artifact. Listeners are process-wide, as the work they watch is: an
embedded run's shards run in the CLI's process, a deployment's in its worker's.

Written here because no library fits: rich and tqdm draw bars but do not carry events from a backend up to a
Prefect artifact and a terminal at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Snapshot:
    unit: str  # what the stage belongs to: "shard 0", "eval heal seed 0", "train heal seed 0"
    stage: str  # "I", "II", "III", "PURE", "eval", "stage2", ...
    planned: int  # rows (or training steps) the stage will do
    done: int = 0
    tokens: int = 0
    started: float = 0.0  # time.monotonic() when the stage began
    loss: float | None = None  # training stages: the last logged loss

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the stage's rate so far; None before its first row."""
        return self.elapsed * (self.planned - self.done) / self.done if self.done else None

    def line(self) -> str:
        eta = "—" if self.eta_s is None else time.strftime("%H:%M:%S", time.gmtime(self.eta_s))
        loss = "" if self.loss is None else f" · loss {self.loss:.3f}"
        tokens = f" · {self.tokens:,} tokens · {self.tokens_per_s:,.0f} tok/s" if self.tokens else ""
        return f"{self.unit} · {self.stage} · {self.done:,}/{self.planned:,}{tokens}{loss} · ETA {eta}"


Listener = Callable[[Snapshot], None]

_lock = threading.Lock()
_listeners: list[Listener] = []
_current = threading.local()  # per thread: Prefect runs tasks in threads, each with its own stage


def _set(snapshot: Snapshot | None) -> None:
    _current.snapshot = snapshot
    if snapshot is not None:
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(snapshot)


def current() -> Snapshot | None:
    return getattr(_current, "snapshot", None)


@contextmanager
def unit(name: str) -> Iterator[None]:
    """Stages begun inside belong to ``name`` (a shard, an evaluation, a training run)."""
    previous = getattr(_current, "unit", "")
    _current.unit = name
    try:
        yield
    finally:
        _current.unit = previous


def stage(name: str, planned: int) -> None:
    """A stage of the current unit begins: ``planned`` rows (or steps) to go."""
    _set(Snapshot(getattr(_current, "unit", "") or "run", name, planned, started=time.monotonic()))


def advance(rows: int, tokens: int = 0, loss: float | None = None) -> None:
    """``rows`` more done (``tokens`` generated with them) in this thread's stage; nothing when none runs."""
    snapshot = current()
    if snapshot is not None:
        _set(
            replace(
                snapshot,
                done=snapshot.done + rows,
                tokens=snapshot.tokens + tokens,
                loss=snapshot.loss if loss is None else loss,
            )
        )


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


class Every:
    """A listener that passes on at most one snapshot per ``seconds`` and every stage's first, so a display or
    an API is not called once per row."""

    def __init__(self, seconds: float, listener: Listener) -> None:
        self.seconds, self.listener = seconds, listener
        self._last: tuple[str, str, float] = ("", "", 0.0)
        self._lock = threading.Lock()

    def __call__(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        with self._lock:
            unit_, stage_, at = self._last
            if (snapshot.unit, snapshot.stage) == (unit_, stage_) and now - at < self.seconds:
                return
            self._last = (snapshot.unit, snapshot.stage, now)
        self.listener(snapshot)
