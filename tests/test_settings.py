"""Settings are a contract with users' stores and old runs (issue R): every setting declares its role, hashes are
derived from the roles, a setting added at its default changes nothing, and an old config still reads.

The pinned hashes in ``tests/golden/settings.json`` were computed by heal 0.1.0 (commit 916c955, before roles): a
stored generation, evaluation or run of that version is found under the same keys today. After a deliberate change
of a declaration or a default, rewrite the pins with ``python tests/test_settings.py --write`` and say why in the
commit: every user's store misses on that day.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
from later import MODELS, Added, later_version
from typer.testing import CliRunner

from heal_core import config, fingerprints
from heal_core.config import ConfigError, HealConfig, load_config, parse_config
from heal_core.demo import demo_defaults
from heal_core.settings import (
    FINGERPRINTED,
    ConfigWarning,
    Declaration,
    Introduced,
    Removed,
    Role,
    flat,
    leaves,
    setting,
)

ROOT = Path(__file__).parents[1]
GOLDEN = Path(__file__).parent / "golden" / "settings.json"
TEACHER = "pinned-teacher"  # the teacher identity the pinned generation fingerprints are taken with
HASHES = ("config_hash", *(r.value for r in FINGERPRINTED))


def _configs() -> dict[str, HealConfig]:
    found = {"(embedded default)": parse_config(demo_defaults()), "(defaults)": parse_config({})}
    found |= {str(p.relative_to(ROOT)): load_config(p) for p in sorted((ROOT / "configs").glob("*.yaml"))}
    return found


def _hashes(cfg: HealConfig) -> dict[str, str]:
    return {
        "config_hash": cfg.config_hash(),
        "generation": fingerprints.generation(cfg, TEACHER),
        "selection": fingerprints.selection(cfg),
        "training": fingerprints.training(cfg),
        "evaluation": fingerprints.evaluation(cfg),
    }


def _hashed(cfg: HealConfig) -> dict[str, object]:
    return flat(config.hashed_settings(cfg, lambda d: d.role != Role.EXECUTION))


def _declarations() -> dict[str, Declaration]:
    return {leaf.path: leaf.declaration for leaf in leaves(HealConfig)}


def _pins() -> dict:
    return json.loads(GOLDEN.read_text())


# ---- every setting declares its role -----------------------------------------------------------------------------


def _undeclared(model: type = HealConfig) -> list[str]:
    return [leaf.path for leaf in leaves(model) if leaf.declaration is None]


def test_every_setting_declares_its_role():
    assert _undeclared() == [], "declare each with heal_core.settings.setting(..., role=...)"


def test_a_setting_declared_without_a_role_is_caught():
    from pydantic import Field

    with later_version([Added(config.GearConfig, "plain", int, Field(1, description="a plain pydantic field"))]):
        assert _undeclared() == ["gear.plain"]
        with pytest.raises(TypeError, match="gear.plain declares no role"):
            parse_config({}).config_hash()


def test_a_new_setting_declares_when_it_was_introduced():
    """A setting heal 0.1.0 did not have is hashed only away from its introduction default (rule 1), so it must
    say what that default was; a pinned one that is gone must be a rename or a recorded removal."""
    pinned = _pins()["declarations"]
    new = [p for p, d in _declarations().items() if p not in pinned and (d is None or d.introduced is None)]
    assert not new, f"new settings without introduced=Introduced(version, default): {new}"
    kept = set(_declarations()) | {old for d in _declarations().values() if d for old in d.renamed_from}
    gone = [p for p in pinned if p not in kept and p not in {r.path for r in config.REMOVED}]
    assert not gone, f"settings removed without a Removed(...) record in heal_core/config.py: {gone}"


# ---- pinned hashes -----------------------------------------------------------------------------------------------


def _why(name: str, cfg: HealConfig, pinned: dict) -> list[str]:
    """Each setting whose hashed value or declaration differs from the pin, and the hashes it enters."""
    before, now = pinned["configs"][name]["settings"], _hashed(cfg)
    declarations, was = _declarations(), pinned["declarations"]
    lines = []
    for path in sorted(set(before) | set(now)):
        if before.get(path, "<absent>") != now.get(path, "<absent>"):
            d = declarations.get(path)
            enters = ["config_hash", *(r.value for r in d.fingerprints)] if d else ["?"]
            lines.append(
                f"{path}: {before.get(path, '<absent>')!r} -> {now.get(path, '<absent>')!r} "
                f"(enters {', '.join(enters)})"
            )
    for path, d in declarations.items():
        if path in was and d is not None and Declaration.from_json(was[path]) != d:
            lines.append(f"{path}: declared {was[path]} -> {d.as_json()}")
    return lines


@pytest.mark.parametrize("name", list(_configs()))
def test_hashes_are_the_pinned_ones(name):
    cfg, pinned = _configs()[name], _pins()
    now, then = _hashes(cfg), {k: pinned["configs"][name][k] for k in HASHES}
    changed = [k for k in HASHES if now[k] != then[k]]
    assert not changed, f"{name}: {', '.join(changed)} changed, because of: " + "; ".join(_why(name, cfg, pinned))


def test_a_changed_value_is_named_with_the_hashes_it_enters():
    """What the pin test prints when it fails, shown failing."""
    cfg = parse_config(demo_defaults(), ["pure.lam=0.3", "teacher.sampling.seed=4"])
    lines = _why("(embedded default)", cfg, _pins())
    assert lines == [
        "pure.lam: 0.2 -> 0.3 (enters config_hash, selection)",
        "teacher.sampling.seed: 0 -> 4 (enters config_hash, generation, evaluation)",
    ]


# ---- a later version adds a setting ------------------------------------------------------------------------------

SECTIONS = [cls for cls in MODELS if cls is not HealConfig]
BASES = {
    "embedded default": demo_defaults(),
    "with listed sets": {
        **demo_defaults(),
        "evaluation": {"benchmarks": [{"uri": "aime.jsonl", "format": "aime"}]},
        "decontamination": {"against": [{"uri": "math.jsonl", "format": "math"}]},
    },
}


def _knob(role: Role, default: int = 3, **kw):
    return setting(default, role=role, introduced=Introduced("9.9.9", 3), description="a later version's", **kw)


def _entered(cfg_before: dict[str, str], cfg_after: dict[str, str]) -> set[str]:
    return {k for k in HASHES if cfg_before[k] != cfg_after[k]}


@pytest.mark.parametrize("section", SECTIONS, ids=lambda cls: cls.__name__)
def test_a_setting_added_to_any_section_changes_no_hash_at_its_default_and_only_its_roles_otherwise(section):
    before = {name: _hashes(parse_config(data)) for name, data in BASES.items()}
    path = _path_of(section)
    for role in Role:
        with later_version([Added(section, "later_knob", int, _knob(role))]):
            for name, data in BASES.items():
                assert _hashes(parse_config(data)) == before[name], f"{role} setting at its default, {name}"
            changed = _entered(
                before["embedded default"], _hashes(parse_config(demo_defaults(), [f"{path}.later_knob=4"]))
            )
        expected = (
            set() if role == Role.EXECUTION else {"config_hash"} | ({role.value} & {r.value for r in FINGERPRINTED})
        )
        assert changed == expected, f"{path}.later_knob ({role}) changed {sorted(changed)}"


def _path_of(section: type, model: type = HealConfig, prefix: str = "") -> str | None:
    """The dotted name of ``section`` in the config (``problems`` for the problems model, which benchmark sets and
    decontamination sets also hold)."""
    for name, field in model.model_fields.items():
        if field.annotation is section:
            return prefix + name
        if isinstance(field.annotation, type) and issubclass(field.annotation, config._Section):
            found = _path_of(section, field.annotation, f"{prefix}{name}.")
            if found:
                return found
    return None


def test_a_setting_that_also_shapes_another_step_or_is_keyed_elsewhere_enters_just_those():
    before = _hashes(parse_config(demo_defaults()))
    cases = {
        ("gear", _knob(Role.GENERATION, also=(Role.EVALUATION,))): {"config_hash", "generation", "evaluation"},
        ("pace", _knob(Role.TRAINING, keyed=False)): {"config_hash"},
    }
    for (section, knob), expected in cases.items():
        with later_version([Added(type(getattr(parse_config({}), section)), "later_knob", int, knob)]):
            assert _hashes(parse_config(demo_defaults())) == before
            changed = _entered(before, _hashes(parse_config(demo_defaults(), [f"{section}.later_knob=4"])))
        assert changed == expected, section


def test_the_curriculum_fingerprint_is_the_selection_and_paces_mode_only():
    """A derived run trains on its parent's datasets exactly when this fingerprint is the parent's."""
    base = fingerprints.curriculum(parse_config(demo_defaults()))
    for same in (
        "pace.learning_rate=1e-3",
        "pace.epochs=1",
        "student.model=other",
        "evaluation.samples=2",
        "orchestration.memory_limit=2GiB",
    ):
        assert fingerprints.curriculum(parse_config(demo_defaults(), [same])) == base, same
    for other in (
        "pace.mode=incremental",
        "hints.max_per_problem=2",
        "gear.max_per_problem=1",
        "pure.lam=0.5",
        "pace.stage1_cap_per_problem=2",
    ):
        assert fingerprints.curriculum(parse_config(demo_defaults(), [other])) != base, other


def test_changing_a_later_settings_default_changes_the_hash_of_a_config_that_relies_on_it():
    """No silent change of behaviour under an old key: the introduction default, not today's, is left out."""
    before = _hashes(parse_config(demo_defaults()))
    with later_version([Added(config.GearConfig, "later_knob", int, _knob(Role.GENERATION, default=5))]):
        after = _hashes(parse_config(demo_defaults()))
        explicit = _hashes(parse_config(demo_defaults(), ["gear.later_knob=3"]))
    assert _entered(before, after) == {"config_hash", "generation"}
    assert explicit == before  # the old behaviour, asked for by name, keeps its stores


# ---- renamed and removed settings --------------------------------------------------------------------------------

OLD = """# my HEAL config
teacher:
  sampling:
    n: 8   # a laptop's N
pure:
  lam: 0.3 # stricter than the paper
"""


@pytest.fixture
def renamed():
    """``pure.lam`` renamed ``pure.reject_above`` by a later version."""
    lam = config.PureConfig.model_fields["lam"]
    field = setting(0.2, role=Role.SELECTION, renamed_from=("pure.lam",), ge=0.0, description=lam.description)
    with later_version([Added(config.PureConfig, "reject_above", float, field)], removed=[(config.PureConfig, "lam")]):
        yield


def test_an_old_name_is_read_with_one_warning_and_hashes_as_before(tmp_path, renamed):
    path = tmp_path / "old.yaml"
    path.write_text(OLD)
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(path)
    assert [str(w.message) for w in caught] == [
        f"pure.lam in {path} is now pure.reject_above; read as "
        "pure.reject_above (heal config migrate FILE rewrites a config file)"
    ]
    assert cfg.pure.reject_above == 0.3
    assert fingerprints.settings(cfg, Role.SELECTION)["pure"]["lam"] == 0.3  # hashed under its first name
    with pytest.warns(ConfigWarning, match="--set pure.lam: now pure.reject_above"):
        assert parse_config({}, ["pure.lam=0.4"]).pure.reject_above == 0.4
    with pytest.raises(ConfigError, match="pure.lam: renamed pure.reject_above, and both are set"):
        parse_config({"pure": {"lam": 0.3, "reject_above": 0.3}})


def test_the_hashes_of_a_renamed_setting_are_the_ones_before_the_rename(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD)
    before = _hashes(load_config(path))
    lam = config.PureConfig.model_fields["lam"]
    field = setting(0.2, role=Role.SELECTION, renamed_from=("pure.lam",), ge=0.0, description=lam.description)
    with later_version([Added(config.PureConfig, "reject_above", float, field)], removed=[(config.PureConfig, "lam")]):
        with pytest.warns(ConfigWarning):
            assert _hashes(load_config(path)) == before
        assert _hashes(parse_config({"teacher": {"sampling": {"n": 8}}, "pure": {"reject_above": 0.3}})) == before


def test_config_migrate_rewrites_the_old_name_keeping_comments(tmp_path, renamed):
    from flows.cli import app

    path = tmp_path / "old.yaml"
    path.write_text(OLD)
    result = CliRunner().invoke(app, ["config", "migrate", str(path)])
    assert result.exit_code == 0, result.output
    assert "pure.lam is now pure.reject_above" in result.output and "migrated" in result.output
    text = path.read_text()
    assert "# my HEAL config" in text and "# a laptop's N" in text and "lam:" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the migrated file loads without a warning
        assert load_config(path).pure.reject_above == 0.3
    again = CliRunner().invoke(app, ["config", "migrate", str(path)])
    assert again.exit_code == 0 and "already current" in again.output


def test_a_removed_execution_setting_is_dropped_with_a_warning(monkeypatch):
    monkeypatch.setattr(
        config,
        "REMOVED",
        (
            Removed(
                "teacher.server.timeout_seconds",
                "9.9.9",
                600.0,
                "timeouts are teacher.server.retry_policy now",
                Declaration(Role.EXECUTION),
            ),
        ),
    )
    before = _hashes(parse_config({}))
    with later_version(removed=[(config.ServerConfig, "timeout_seconds")]):
        with pytest.warns(ConfigWarning, match="teacher.server.timeout_seconds: removed in heal 9.9.9, dropped"):
            cfg = parse_config({"teacher": {"server": {"timeout_seconds": 17}}})
        assert _hashes(cfg) == before


def test_heal_0_1_s_retries_setting_is_dropped_with_a_warning_wherever_a_config_arrives():
    """``teacher.server.max_retries`` gave way to ``patience_seconds`` in 0.2.0: an old run's config.yaml, and a
    deployment's stored parameters (validated by pydantic, not parse_config), still read."""
    with pytest.warns(ConfigWarning, match="teacher.server.max_retries: removed in heal 0.2.0, dropped"):
        assert parse_config({"teacher": {"server": {"max_retries": 5}}}).teacher.server.patience_seconds == 600
    with pytest.warns(ConfigWarning, match="max_retries"):
        HealConfig.model_validate({"teacher": {"server": {"max_retries": 2}}})


def test_a_removed_data_setting_loads_at_what_heal_now_does_and_is_refused_at_anything_else(monkeypatch):
    monkeypatch.setattr(
        config,
        "REMOVED",
        (Removed("gear.surge_window", "9.9.9", 16, "set gear.surge_tokens instead", Declaration(Role.GENERATION)),),
    )
    before = _hashes(parse_config({}))
    with later_version(removed=[(config.GearConfig, "surge_window")]):
        with pytest.warns(ConfigWarning, match="gear.surge_window: removed in heal 9.9.9, dropped"):
            assert _hashes(parse_config({"gear": {"surge_window": 16}})) == before
        assert _hashes(parse_config({})) == before
        with pytest.raises(
            ConfigError,
            match=r"gear.surge_window in run.yaml: removed in heal 9.9.9, and 8 is not "
            r"what heal now does \(16\); set gear.surge_tokens instead",
        ):
            parse_config({"gear": {"surge_window": 8}}, source="run.yaml")


def test_an_unknown_key_is_still_refused_with_its_dotted_name():
    with pytest.raises(ConfigError, match=r"unknown key 'pure.lamda'"):
        parse_config({"pure": {"lamda": 0.3}})
    with pytest.raises(ConfigError, match=r"unknown key 'teacher.sampling.nn'"):
        parse_config({}, ["teacher.sampling.nn=3"])


def test_config_explain_shows_each_settings_role():
    from flows.cli import app
    from heal_core.config_reference import keys

    roles = {d.key: d.role for d in keys()}
    assert roles["teacher.sampling.seed"] == "generation + evaluation"
    assert roles["pace.seeds"] == "training (config hash only)" and roles["storage.uri"] == "execution"
    result = CliRunner().invoke(app, ["config", "explain", "pure.lam"])
    assert result.exit_code == 0 and "role" in result.output and "selection" in result.output


# ---- the pins ----------------------------------------------------------------------------------------------------


def write_pins() -> None:
    """Rewrite ``tests/golden/settings.json`` from today's code (a deliberate change of a hash: see the docstring)."""
    configs = {name: {**_hashes(cfg), "settings": _hashed(cfg)} for name, cfg in _configs().items()}
    declarations = {path: d.as_json() for path, d in _declarations().items() if d is not None}
    GOLDEN.write_text(json.dumps({"declarations": declarations, "configs": configs}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write_pins()
