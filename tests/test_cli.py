import re

from typer.testing import CliRunner

import heal_core
from flows.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and heal_core.__version__ in result.output


def test_config_show_applies_overrides_to_the_embedded_default():
    result = runner.invoke(app, ["config", "show", "--set", "teacher.sampling.n=3", "--set", "pure.lam=0.3"])
    assert result.exit_code == 0
    assert "n: 3" in result.output and "lam: 0.3" in result.output


def test_config_check_names_the_bad_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pure:\n  lamda: 0.3\n")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2 and "unknown key 'pure.lamda'" in result.output
    good = tmp_path / "good.yaml"
    good.write_text("pure:\n  lam: 0.3\n")
    assert runner.invoke(app, ["config", "check", str(good)]).exit_code == 0


def test_run_rejects_a_path_traversing_run_id(tmp_path):
    result = runner.invoke(app, ["run", "--run-id", "../escape", "--set", f"storage.uri={tmp_path}"])
    assert result.exit_code == 2 and "run id" in result.output


def test_report_of_an_unknown_run_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["report", "nope", "--storage", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_config_explain_describes_a_key_a_section_and_refuses_an_unknown_one():
    one = runner.invoke(app, ["config", "explain", "gear.max_per_problem"], env={"COLUMNS": "200"})
    assert one.exit_code == 0 and "kept repairs per problem" in one.output and "gear.wave_paths" not in one.output
    section = runner.invoke(app, ["config", "explain", "pure"], env={"COLUMNS": "200"})
    assert section.exit_code == 0 and "pure.lam" in section.output and "0.2" in section.output
    wrong = runner.invoke(app, ["config", "explain", "gear.max_per_problm"], env={"COLUMNS": "200"})
    assert wrong.exit_code == 2 and "did you mean gear.max_per_problem" in wrong.output


def test_resume_refuses_an_unknown_mode_naming_the_option(tmp_path):
    from heal_core.config import parse_config
    from heal_core.run import Run

    cfg = parse_config({"storage": {"uri": str(tmp_path)}})
    Run.of(cfg, "r1").pin(cfg)
    result = runner.invoke(app, ["resume", "r1", "--storage", str(tmp_path), "--mode", "bogus"])
    assert result.exit_code == 2
    assert "--mode" in result.output and "bogus" in result.output and "'deployments'" in result.output


def test_the_clis_choices_are_the_config_models():
    import typing

    from flows.cli.common import Layout, Mode
    from heal_core.config import OrchestrationConfig, ProblemFormat

    assert [m.value for m in Mode] == list(typing.get_args(OrchestrationConfig.model_fields["mode"].annotation))
    assert [layout.value for layout in Layout] == list(typing.get_args(ProblemFormat))


def test_help_groups_the_commands_by_topic_and_a_refusal_is_one_line_with_exit_2(tmp_path):
    """``heal --help`` shows every command once, under its topic; a command's refusal (here: a run that is not
    there) is a message and exit status 2, never a traceback (``flows.cli.common.refusing``)."""
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    headings = ["Runs", "Setup", "Storage", "Cluster", "Tools"]
    assert [shown.index(f"─ {h} ") for h in headings] == sorted(shown.index(f"─ {h} ") for h in headings)
    for command in ("run", "resume", "config", "store", "deploy", "serve-teacher", "audit-verifier", "demo"):
        assert len(re.findall(rf"│ {command} ", shown)) == 1, command
    refused = runner.invoke(app, ["export", "nope", str(tmp_path / "out"), "--storage", str(tmp_path)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output and "nope" in refused.output
