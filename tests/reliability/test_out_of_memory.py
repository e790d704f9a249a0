"""A generation call that runs out of accelerator memory is split, down to one row, and gives the rows the full
batch would have given (issue K, item 2).

The fault is injected in the model's forward, as a device would raise it: from the second batch of a call on,
any forward over more than ``FITS`` rows raises ``torch.OutOfMemoryError``. Rows are seeded one by one
(``heal_core/seeds.py``), so the split changes no token.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from heal_core.backends.base import PrefixQuery, Request
from heal_core.backends.hf import HFBackend
from heal_core.config import SamplingConfig

PROMPTS = ["What is 2 + 3?", "Ann has 12 apples and buys 30 more. How many apples does she have now?", "x"]
SAMPLING = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10)
REQUESTS = [Request(p, 4, 31 * i) for i, p in enumerate(PROMPTS)]  # 12 rows: calls of 8 and 4 rows
FITS = 3


class DeviceMemory:
    """A forward pre-hook that runs out of memory on batches above ``fits`` rows, once ``armed_after`` prefill
    forwards (one per generate call) have gone through."""

    def __init__(self, fits: int, armed_after: int) -> None:
        self.fits, self.armed_after, self.prefills, self.raised = fits, armed_after, 0, 0

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.shape[1] > 1:
            self.prefills += 1
        if self.prefills > self.armed_after and ids.shape[0] > self.fits:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")


@pytest.fixture
def backend(tiny_model_dirs) -> HFBackend:
    return HFBackend(str(tiny_model_dirs["qwen2"]), "float32", "cpu", max_batch_sequences=8)


def test_a_call_that_runs_out_of_memory_is_split_and_gives_the_same_rows(backend, caplog):
    reference = backend.generate(REQUESTS, SAMPLING)
    memory = DeviceMemory(FITS, armed_after=1)
    handle = backend.model.register_forward_pre_hook(memory, with_kwargs=True)
    try:
        with caplog.at_level(logging.WARNING, logger="heal_core.backends.hf"):
            constrained = backend.generate(REQUESTS, SAMPLING)
    finally:
        handle.remove()
    assert memory.raised == 1  # the second batch (4 rows) ran out once, then its halves fit
    assert backend.batch_rows == 2  # the largest size that fitted is kept for the rest of the shard
    assert [r.getMessage() for r in caplog.records] == [
        "out of accelerator memory with 4 rows per call: using 2 from now on"
    ]
    for want, got in zip(reference, constrained, strict=True):
        assert [g.token_ids for g in got] == [g.token_ids for g in want]
        assert [(g.text, g.finish_reason, g.seed) for g in got] == [(g.text, g.finish_reason, g.seed) for g in want]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a.entropy, b.entropy, atol=1e-5)


def test_a_single_row_that_does_not_fit_fails_naming_its_length(backend):
    memory = DeviceMemory(0, armed_after=0)
    handle = backend.model.register_forward_pre_hook(memory, with_kwargs=True)
    try:
        with pytest.raises(
            torch.OutOfMemoryError,
            match=r"one row of \d+ prompt tokens \+ max_new_tokens=10 does not "
            r"fit.*teacher.sampling.max_new_tokens",
        ):
            backend.generate(REQUESTS[:1], SAMPLING)
    finally:
        handle.remove()
    assert memory.raised == 3  # 4 rows, then 2, then 1


def test_a_scoring_group_that_runs_out_of_memory_is_split_and_scores_the_same(backend, caplog):
    queries = [
        PrefixQuery(p, ("Step one.", "\n\n2 + 3 = 5.", f"\n\nSo {i}."), "\n\nThe final answer is \\boxed{", f"{i}}}")
        for i, p in enumerate(PROMPTS)
    ]
    reference = backend.score_prefixes(queries)
    memory = DeviceMemory(1, armed_after=0)
    handle = backend.model.register_forward_pre_hook(memory, with_kwargs=True)
    try:
        with caplog.at_level(logging.WARNING, logger="heal_core.backends.hf"):
            constrained = backend.score_prefixes(queries)
    finally:
        handle.remove()
    assert memory.raised == 1 and backend.score_rows == 1  # 3 trajectories ran out, then one by one (3 // 2)
    assert backend.batch_rows == 8  # generation keeps its own limit
    assert len(caplog.records) == 1
    for want, got in zip(reference, constrained, strict=True):
        for a, b in zip(
            got.segment_logprobs + got.answer_logprobs, want.segment_logprobs + want.answer_logprobs, strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-5)
