import json
from pathlib import Path

import pytest

from heal_core.config import ConfigError, HealConfig, load_config, parse_config


def test_defaults_are_the_papers_values():
    cfg = load_config()
    assert cfg.teacher.sampling.n == 30
    assert cfg.teacher.sampling.top_k == 0
    assert cfg.hints.pass_rate_below == 0.5
    assert (cfg.gear.failed_paths, cfg.gear.continuations, cfg.gear.extreme_max_correct) == (10, 20, 1)
    assert (cfg.pure.lam, cfg.pure.eps) == (0.2, 0.01)
    assert (cfg.pace.epochs, cfg.pace.learning_rate, cfg.pace.batch_size) == (5, 1e-5, 8)


def test_yaml_load_and_overrides_are_typed(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  model: /models/t\n  sampling:\n    n: 8\npure:\n  lam: 0.3\n")
    cfg = load_config(path, ["teacher.sampling.temperature=1.0", "pace.mode=incremental", "storage.uri=s3://b/p"])
    assert cfg.teacher.model == "/models/t"
    assert cfg.teacher.sampling.n == 8 and isinstance(cfg.teacher.sampling.n, int)
    assert cfg.teacher.sampling.temperature == 1.0
    assert cfg.pure.lam == 0.3
    assert cfg.pace.mode == "incremental"
    assert cfg.storage.uri == "s3://b/p"


def test_round_trip_through_yaml(tmp_path: Path):
    cfg = load_config(None, ["teacher.sampling.n=4", "storage.storage_options={endpoint_url: http://x}"])
    path = tmp_path / "dump.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    assert load_config(None, ["teacher.sampling.n=5"]).config_hash() != cfg.config_hash()


def test_hash_ignores_where_and_how_a_run_executes():
    base = load_config(None, ["teacher.sampling.n=4"])
    moved = load_config(
        None,
        [
            "teacher.sampling.n=4",
            "storage.uri=s3://b/p",
            "orchestration.mode=deployments",
            "orchestration.gpu_pool=h200",
            "storage.storage_options={endpoint_url: http://y}",
            "orchestration.secrets_block=cluster-secrets",
        ],
    )
    assert moved.config_hash() == base.config_hash()
    assert load_config(None, ["teacher.sampling.n=4", "orchestration.shard_size=3"]).config_hash() != base.config_hash()


@pytest.mark.parametrize(
    ("data", "overrides", "needle"),
    [
        ({"pure": {"lamda": 0.3}}, [], "unknown key 'pure.lamda'"),
        ({"bogus": {}}, [], "unknown key 'bogus'"),
        ({}, ["teacher.sampling.n=many"], "'teacher.sampling.n'"),
        ({}, ["teacher.sampling.n=0"], "'teacher.sampling.n'"),
        ({}, ["pace.mode=sideways"], "'pace.mode'"),
        ({}, ["gear.extreme_max_correct=30"], "gear.extreme_max_correct"),
        ({}, ["nonsense"], "not of the form section.key=value"),
        ({"teacher": 3}, ["teacher.model=x"], "'teacher' is a value"),
    ],
)
def test_bad_config_names_the_key(data, overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(data, overrides)
    assert needle in str(err.value)


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("teacher:\n  model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_a_config_is_frozen_and_a_changed_copy_has_its_own_hash():
    cfg = HealConfig()
    with pytest.raises(ValueError, match="frozen"):
        cfg.pure.lam = 0.3
    changed = cfg.model_copy(update={"pure": cfg.pure.model_copy(update={"lam": 0.3})})
    assert cfg.config_hash() == HealConfig().config_hash() != changed.config_hash()
    assert changed.config_hash() == parse_config({"pure": {"lam": 0.3}}).config_hash()


def test_a_shard_too_large_for_memory_is_refused_with_the_size_that_fits():
    parse_config({})  # the paper's defaults: 64 x (30 + 30 + 10 x 20) x 4096 = 68M tokens, under the bound
    with pytest.raises(ConfigError) as err:
        parse_config({}, ["orchestration.shard_size=256", "teacher.sampling.max_new_tokens=16384"])
    message = str(err.value)
    assert "orchestration.shard_size=256 may generate 1,090,519,040 tokens" in message
    assert "use orchestration.shard_size <= 120" in message and "got" not in message
    parse_config({}, ["orchestration.shard_size=120", "teacher.sampling.max_new_tokens=16384"])


def test_every_key_is_described_and_docs_config_md_is_current():
    """The reference is generated from the model; the committed file must be what it generates (regenerate with
    ``heal config explain --markdown > docs/config.md``)."""
    from heal_core.config_reference import keys, markdown, sections

    docs = keys()
    assert len(docs) > 90 and [d.key for d in docs if not d.description] == []
    assert [name for name, doc in sections() if not doc] == []  # its own docstring, not one pydantic's BaseModel lends
    assert {d.key: d.paper for d in docs}["teacher.sampling.n"] == "30"
    constraints = {d.key: d.constraints for d in docs}
    assert constraints["teacher.sampling.temperature"] == "> 0.0, ≤ 2.0" and constraints["pace.seeds"].endswith("≥ 0")
    assert {d.key: d.type for d in docs}["evaluation.backend"] == "hf | vllm | openai | None"
    committed = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == markdown() + "\n", (
        "docs/config.md is out of date: heal config explain --markdown > docs/config.md"
    )


def test_config_schema_checks_a_config_as_the_model_does(tmp_path):
    """``heal config schema`` is what an editor validates a YAML config against: the embedded default passes it,
    and a value the model refuses (a bound, a choice, a misspelt key) fails it too."""
    import jsonschema
    from typer.testing import CliRunner

    from flows.cli import app
    from heal_core.demo import demo_defaults

    printed = CliRunner().invoke(app, ["config", "schema"])
    assert printed.exit_code == 0
    schema = json.loads(printed.output)
    jsonschema.validate(demo_defaults(), schema)
    assert schema["$defs"]["SamplingConfig"]["properties"]["n"]["paper"] == "30"
    for bad in ({"teacher": {"sampling": {"temperature": 3}}}, {"pace": {"variants": ["hael"]}}, {"gaer": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ConfigError):
            parse_config(bad)
