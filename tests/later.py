"""The config model of a later heal, made in place: settings added, renamed or removed as a later version of
``heal_core/config.py`` would declare them, for as long as a ``with`` block lasts.

The classes themselves are changed (their pydantic fields, then a rebuild of every model that holds them), not
copied, so every code path that names ``HealConfig`` or a section (parsing, hashing, the pipeline, the CLI) runs
against the later model, as it would after an upgrade.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from heal_core import config

MODELS = [
    cls
    for cls in vars(config).values()
    if isinstance(cls, type) and issubclass(cls, config._Section) and cls is not config._Section
]


@dataclass(frozen=True)
class Added:
    section: type[BaseModel]
    name: str
    annotation: Any
    field: FieldInfo  # from heal_core.settings.setting(...)


def _rebuild(cls: type[BaseModel], done: set[type]) -> None:
    """Rebuild ``cls`` after every model it holds (directly or in a list), so each picks up the others' fields."""
    if cls in done:
        return
    for field in cls.model_fields.values():
        for inner in (field.annotation, *get_args(field.annotation)):
            if isinstance(inner, type) and issubclass(inner, config._Section):
                _rebuild(inner, done)
    cls.model_rebuild(force=True)
    done.add(cls)


def _rebuild_all() -> None:
    done: set[type] = set()
    for cls in MODELS:
        _rebuild(cls, done)


@contextlib.contextmanager
def later_version(added: list[Added] = (), removed: list[tuple[type[BaseModel], str]] = ()) -> Iterator[None]:
    """The config model with ``added`` settings and without ``removed`` (section, name) ones; restored after."""
    saved = {cls: (dict(cls.__pydantic_fields__), dict(cls.__annotations__)) for cls in MODELS}
    try:
        for cls, name in removed:
            del cls.__pydantic_fields__[name]
            cls.__annotations__.pop(name, None)
        for a in added:
            a.section.__pydantic_fields__[a.name] = FieldInfo.merge_field_infos(a.field, annotation=a.annotation)
            a.section.__annotations__[a.name] = a.annotation
        _rebuild_all()
        yield
    finally:
        for cls, (fields, annotations) in saved.items():
            cls.__pydantic_fields__.clear()
            cls.__pydantic_fields__.update(fields)
            cls.__annotations__.clear()
            cls.__annotations__.update(annotations)
        _rebuild_all()
