"""The stores' layout (heal_core/stores.py): each fingerprint in its own folder, described once, and evaluation
objects heal 0.1 wrote flat moved into their fingerprint's folder by the first run that reads them."""

from __future__ import annotations

import json

import pytest

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


@pytest.mark.parametrize("killed_at", ["model.safetensors", "heal_stage.json"])
def test_a_model_download_killed_half_way_is_fetched_again(tmp_path, monkeypatch, killed_at):
    """The marker comes last and the folder is renamed into place only when whole, so a download that dies at
    any file leaves nothing that looks finished (before, the marker came first, sorted, and a download killed at
    the weights looked finished for good)."""
    from heal_core import storage
    from heal_core.train import MARKER, finished
    from tasks.training import local_model, local_model_dir

    remote = tmp_path / "store" / "model"
    remote.mkdir(parents=True)
    (remote / "model.safetensors").write_bytes(b"w" * 100)
    (remote / MARKER).write_text(
        json.dumps({"name": "stage1", "model_dir": "x", "examples": 1, "steps": 1, "train_loss": 0.1})
    )
    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = parse_config({"storage": {"uri": str(tmp_path / "store")}})
    real = storage._place_local  # where each downloaded file is written (streamed from storage)

    def killed(path, data, exclusive=False):
        if path.endswith("/" + killed_at):
            raise KeyboardInterrupt  # the worker dies here
        return real(path, data, exclusive)

    monkeypatch.setattr(storage, "_place_local", killed)
    with pytest.raises(KeyboardInterrupt):
        local_model(str(remote), cfg)
    local = local_model_dir(str(remote))
    assert finished(local) is None and not local.exists()
    monkeypatch.setattr(storage, "_place_local", real)  # the retry
    assert local_model(str(remote), cfg) == str(local)
    assert (local / "model.safetensors").read_bytes() == b"w" * 100 and finished(local) is not None
    assert [p.name for p in local.parent.iterdir()] == [local.name]  # no temporary folder left


def test_a_hub_model_is_named_by_its_commit(tmp_path, monkeypatch):
    """The same hub name at another commit is another teacher: its generations are not another's."""
    import huggingface_hub.constants

    from heal_core.fingerprints import model_identity

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = cache / "models--org--teacher"
    for sha in ("a" * 40, "b" * 40):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    first = model_identity("org/teacher")
    (repo / "refs" / "main").write_text("b" * 40)
    assert (first, model_identity("org/teacher")) == ("org/teacher@" + "a" * 40, "org/teacher@" + "b" * 40)
    with pytest.raises(ValueError, match="cannot tell which revision of the hub model org/absent"):
        model_identity("org/absent")
