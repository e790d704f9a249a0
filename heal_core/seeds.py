"""How every generated row gets its seed, so that a row is the same whatever batch, call, wave or shard draws it.

A generation request (one prompt, or a prompt and a partial answer, with ``n`` completions) carries one seed;
completion j is drawn with seed ``seed + j`` and with nothing else: the HF backend gives each row its own
``torch.Generator``, and vLLM (engine or server) seeds the j-th child of an ``n > 1`` request with seed + j.
So splitting a call into smaller batches (``max_batch_sequences``, an out-of-memory split), drawing a problem's
samples in waves, or moving a problem to another shard, never changes a row.

Request seeds come from what the request is, never from where it sits: the run's ``teacher.sampling.seed``, the
stage, and the problem id (Stage I and II, evaluation) or the repaired parent's sample id (GEAR), hashed. The
hash keeps 62 bits, so ``seed + j`` fits the signed 64-bit integer servers accept for any j a run can ask for.
"""

from __future__ import annotations

import hashlib


def request_seed(base: int, *identity: str | int) -> int:
    """A seed for the request named by ``identity`` (e.g. ``("stage1", problem_id)``) in a run seeded ``base``."""
    digest = hashlib.blake2b(repr((base, *identity)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2
