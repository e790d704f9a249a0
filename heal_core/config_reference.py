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
from heal_core.settings import Declaration, Role, is_section, leaves

_PAPER = re.compile(r"paper: ([^);]+)")


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, as --set takes it
    type: str
    default: str  # JSON
    role: str  # the step it shapes and the hashes it enters (heal_core/settings.py)
    paper: str  # the paper's value, "" where the description names none
    description: str


def keys(model: type[BaseModel] = HealConfig) -> list[KeyDoc]:
    """Every leaf key of ``model``, in declaration order."""
    out = []
    for leaf in leaves(model):
        section, _, name = leaf.path.rpartition(".")
        owner = model
        for part in filter(None, section.split(".")):
            owner = owner.model_fields[part].annotation
        field = owner.model_fields[name]
        description = field.description or ""
        paper = _PAPER.search(description)
        out.append(
            KeyDoc(
                leaf.path,
                _type_name(field.annotation),
                json.dumps(field.get_default(call_default_factory=True)),
                role_text(leaf.declaration),
                paper.group(1).strip() if paper else "",
                description,
            )
        )
    return out


def role_text(declaration: Declaration | None) -> str:
    """``generation + evaluation``, ``training (config hash only)``, ``execution``; ``, since 0.2.0`` for a setting
    added after heal 0.1.0, whose introduction default is in no hash."""
    if declaration is None:
        return "undeclared"
    text = " + ".join([declaration.role.value, *(r.value for r in declaration.also)])
    if not declaration.keyed and declaration.role != Role.EXECUTION:
        text += " (config hash only)"
    if declaration.introduced is not None:
        text += f", since {declaration.introduced.version}"
    return text


def sections() -> list[tuple[str, str]]:
    """(top-level section, the first paragraph of its own docstring: not one it inherits)."""
    return [
        (name, inspect.cleandoc(vars(field.annotation).get("__doc__") or "").split("\n\n")[0].replace("\n", " "))
        for name, field in HealConfig.model_fields.items()
        if is_section(field.annotation)
    ]


def markdown() -> str:
    """The whole reference as ``docs/config.md`` holds it."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `heal_core/config.py` by `heal config explain --markdown > docs/config.md`; a test fails",
        "when this file is out of date. Set any key with `--set key=value` (parsed as YAML) or in a YAML config.",
        "",
        "A key's *role* is the step whose output it shapes, and so the fingerprints it enters "
        "(`heal_core/settings.py`):",
        "`problems` (which problems, how they are sharded), `generation` (the teacher's samples and PURE's scores: "
        "the generation store's key), `selection` (which rows are kept), `training`, `evaluation`, and "
        "`execution` (where and how the work runs: in no hash). Every key outside `execution` is in the run's "
        'config hash; "config hash only" marks one its step\'s store keys otherwise.',
        "",
    ]
    docs = keys()
    for section, about in sections():
        lines += [
            f"## `{section}`",
            "",
            *([about, ""] if about else []),
            "| key | type | default | role | paper | description |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| `{d.key}` | {_cell(d.type)} | `{_cell(d.default)}` | {d.role} | {_cell(d.paper)} | "
            f"{_cell(d.description)} |"
            for d in docs
            if d.key.startswith(section + ".")
        ]
        lines.append("")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(v) for v in typing.get_args(annotation))
    if not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("heal_core.config.", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
