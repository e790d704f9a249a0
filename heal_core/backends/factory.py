"""The one place a teacher backend is built from the config (``teacher.backend``).

Backends that need optional packages (vLLM) are imported here only when chosen, so choosing ``hf`` or
``openai`` never imports them.
"""

from __future__ import annotations

from typing import Literal

from heal_core.backends.base import TeacherBackend
from heal_core.config import TeacherConfig

BackendKind = Literal["hf", "vllm", "openai"]


def build_backend(
    config: TeacherConfig, model: str | None = None, *, dtype: str | None = None, kind: BackendKind | None = None
) -> TeacherBackend:
    """A backend for ``model`` (default ``config.model``; a resolved local path or a hub name).

    ``dtype`` overrides ``config.dtype`` (students are evaluated in their own dtype); ``kind`` overrides
    ``config.backend`` (a student cannot be evaluated on the teacher's server).
    """
    kind = kind or config.backend
    if kind == "hf":
        from heal_core.backends.hf import HFBackend as backend
    elif kind == "vllm":
        from heal_core.backends.vllm import VLLMBackend as backend
    else:
        from heal_core.backends.openai import OpenAIBackend as backend
    return backend.from_config(config, model, dtype)
