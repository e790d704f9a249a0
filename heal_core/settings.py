"""What each setting is for, declared where the setting is declared, and every hash derived from that.

A setting's *role* is the step whose output it shapes. The run's config hash and each step's fingerprint
(``heal_core/fingerprints.py``) are computed from the roles, so filing a new setting is one word beside it, and a
test fails on a setting that declares none:

* ``problems``: which problems a run samples and how they are split into shards. In the config hash only: the
  stores key problems by their content.
* ``generation``: the teacher's completions and PURE's scores of them (the generation store's key).
* ``selection``: which generated rows are kept, and through the caps which waves are drawn.
* ``training``: how a (variant, seed) is trained from a run's data.
* ``evaluation``: how each model is sampled and scored on a set.
* ``execution``: where and how the work runs (storage, pools, retries, endpoints). In no hash: a run started on a
  laptop resumes on a cluster.

A setting may shape a second step's output as well (``also``: the teacher's prompt template is how the teacher is
evaluated too), and may be left out of its own step's fingerprint where that step keys it otherwise (``keyed=False``:
the generation store names the teacher by its files, not by ``teacher.model``; each model is keyed by its own
variant and seed, not by the list of them). Every setting outside ``execution`` is in the run's config hash.

**Upgrades keep the stores.** Three rules keep every hash of an existing config stable when heal changes:

1. *A new setting at its introduction default is in no hash.* It declares ``introduced=Introduced(version,
   default)``, its default on the day it was added; a value equal to that is left out of every hash, so adding it
   changes nothing for anyone, while any other value (set by a user, or a later change of the default) enters the
   hash of its role. The settings of heal 0.1.0 have no ``introduced``: they are always hashed, as they always were.
2. *A rename changes no hash.* ``renamed_from`` lists a setting's earlier dotted names, oldest first; an old config
   is read through them with one warning (``heal config migrate FILE`` rewrites it), and the hashes keep the oldest
   name.
3. *A removal keeps the hash of a config that did not rely on it.* ``REMOVED`` (``heal_core/config.py``) records a
   removed setting with the value today's code behaves as; an old config holding that value (or any value of an
   execution setting) loads with a warning and hashes as before; one holding another value is refused, naming the
   setting and what replaced it, because today's code would silently compute something else.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, get_args, get_origin

from pydantic import BaseModel, Field

BASELINE = "0.1.0"
"""The version whose settings are always hashed (``introduced`` is for settings added after it)."""


class Role(StrEnum):
    PROBLEMS = "problems"
    GENERATION = "generation"
    SELECTION = "selection"
    TRAINING = "training"
    EVALUATION = "evaluation"
    EXECUTION = "execution"


FINGERPRINTED = (Role.GENERATION, Role.SELECTION, Role.TRAINING, Role.EVALUATION)
"""The steps whose outputs are stored and keyed by a fingerprint of their own."""


class ConfigWarning(UserWarning):
    """An old config read through a rename or a removal: it loads, and says what to change."""


@dataclass(frozen=True)
class Introduced:
    """The version that added a setting and its default then (JSON form): that value is left out of every hash."""

    version: str
    default: Any


@dataclass(frozen=True)
class Declaration:
    """What a setting declares beside its default: its role, the other steps it shapes (``also``), whether its own
    step's fingerprint holds it (``keyed``), when it was added and what it was called before. Kept as JSON in the
    field (``as_json``) and in ``tests/golden/settings.json``, which pins every declaration."""

    role: Role
    also: tuple[Role, ...] = ()
    keyed: bool = True
    introduced: Introduced | None = None
    renamed_from: tuple[str, ...] = ()

    @property
    def fingerprints(self) -> tuple[Role, ...]:
        """The fingerprints this setting enters."""
        own = (self.role,) if self.keyed and self.role in FINGERPRINTED else ()
        return own + self.also

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "also": [r.value for r in self.also],
            "keyed": self.keyed,
            "introduced": None if self.introduced is None else [self.introduced.version, self.introduced.default],
            "renamed_from": list(self.renamed_from),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Declaration:
        introduced = data.get("introduced")
        return cls(
            Role(data["role"]),
            tuple(Role(r) for r in data.get("also", ())),
            data.get("keyed", True),
            None if introduced is None else Introduced(*introduced),
            tuple(data.get("renamed_from", ())),
        )


@dataclass(frozen=True)
class Removed:
    """A setting that no longer exists, as it was declared. ``value`` is what today's code behaves as (JSON form):
    an old config holding it loads and hashes as before; ``instead`` tells a user holding another value what to
    set now."""

    path: str
    version: str
    value: Any
    instead: str
    declaration: Declaration


def setting(
    default: Any = ...,
    *,
    role: Role,
    description: str,
    also: tuple[Role, ...] = (),
    keyed: bool = True,
    introduced: Introduced | None = None,
    renamed_from: tuple[str, ...] = (),
    paper: str = "",
    **field: Any,
) -> Any:
    """A pydantic ``Field`` that declares its role (kept JSON-able in ``json_schema_extra``, where Prefect's
    parameter schemas and ``heal config schema`` show it too), and ``paper``, the paper's value where it gives
    one ("silent" where the method needs one and the paper gives none). Every leaf setting is declared with this."""
    if any(r not in FINGERPRINTED for r in also):
        raise ValueError(f"also={also}: only {', '.join(FINGERPRINTED)} have fingerprints")
    declaration = Declaration(role, tuple(also), keyed, introduced, tuple(renamed_from))
    extra: dict[str, Any] = {"heal": declaration.as_json(), **({"paper": paper} if paper else {})}
    if "default_factory" in field:  # pydantic leaves a factory's default out of the schema; editors want it
        extra["default"] = field["default_factory"]()
    return Field(default, description=description, json_schema_extra=extra, **field)


# ---- the leaves of a config model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    path: str  # dotted, as --set takes it
    name: str
    annotation: Any
    declaration: Declaration | None  # None: undeclared, which tests/test_settings.py refuses

    @property
    def hash_path(self) -> str:
        """The name hashes use: the oldest it had."""
        return self.declaration.renamed_from[0] if self.declaration and self.declaration.renamed_from else self.path


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def leaves(model: type[BaseModel], prefix: str = "") -> list[Leaf]:
    """Every leaf setting of ``model``, in declaration order."""
    out = []
    for name, field in model.model_fields.items():
        if is_section(field.annotation):
            out += leaves(field.annotation, prefix + name + ".")
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        declared = extra.get("heal")
        out.append(
            Leaf(
                prefix + name,
                name,
                field.annotation,
                Declaration.from_json(declared) if isinstance(declared, dict) else None,
            )
        )
    return out


def _get(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _models_in(annotation: Any) -> type[BaseModel] | None:
    """The model a list-of-models setting holds (``decontamination.against``), else None."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        return item if is_section(item) else None
    return None


def _canonical(value: Any, annotation: Any) -> Any:
    """A leaf's JSON value as hashes see it: models inside a list lose their settings at introduction default, so
    a setting added to ``problems`` does not change the hash of a config that lists benchmark sets."""
    model = _models_in(annotation)
    if model is None or not isinstance(value, list):
        return value
    return [_omit_introduced(item, model) for item in value]


def _omit_introduced(item: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    kept = {}
    for leaf in leaves(model):
        value = _canonical(_get(item, leaf.path), leaf.annotation)
        introduced = leaf.declaration.introduced if leaf.declaration else None
        if introduced is None or value != introduced.default:
            _put(kept, leaf.path, value)
    return kept


def hashed(cfg: BaseModel, include: Callable[[Declaration], bool], removed: tuple[Removed, ...] = ()) -> dict[str, Any]:
    """The settings of ``cfg`` a hash covers, nested by their hash names: those ``include`` accepts, less any at
    its introduction default, plus the removed ones it accepts at the value today's code behaves as."""
    dump = cfg.model_dump(mode="json")
    tree: dict[str, Any] = {}
    for leaf in leaves(type(cfg)):
        if leaf.declaration is None:
            raise TypeError(f"setting {leaf.path} declares no role (heal_core/settings.py)")
        if not include(leaf.declaration):
            continue
        value = _canonical(_get(dump, leaf.path), leaf.annotation)
        introduced = leaf.declaration.introduced
        if introduced is None or value != introduced.default:
            _put(tree, leaf.hash_path, value)
    for gone in removed:
        introduced = gone.declaration.introduced
        if include(gone.declaration) and (introduced is None or gone.value != introduced.default):
            _put(tree, gone.path, gone.value)
    return tree


def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested settings tree as ``{dotted name: value}`` (a dict-valued setting, ``storage_options``, stays whole
    only where it is a leaf of a hash tree, which no execution setting is)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- reading old configs -------------------------------------------------------------------------------------


def renames(model: type[BaseModel]) -> dict[str, str]:
    """{old dotted name: current dotted name} of every renamed setting."""
    return {old: leaf.path for leaf in leaves(model) if leaf.declaration for old in leaf.declaration.renamed_from}


def _pop(data: dict[str, Any], path: str) -> tuple[bool, Any]:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        return False, None
    return True, node.pop(last)


def upgrade(
    data: dict[str, Any],
    model: type[BaseModel],
    removed: tuple[Removed, ...],
    source: str,
    error: Callable[[str], Exception],
) -> dict[str, Any]:
    """``data`` (a config mapping, changed in place and returned) with renamed settings moved to their current
    names and removed ones dropped, each with one ``ConfigWarning``; a removed setting that shaped the data and
    holds a value today's code does not behave as raises ``error(message)``."""
    where = f" in {source}" if source else ""
    for old, new in renames(model).items():
        found, value = _pop(data, old)
        if not found:
            continue
        if _has(data, new):
            raise error(f"{old}{where}: renamed {new}, and both are set; keep only {new}")
        _put(data, new, value)
        warnings.warn(
            f"{old}{where} is now {new}; read as {new} (heal config migrate FILE rewrites a config file)",
            ConfigWarning,
            stacklevel=3,
        )
    for gone in removed:
        found, value = _pop(data, gone.path)
        if not found:
            continue
        if gone.declaration.role != Role.EXECUTION and value != gone.value:
            raise error(
                f"{gone.path}{where}: removed in heal {gone.version}, and {value!r} is not what heal now "
                f"does ({gone.value!r}); {gone.instead}"
            )
        warnings.warn(
            f"{gone.path}{where}: removed in heal {gone.version}, dropped; {gone.instead}", ConfigWarning, stacklevel=3
        )
    return data


def _has(data: dict[str, Any], path: str) -> bool:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
