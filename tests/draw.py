"""Sampling a list of prompts through the batched backend protocol, as the tests write it."""

from __future__ import annotations

from heal_core.backends.base import Generation, Request, TeacherBackend
from heal_core.config import SamplingConfig


def draw(
    backend: TeacherBackend, prompts: list[str], n: int, sampling: SamplingConfig, seed: int = 0
) -> list[list[Generation]]:
    """``n`` completions of each prompt, prompt i's request seeded ``seed + 1000 * i``."""
    return backend.generate([Request(p, n, seed + 1000 * i) for i, p in enumerate(prompts)], sampling)
