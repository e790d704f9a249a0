"""One run is worked on by one process at a time: a lease kept in the run's own storage.

Two ``heal resume``s of one run, or a Retry in the Prefect UI beside a resume, would otherwise both write the run:
its pin, its models (uploaded file by file), its markers, so that one attempt's weights could end up under the
other's marker. The lease makes the second one stop at once, naming the first.

**Why in storage, not in the Prefect server.** ``heal run`` and ``heal resume`` on a laptop each start a Prefect
server of their own, and a lock one server holds is invisible to the other; every process that works on a run
shares the run's storage, whatever its mode.

**How.** Leases are numbered objects, ``<run>/leases/lease-<n>.json``, each *created only if absent*
(``storage.create``: a hard link on a local or shared filesystem, a conditional PUT on S3), so two processes can
never both create the same number. The highest number is the current lease. A process takes the run by creating the
next number, which it may do only when the current lease is released or has expired; it renews its own lease every
third of ``orchestration.lease_seconds``. A holder that finds a higher number than its own has lost the run (it
paused for longer than the expiry, and another process took over) and stops with ``LeaseLost`` rather than work
beside the new holder. Expiry is wall-clock time, so the machines' clocks must agree to well within the expiry.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from heal_core import storage

LOST_SIGNAL = signal.SIGUSR1
"""The signal the renewing thread raises ``LeaseLost`` with in the main thread (its handler is ``held``'s)."""


class RunBusy(RuntimeError):
    """Another process holds the run's lease; the message names it."""


class LeaseLost(BaseException):
    """This process's lease expired and another process took the run over. A ``BaseException``, as
    ``KeyboardInterrupt`` is: it must stop the work wherever it lands, not be caught and retried by a task's
    ``except Exception``."""


@dataclass(frozen=True)
class Lease:
    holder: str  # host, pid and what it runs, for the message a second process prints
    owner: str  # what works on the run across its attempts: a flow run, whose retry may take its lease at once
    acquired: float
    expires: float
    released: bool = False

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        since = datetime.fromtimestamp(self.acquired, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{self.holder}, since {since}, lease renewed until {until}"


def _name(number: int) -> str:
    return f"lease-{number:08d}.json"


def _current(root: str, options: dict) -> tuple[int, Lease | None]:
    """The highest lease number under ``root`` and its lease (0, None when the run was never leased)."""
    names = [uri.rsplit("/", 1)[-1] for uri in storage.list_files(root, options)]
    numbers = sorted(int(n[6:14]) for n in names if n.startswith("lease-") and n.endswith(".json"))
    if not numbers:
        return 0, None
    return numbers[-1], Lease(**storage.read_json(storage.join(root, _name(numbers[-1])), options))


def acquire(run_root: str, options: dict, seconds: float, what: str, owner: str) -> tuple[int, Lease]:
    """Take the run's lease, or raise ``RunBusy`` naming its holder. A lease of the same ``owner`` is taken at
    once: an attempt of a flow run ends before its retry starts (Prefect runs one at a time), so it is the retry's,
    even when the attempt could not release it (its storage was down as it failed)."""
    root = storage.join(run_root, "leases")
    number, current = _current(root, options)
    now = time.time()
    if current is not None and not current.released and current.expires > now and current.owner != owner:
        raise RunBusy(
            f"run {run_root} is being worked on by {current.describe()}; wait for it to finish, or stop "
            f"it, before running it here (a stopped holder's lease expires within {seconds:.0f} s)"
        )
    mine = Lease(f"{socket.gethostname()} pid {os.getpid()} ({what})", owner, now, now + seconds)
    if not storage.create(json.dumps(asdict(mine)).encode(), storage.join(root, _name(number + 1)), options):
        _, winner = _current(root, options)
        raise RunBusy(f"run {run_root} was just taken by {winner.describe() if winner else 'another process'}")
    if number > 1:  # the one before the superseded lease; older ones went the same way
        storage.remove(storage.join(root, _name(number - 1)), options)
    return number + 1, mine


def _renew(
    root: str,
    options: dict,
    number: int,
    lease: Lease,
    seconds: float,
    stop: threading.Event,
    lost: list[str],
    signum: int,
) -> None:
    """Every third of the expiry: lost if a later lease exists (then the main thread is interrupted with
    ``signum``), else rewrite this one with a later expiry."""
    while not stop.wait(seconds / 3):
        try:
            latest, _ = _current(root, options)
            if latest != number:
                lost.append(f"this process's lease on the run expired and lease {latest} took it over")
                _thread.interrupt_main(signum)
                return
            lease = Lease(lease.holder, lease.owner, lease.acquired, time.time() + seconds)
            storage.write_json(asdict(lease), storage.join(root, _name(number)), options)
        except storage.StorageError:
            continue  # an outage: try again; the lease lasts the expiry meanwhile


@contextlib.contextmanager
def held(run_root: str, options: dict, seconds: float, what: str, owner: str) -> Iterator[None]:
    """Hold the run's lease for the ``with`` block: renewed in a thread, released at the end (also on an error
    or Ctrl-C), so the next process may take the run at once. Called from the main thread, as a flow function is;
    a lost lease raises ``LeaseLost`` in it through ``LOST_SIGNAL``'s handler, installed for the block (whatever
    SIGINT's handling is: a process that ignores Ctrl-C still stops)."""
    number, lease = acquire(run_root, options, seconds, what, owner)
    root = storage.join(run_root, "leases")
    stop, lost = threading.Event(), []

    def raise_lost(signum: int, frame: object) -> None:
        raise LeaseLost(f"run {run_root}: {lost[0] if lost else 'lease lost'}; this process stopped")

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
    previous = signal.signal(LOST_SIGNAL, raise_lost) if main else None
    signum = LOST_SIGNAL if main else signal.SIGINT  # elsewhere: as a Ctrl-C, turned into LeaseLost below
    renewer = threading.Thread(
        target=_renew, args=(root, options, number, lease, seconds, stop, lost, signum), daemon=True, name="heal-lease"
    )
    renewer.start()
    try:
        yield
    except KeyboardInterrupt:
        if lost:
            raise LeaseLost(f"run {run_root}: {lost[0]}; this process stopped") from None
        raise
    finally:
        stop.set()
        renewer.join()
        if main:
            signal.signal(LOST_SIGNAL, previous)
        if not lost:
            released = Lease(lease.holder, lease.owner, lease.acquired, time.time(), released=True)
            with contextlib.suppress(storage.StorageError):
                storage.write_json(asdict(released), storage.join(root, _name(number)), options)
