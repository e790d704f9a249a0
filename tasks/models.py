"""Resolve model references before any work starts, so a typo fails in a second, not after sampling."""

from __future__ import annotations

import os
from pathlib import Path

from heal_core.demo import bundled_model


def resolve_model(reference: str, role: str) -> str:
    """A configured path or hub name, or the bundled demo model for ``role`` when none is configured.

    A reference that looks like a path (absolute, ``./``, ``~``) must exist; so must any reference when the
    hub is offline (``HF_HUB_OFFLINE=1``), since nothing could be downloaded.
    """
    if not reference:
        return str(bundled_model(role))
    path = Path(reference).expanduser()
    looks_local = reference.startswith((".", "/", "~")) or path.exists()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if (looks_local or offline) and not (path / "config.json").is_file():
        where = "does not exist" if not path.exists() else "has no config.json"
        raise FileNotFoundError(f"{role} model path {reference} {where} (config key {role}.model)")
    return str(path) if looks_local else reference
