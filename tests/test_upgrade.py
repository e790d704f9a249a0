"""Upgrades keep the stores (issue R), end to end on the reduced config through a real Prefect API server.

A run is made and stopped before it finished training; then heal gains a setting in every section, as a later
version would declare it (at its introduction default, ``tests/later.py``). The run resumes with every shard still
finished, a new run on the same storage re-uses every problem with 0 teacher tokens and writes the same curriculum,
and ``heal store ls`` / ``gc`` see which runs use what. The teacher's ``generate`` calls are counted on the real HF
backend class (``teacher_calls``).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from later import MODELS, Added, later_version
from rows import reduced_config
from typer.testing import CliRunner

from heal_core import config, fingerprints, stores
from heal_core.demo import bundled_model
from heal_core.generation_store import GenerationStore, generate_stored
from heal_core.run import Run
from heal_core.settings import Introduced, Role, setting
from tasks.generate import read_shard_problems, teacher_backend

pytestmark = pytest.mark.slow
ROLE = {
    "SamplingConfig": Role.GENERATION,
    "VLLMConfig": Role.GENERATION,
    "ServerConfig": Role.EXECUTION,
    "TeacherConfig": Role.GENERATION,
    "HintsConfig": Role.GENERATION,
    "GearConfig": Role.SELECTION,
    "PureConfig": Role.GENERATION,
    "PaceConfig": Role.TRAINING,
    "DistributedConfig": Role.EXECUTION,
    "StudentConfig": Role.TRAINING,
    "StorageConfig": Role.EXECUTION,
    "OrchestrationConfig": Role.EXECUTION,
    "ProblemsConfig": Role.PROBLEMS,
    "DecontaminationConfig": Role.PROBLEMS,
    "JudgeConfig": Role.GENERATION,
    "EvaluationConfig": Role.EVALUATION,
}
LATER = [
    Added(
        cls,
        "later_knob",
        int,
        setting(3, role=ROLE[cls.__name__], introduced=Introduced("9.9.9", 3), description="added by a later heal"),
    )
    for cls in MODELS
    if cls is not config.HealConfig
]


@pytest.fixture(scope="module")
def before(prefect_api, tmp_path_factory):
    """A run made before the upgrade, stopped before rs_sft finished: its record and the summary are not there."""
    from flows.pipeline import heal_pipeline

    root = tmp_path_factory.mktemp("upgrade")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEAL_CACHE_DIR", str(root / "cache"))
        heal_pipeline(reduced_config(root, 10), "before")
    run = root / "store" / "runs" / "before"
    (run / "models" / "rs_sft" / "seed-0" / "variant.json").unlink()
    (run / "summary.json").unlink()
    return root


def test_after_an_upgrade_the_run_resumes_and_a_new_run_reuses_everything(before, teacher_calls, monkeypatch):
    from flows.cli import app
    from flows.pipeline import heal_pipeline

    root, runs = before, before / "store" / "runs"
    monkeypatch.setenv("HEAL_CACHE_DIR", str(root / "cache"))
    with later_version(LATER):
        resumed = CliRunner().invoke(app, ["resume", "before", "--storage", str(root / "store")])
        assert resumed.exit_code == 0, resumed.output
        assert (runs / "before" / "models" / "rs_sft" / "seed-0" / "variant.json").exists()
        assert (runs / "before" / "summary.json").exists()
        assert teacher_calls == [], "the resumed run's shards did not count as finished"

        cfg = reduced_config(root, 10)
        assert cfg.teacher.later_knob == 3  # the later model, at the setting's default
        summary = heal_pipeline(cfg, "after")
    assert teacher_calls == []
    assert summary["generation"]["reused"] == 10 and summary["generation"]["teacher_tokens"] == 0
    for path in sorted((runs / "before" / "curriculum").glob("*.parquet")):
        assert pq.read_table(runs / "after" / "curriculum" / path.name).equals(pq.read_table(path)), path.name


def test_store_ls_and_gc_see_which_runs_use_what(before, monkeypatch):
    """A generation made for no run that is kept (as a deleted run's would be) is listed, then collected; the
    kept runs' stores stay."""
    from flows.cli import app

    root, store = before, str(before / "store")
    monkeypatch.setenv("HEAL_CACHE_DIR", str(root / "cache"))
    other = reduced_config(root, 10, "teacher.sampling.seed=7")
    teacher = str(bundled_model("teacher"))
    orphan = fingerprints.generation(other, fingerprints.model_identity(teacher))
    stores.describe(other, Role.GENERATION, orphan, teacher=teacher)
    problems = read_shard_problems(Run.stored("before", store)[0], 0)[:1]
    generate_stored(
        problems,
        other,
        GenerationStore.under(store, {}, orphan),
        fingerprints.selection(other),
        teacher,
        lambda: teacher_backend(other.teacher, teacher),
        lambda: None,
    )

    listing = CliRunner().invoke(app, ["store", "ls", "--storage", store, "--json"])
    assert listing.exit_code == 0, listing.output
    found = {(e["role"], e["fingerprint"]): e for e in json.loads(listing.output)["stored"]}
    used = fingerprints.generation(reduced_config(root, 10), fingerprints.model_identity(teacher))
    assert found[("generation", used)]["problems"] == 10 and "before" in found[("generation", used)]["runs"]
    assert found[("generation", orphan)]["problems"] == 1 and found[("generation", orphan)]["runs"] == []
    assert found[("generation", orphan)]["settings"]["teacher"]["sampling"]["seed"] == 7
    assert (
        found[("evaluation", fingerprints.evaluation(reduced_config(root, 10)))]["objects"] >= 2
    )  # teacher, base, ...
    shown = CliRunner().invoke(app, ["store", "ls", "--storage", store])
    assert f"{orphan}: teacher.sampling.seed=7" in shown.output  # the setting that tells the two apart

    refused = CliRunner().invoke(app, ["store", "gc", "--storage", store, "--keep-runs", "befor"])
    assert refused.exit_code == 2 and "no run befor" in refused.output
    dry = CliRunner().invoke(app, ["store", "gc", "--storage", store, "--keep-runs", "before", "--dry-run"])
    assert dry.exit_code == 0 and f"would remove generation {orphan}" in dry.output and used not in dry.output
    assert (before / "store" / "generations" / orphan).is_dir()
    done = CliRunner().invoke(app, ["store", "gc", "--storage", store, "--keep-runs", "before", "--yes"])
    assert done.exit_code == 0, done.output
    assert not (before / "store" / "generations" / orphan).exists()
    assert (before / "store" / "generations" / used).is_dir()
    kept = json.loads((before / "store" / "generations" / used / stores.DESCRIPTOR).read_text())
    assert kept["settings"]["teacher"]["sampling"]["seed"] == 0
