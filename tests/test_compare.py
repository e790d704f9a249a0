"""``heal compare``: two finished runs that differ in PURE's λ, kept in different storage roots (issue L, item 4)."""

from __future__ import annotations

import pytest
from rows import problems_file
from typer.testing import CliRunner

from flows.cli import app
from heal_core.config import parse_config
from heal_core.demo import demo_defaults

pytestmark = pytest.mark.slow  # two small runs end to end


def test_compare_shows_the_differing_key_both_runs_figures_and_writes_a_plot(prefect_api, tmp_path, monkeypatch):
    from flows.pipeline import heal_pipeline

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    common = [
        f"problems.uri={problems_file(tmp_path / 'p.jsonl', 'generation', 6)}",
        "evaluation.samples=2",
        f"evaluation.uri={problems_file(tmp_path / 'e.jsonl', 'eval', 3)}",
        "orchestration.shard_size=3",
        "pace.epochs=1",
        "pace.batch_size=4",
        "pace.seeds=[0]",
        "pace.variants=[heal,rs_sft]",
    ]
    summaries = {}
    for run_id, lam in (("strict", 0.05), ("loose", 0.9)):
        cfg = parse_config(demo_defaults(), [*common, f"storage.uri={tmp_path / run_id}", f"pure.lam={lam}"])
        summaries[run_id] = heal_pipeline(cfg, run_id)
    assert summaries["strict"]["pure_rejections"] > summaries["loose"]["pure_rejections"]  # λ mattered here

    out = tmp_path / "compare.png"
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "strict",
            str(tmp_path / "loose" / "runs" / "loose"),
            "--storage",
            str(tmp_path / "strict"),
            "--out",
            str(out),
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    differing = result.output.split("settings that differ", 1)[1].split("summary", 1)[0]
    assert "pure.lam" in differing and "0.05" in differing and "0.9" in differing
    assert "storage.uri" in differing and "pace.seeds" not in differing  # only what differs
    rejections = next(line for line in result.output.splitlines() if "PURE rejections" in line)
    assert (
        str(summaries["strict"]["pure_rejections"]) in rejections
        and str(summaries["loose"]["pure_rejections"]) in rejections
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    unfinished = CliRunner().invoke(app, ["compare", "strict", "nothing", "--storage", str(tmp_path / "strict")])
    assert unfinished.exit_code == 2 and "nothing" in unfinished.output, unfinished.output
