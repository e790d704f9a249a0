"""A run's problems are pinned with it (tasks/problems.py): a resume on a problem file that changed since is
refused, naming what changed, because the config hash covers the file's URI, not what it holds."""

from __future__ import annotations

import pytest
from rows import problems_file, reduced_config
from typer.testing import CliRunner

from heal_core.run import Run
from tasks.problems import ProblemsChanged, shard_problems


def test_a_resume_after_the_problem_file_changed_is_refused_naming_what_changed(prefect_api, tmp_path):
    from flows.cli import app

    cfg = reduced_config(tmp_path, 5, "orchestration.shard_size=2")
    run = Run.of(cfg, "r")
    run.pin(cfg)
    assert shard_problems(run, cfg) == 3
    assert shard_problems(run, cfg) == 3  # the same file again: a resume goes on

    problems_file(tmp_path / "problems-5.jsonl", "generation", 7)  # the file grew between attempts
    with pytest.raises(
        ProblemsChanged,
        match=r"started on 5 problems of .*problems-5.jsonl, which now gives 7: "
        r"2 added \(\S+, \S+\)\. Resuming would drop or double problems",
    ):
        shard_problems(run, cfg)
    result = CliRunner().invoke(app, ["resume", "r", "--storage", cfg.storage.uri])
    assert result.exit_code == 2 and "2 added" in result.output, result.output

    (tmp_path / "store" / "runs" / "r" / "problems.json").unlink()  # a run from before the pin: its shards say
    problems_file(tmp_path / "problems-5.jsonl", "generation", 4)
    with pytest.raises(ProblemsChanged, match=r"now gives 4: 1 removed"):
        shard_problems(run, cfg)
    assert len(list((tmp_path / "store" / "runs" / "r" / "problems").iterdir())) == 3  # nothing rewritten


def test_a_run_copied_to_another_storage_is_worked_on_where_it_was_found(tmp_path):
    """``heal resume RUN --storage COPY`` continues the copy, not the storage its config was first written for."""
    import shutil

    from heal_core.config import parse_config

    cfg = parse_config({"storage": {"uri": str(tmp_path / "first")}})
    Run.of(cfg, "r").pin(cfg)
    shutil.copytree(tmp_path / "first", tmp_path / "copy")
    run, stored = Run.stored("r", str(tmp_path / "copy"))
    assert run.root == f"{tmp_path}/copy/runs/r" and stored.storage.uri == str(tmp_path / "copy")
    assert stored.config_hash() == cfg.config_hash()
    assert Run.of(stored, "r").root == run.root  # where the pipeline then writes
