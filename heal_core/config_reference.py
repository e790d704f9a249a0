"""The config reference, generated from the one config model (``heal_core/config.py``): every key with its type,
default, the paper's value where it gives one, and its description.

Generated, not written, so it cannot drift: ``heal config explain [KEY]`` prints it, ``docs/config.md`` is its
Markdown form, and a test fails when that file is not what this module produces.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from heal_core.config import HealConfig

_PAPER = re.compile(r"paper: ([^);]+)")


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, as --set takes it
    type: str
    default: str  # JSON
    paper: str  # the paper's value, "" where the description names none
    description: str


def keys(model: type[BaseModel] = HealConfig, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of ``model``, in declaration order."""
    out = []
    for name, field in model.model_fields.items():
        key = prefix + name
        if _is_section(field.annotation):
            out += keys(field.annotation, key + ".")
            continue
        description = field.description or ""
        paper = _PAPER.search(description)
        out.append(KeyDoc(key, _type_name(field.annotation), json.dumps(field.get_default(call_default_factory=True)),
                          paper.group(1).strip() if paper else "", description))
    return out


def sections() -> list[tuple[str, str]]:
    """(top-level section, the first paragraph of its own docstring: not one it inherits)."""
    return [(name, inspect.cleandoc(vars(field.annotation).get("__doc__") or "").split("\n\n")[0].replace("\n", " "))
            for name, field in HealConfig.model_fields.items() if _is_section(field.annotation)]


def markdown() -> str:
    """The whole reference as ``docs/config.md`` holds it."""
    lines = ["# Configuration reference", "",
             "Generated from `heal_core/config.py` by `heal config explain --markdown > docs/config.md`; a test fails",
             "when this file is out of date. Set any key with `--set key=value` (parsed as YAML) or in a YAML config.", ""]
    docs = keys()
    for section, about in sections():
        lines += [f"## `{section}`", "", *([about, ""] if about else []),
                  "| key | type | default | paper | description |", "|---|---|---|---|---|"]
        lines += [f"| `{d.key}` | {_cell(d.type)} | `{_cell(d.default)}` | {_cell(d.paper)} | {_cell(d.description)} |"
                  for d in docs if d.key.startswith(section + ".")]
        lines.append("")
    return "\n".join(lines)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(v) for v in typing.get_args(annotation))
    if not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("heal_core.config.", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
