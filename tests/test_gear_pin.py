"""GEAR's rows, pinned, and the pin shown to catch a broken GEAR.

The reduced run's pin (``tests/test_pipeline.py``) cannot see GEAR: there Stage II rescues every problem GEAR
repairs, and in the demo world a repair's text is a hinted sample's, so deduplication leaves GEAR nothing new to
add (issue S). Here Stage II's prompt carries no hint (``hints.template: "{problem}"``): it samples as Stage I
does and rescues little, and GEAR's hinted repairs rescue the rest, new rows of the curriculum. The pin holds
every Stage III row of one shard on the bundled teacher: which failed path it repairs, where that path was cut,
the continuation, its verdicts and whether it was kept. Breaking GEAR's choice on purpose (it keeps what PURE
rejected) changes the pin.

After an intended change of GEAR's behaviour, ``HEAL_UPDATE_GOLDEN=1`` rewrites the pin (review its diff).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from heal_core import shard
from heal_core.backends.hf import HFBackend
from heal_core.config import parse_config
from heal_core.demo import bundled_model, demo_defaults
from heal_core.demo.teacher import split
from heal_core.stages import Stage
from heal_core.trajectory import Trajectory

GOLDEN = Path(__file__).parent / "golden" / "gear_rows.json"
CFG = parse_config(demo_defaults(), ["hints.template='{problem}'"])
PROBLEMS = [w.problem for w in split("generation") if w.hard][:8]


@pytest.fixture(scope="module")
def teacher() -> HFBackend:
    return HFBackend(str(bundled_model("teacher")), "float32", "cpu", CFG.teacher.max_batch_sequences)


def _fingerprint(rows: Iterable[Trajectory]) -> str:
    """sha256 of the Stage III rows as canonical JSON; PURE's ratio rounded to 3 places (the last bits of a
    float32 NLL ratio differ between CPUs, as the reduced run's pin found)."""
    shown = [
        {
            "sample_id": r.sample_id,
            "parent": r.repair.parent_sample_id,
            "breakpoint_token": r.repair.breakpoint_token,
            "prefix_chars": r.repair.prefix_chars,
            "text": r.text,
            "verified": r.verified,
            "pure_ratio": None if r.pure is None or r.pure.ratio is None else round(r.pure.ratio, 3),
            "kept": r.kept,
        }
        for r in rows
        if r.stage == Stage.REPAIR
    ]
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


def _new_kept(rows: list[Trajectory]) -> int:
    """Kept repairs whose (problem, text) no kept row of an earlier stage has: what deduplication leaves GEAR."""
    earlier = {(r.problem_id, r.text) for r in rows if r.kept and r.stage != Stage.REPAIR}
    return len({(r.problem_id, r.text) for r in rows if r.kept and r.stage == Stage.REPAIR} - earlier)


def test_gear_keeps_new_rows_and_they_are_pinned(teacher):
    rows = shard.generate_shard(teacher, PROBLEMS, CFG).trajectories
    repairs = [r for r in rows if r.stage == Stage.REPAIR]
    assert sum(r.kept for r in repairs) > sum(r.kept for r in rows if r.stage == Stage.HINT)
    assert _new_kept(rows) >= 2  # GEAR adds rows of its own to the curriculum here (2 measured)
    fingerprint = _fingerprint(rows)
    if os.environ.get("HEAL_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"gear_rows": fingerprint}, indent=1) + "\n")
    assert fingerprint == json.loads(GOLDEN.read_text())["gear_rows"]


def test_the_pin_fails_when_gear_keeps_what_pure_rejected(teacher, monkeypatch):
    """The mutation the pin must catch: GEAR's keep rule ignoring PURE's verdict (each row still scored, and its
    score stored as it was; only which rows are kept changes). At the demo's 2 x 2 GEAR's cap never binds and every
    hinted repair verifies, so PURE's verdict is what GEAR's selection turns on here."""
    keep = shard.select_capped

    def broken(rows, cap, judge=None, kept=None):
        scores = {}

        def lenient(batch):
            judged = judge(batch)
            scores.update((r.sample_id, r.pure) for r in judged)
            return [replace(r, pure=replace(r.pure, verdict="keep")) for r in judged]

        chosen = keep(rows, cap, lenient if judge is not None else None, kept)
        return [replace(r, pure=scores.get(r.sample_id, r.pure)) for r in chosen]

    monkeypatch.setattr(shard, "select_capped", broken)
    rows = shard.generate_shard(teacher, PROBLEMS, CFG).trajectories
    assert _fingerprint(rows) != json.loads(GOLDEN.read_text())["gear_rows"]
