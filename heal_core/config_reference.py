"""The config reference, generated from the one config model's JSON schema (``HealConfig.model_json_schema()``):
every key with its type, its constraints (bounds, choices, patterns: what pydantic refuses), default, role, the
paper's value where it gives one (``setting(paper=...)``), and its description.

Generated, not written, so it cannot drift: ``heal config explain [KEY]`` prints it, ``docs/config.md`` is its
Markdown form (a test fails when that file is not what this module produces), and ``heal config schema`` prints
the schema itself, for editors (YAML language servers) and for other tools.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from heal_core.config import HealConfig
from heal_core.settings import Declaration, Role, is_section

_TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "None", "object": "dict"}
_BOUNDS = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, as --set takes it
    type: str
    constraints: str  # the schema's bounds and patterns, "" where there are none (choices are in ``type``)
    default: str  # JSON
    role: str  # the step it shapes and the hashes it enters (heal_core/settings.py)
    paper: str  # the paper's value, "" where it names none
    description: str


def schema() -> dict[str, Any]:
    """The config's JSON schema, as pydantic writes it (``heal config schema``)."""
    return HealConfig.model_json_schema()


def keys(model_schema: Mapping[str, Any] | None = None) -> list[KeyDoc]:
    """Every leaf key of the config, in declaration order."""
    root = model_schema or schema()
    return [
        KeyDoc(
            key,
            _type_name(prop, root),
            _constraints(prop),
            json.dumps(prop.get("default")),
            role_text(Declaration.from_json(prop["heal"]) if "heal" in prop else None),
            prop.get("paper", ""),
            prop.get("description", ""),
        )
        for key, prop in _leaves(root, root)
    ]


def _leaves(model: Mapping[str, Any], root: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted key, property schema) of every leaf: a property that is a nested model (a bare ``$ref``) is a
    section, walked into; anything else, lists of models included, is a setting."""
    for name, prop in model["properties"].items():
        if "$ref" in prop:
            yield from _leaves(_resolve(prop["$ref"], root), root, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", prop


def _resolve(ref: str, root: Mapping[str, Any]) -> dict[str, Any]:
    return root["$defs"][ref.rsplit("/", 1)[-1]]


def _type_name(prop: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    """``int``, ``list[str]``, ``hf | vllm | openai`` (an enum's choices), ``... | None``."""
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " | ".join(_type_name(option, root) for option in prop["anyOf"])
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if prop.get("type") == "array":
        return f"list[{_type_name(prop.get('items', {}), root)}]"
    return _TYPES.get(prop.get("type", ""), prop.get("type", "any"))


def _constraints(prop: Mapping[str, Any]) -> str:
    """The bounds, lengths and patterns pydantic checks, as a reader states them: ``> 0, ≤ 2``."""
    parts = [f"{sign} {prop[bound]}" for bound, sign in _BOUNDS.items() if bound in prop]
    if "minItems" in prop:
        parts.append(f"at least {prop['minItems']} item{'s' if prop['minItems'] != 1 else ''}")
    if "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    items = _constraints(prop.get("items", {})) if prop.get("type") == "array" else ""
    if items:
        parts.append(f"each {items}")
    for option in prop.get("anyOf", ()):
        if _constraints(option):
            parts.append(_constraints(option))
    return ", ".join(parts)


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
            "| key | type | constraints | default | role | paper | description |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| `{d.key}` | {_cell(d.type)} | {_cell(d.constraints)} | `{_cell(d.default)}` | {d.role} | "
            f"{_cell(d.paper)} | {_cell(d.description)} |"
            for d in docs
            if d.key.startswith(section + ".")
        ]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
