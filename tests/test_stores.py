"""The stores' layout (heal_core/stores.py): each fingerprint in its own folder, described once, and evaluation
objects heal 0.1 wrote flat moved into their fingerprint's folder by the first run that reads them."""

from __future__ import annotations

import json

from heal_core import fingerprints, stores
from heal_core.config import parse_config
from heal_core.settings import Role


def test_an_evaluation_heal_0_1_left_flat_is_moved_into_its_fingerprints_folder(tmp_path):
    cfg = parse_config({"storage": {"uri": str(tmp_path)}})
    legacy = tmp_path / "evaluations" / "abc.parquet"
    legacy.parent.mkdir()
    legacy.write_bytes(b"rows")
    uri = stores.evaluation_object(cfg, "abc")
    assert uri == f"{tmp_path}/evaluations/{fingerprints.evaluation(cfg)}/abc.parquet"
    assert (tmp_path / "evaluations" / fingerprints.evaluation(cfg) / "abc.parquet").read_bytes() == b"rows"
    assert not legacy.exists()
    assert stores.evaluation_object(cfg, "abc") == uri  # found in place the next time


def test_a_fingerprint_is_described_once_with_the_settings_it_stands_for(tmp_path):
    cfg = parse_config({"storage": {"uri": str(tmp_path)}, "teacher": {"sampling": {"n": 8}}})
    fingerprint = fingerprints.generation(cfg, "teacher-files")
    stores.describe(cfg, Role.GENERATION, fingerprint, teacher="t")
    path = tmp_path / "generations" / fingerprint / stores.DESCRIPTOR
    described = json.loads(path.read_text())
    assert described["settings"] == fingerprints.settings(cfg, Role.GENERATION)
    assert described["settings"]["teacher"]["sampling"]["n"] == 8 and described["teacher"] == "t"
    path.write_text('{"kept": true}')
    stores.describe(cfg, Role.GENERATION, fingerprint)
    assert json.loads(path.read_text()) == {"kept": True}
