"""The embedded default: a synthetic reasoning task, a bundled tiny teacher and student, small enough for a laptop."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from heal_core.problems import Problem

MODELS = Path(__file__).parent / "models"


def bundled_model(role: str) -> Path:
    """The committed tiny ``teacher`` or ``student`` checkpoint (see heal_core/demo/models/README.md)."""
    return MODELS / role


def demo_problems(name: str) -> list[Problem]:
    """Problems of the demo task's ``generation`` or ``eval`` split (disjoint from the teacher's training data)."""
    from heal_core.demo.teacher import split

    return [w.problem for w in split(name)]


def demo_defaults() -> dict[str, Any]:
    """The embedded default config mapping (``default.yaml``): what ``heal run`` without a config runs."""
    return yaml.safe_load(resources.files(__name__).joinpath("default.yaml").read_text(encoding="utf-8"))
