"""One run's storage, ``<storage.uri>/runs/<run_id>/``: every path, the config pin, the manifest and the markers
that say a step finished. Flows, tasks, the CLI and tools all go through a ``Run``, so they agree on where
everything is and on what counts as done; a child flow gets the run's URI and opens the same ``Run`` from it.

What marks what finished (each written last, after the outputs it vouches for):

* a shard: ``samples/shard-<k>.json``, its lineage record, under the run's config hash, with the samples
  Parquet intact (``finished_shard``);
* a (variant, seed): ``models/<variant>/seed-<seed>/variant.json`` (``variant``); a training stage: the
  ``heal_stage.json`` in its model directory (``heal_core/train.py``);
* one model's evaluation on one set shard: ``eval/parts/<unit>.parquet`` (``evaluation_part``), from which the
  run's ``eval/results.parquet`` is assembled;
* the run's report: ``summary.json``, written after everything else (``heal report`` reads it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import yaml

from heal_core import storage
from heal_core.config import HealConfig, parse_config
from heal_core.schema import TRAJECTORY_SCHEMA
from heal_core.storage import StorageError
from heal_core.train import VariantResult

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


STORAGE_ROOT, STORAGE_OPTIONS = "HEAL_STORAGE_ROOT", "HEAL_STORAGE_OPTIONS"


class StorageNotAllowed(ValueError):
    """A run's storage outside what the worker's operator pinned (``check_storage``)."""


def check_storage(cfg: HealConfig) -> None:
    """On a worker whose operator pinned the storage (``HEAL_STORAGE_ROOT``, which ``heal deploy`` sets in the
    pools' job template), a run's ``storage.uri`` must lie under it and its ``storage_options`` must be the pinned
    ones (``HEAL_STORAGE_OPTIONS``, JSON; none when unset). A flow run's config must not point a worker's writes,
    or its reads of stored models, anywhere else. Unpinned (a laptop), anything goes."""
    root = os.environ.get(STORAGE_ROOT)
    if not root:
        return
    uri = cfg.storage.uri.rstrip("/")
    inside = uri == root.rstrip("/") or uri.startswith(root.rstrip("/") + "/")
    if not inside or ".." in uri.split("/"):
        raise StorageNotAllowed(
            f"storage.uri {cfg.storage.uri} is outside this worker's storage {root} ({STORAGE_ROOT})"
        )
    pinned = json.loads(os.environ.get(STORAGE_OPTIONS) or "{}")
    if cfg.storage.storage_options != pinned:
        raise StorageNotAllowed(
            f"storage.storage_options differ from this worker's ({STORAGE_OPTIONS}): a run on "
            "this worker uses the operator's storage settings"
        )


class RunConfigMismatch(ValueError):
    """A run id already used with another config: resuming it would mix two experiments."""


def check_run_id(run_id: str) -> str:
    """Run ids become storage keys: no separators, no ``..``, nothing absolute."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-' (no '/', no '..')")
    return run_id


class _File:
    """A file at a fixed place in every run: ``run.config`` is the URI of the run's ``config.yaml``."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, run: Run, owner: type) -> str:
        return run.path(*self.parts)


@dataclass(frozen=True)
class Run:
    root: str  # <storage.uri>/runs/<run_id>
    options: dict[str, Any] = field(default_factory=dict, compare=False)  # storage.storage_options

    @classmethod
    def of(cls, cfg: HealConfig, run_id: str) -> Run:
        check_storage(cfg)
        return cls(storage.join(cfg.storage.uri, "runs", check_run_id(run_id)), cfg.storage.storage_options)

    @classmethod
    def stored(cls, run_id: str, storage_uri: str) -> tuple[Run, HealConfig]:
        """The run under ``storage_uri`` and the config it stored (whose storage options it is then read with),
        with ``storage.uri`` set to ``storage_uri``: a run is where it was found. A storage copied or moved
        elsewhere (another bucket, a laptop's copy of a cluster's prefix) is resumed, trained on and evaluated in
        place, not in the storage its config was first written for; the setting is execution-only, so the run's
        config hash is the same."""
        run = cls.of(parse_config({"storage": {"uri": storage_uri}}), run_id)
        cfg = run.stored_config()
        if cfg.storage.uri != storage_uri:
            cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"uri": storage_uri})})
        return cls(run.root, cfg.storage.storage_options), cfg

    @classmethod
    def at(cls, root: str, cfg: HealConfig) -> Run:
        """The run a parent flow handed over by its URI, which must be a run of the config's storage: a flow
        run's parameters must not make a worker write anywhere else."""
        parent, _, run_id = root.rstrip("/").rpartition("/")
        if parent != storage.join(cfg.storage.uri, "runs"):
            raise StorageNotAllowed(f"run_root {root} is not a run under storage.uri {cfg.storage.uri}")
        return cls.of(cfg, run_id)

    def check_models(self, uris: list[str]) -> None:
        """On a pinned worker (``check_storage``), the models a flow run hands over to evaluate must lie under this
        storage's runs (trained or adopted by a run): a parameter must not make a worker load, or fetch, any
        other. Unpinned, any model reference is taken (the tests evaluate tiny models as stand-ins)."""
        runs = self.root.rstrip("/").rsplit("/", 1)[0] + "/"
        outside = [u for u in uris if not u.startswith(runs) or ".." in u.split("/")]
        if os.environ.get(STORAGE_ROOT) and outside:
            raise StorageNotAllowed(f"models outside the storage's runs ({runs}): {', '.join(outside)}")

    @property
    def run_id(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def sibling(self, run_id: str) -> Run:
        """Another run under the same ``storage.uri``."""
        return Run(storage.join(self.root.rstrip("/").rsplit("/", 1)[0], check_run_id(run_id)), self.options)

    # ---- paths ---------------------------------------------------------------------------------------

    config = _File("config.yaml")  # the pinned config (``pin``)
    manifest = _File("manifest.json")  # each shard's and step's status
    problems_pin = _File("problems.json")  # what the run's problems are: their count and a hash of their keys
    quarantine = _File("quarantine.json")  # malformed problem records: record number, field and reason
    contamination = _File("decontamination.json")  # training problems dropped as copies of evaluation items
    evaluation = _File("eval", "results.parquet")  # pass@1 and pass@k per model, benchmark and problem
    evaluation_summary = _File("eval", "summary.parquet")  # the same per model, benchmark and metadata group
    summary = _File("summary.json")  # the headline figures; written last
    report = _File("report.md")
    dataset_card = _File("curriculum", "README.md")  # heal_core/cards.py; written by the report step
    parent = _File("parent.json")  # a derived run's origin: the run, the kind, the overrides (heal_core/derived.py)

    def shard_problems(self, shard: int) -> str:
        return self.path("problems", f"shard-{shard:05d}.parquet")

    @cached_property
    def generation(self) -> Run:
        """The run whose samples this run reads: itself, or for a derived run (``heal train``, ``heal eval``) the run
        that generated them, named in its ``parent.json`` (``samples``), whose objects it references instead of
        copying: removing a derived run never touches them. A run derived before heal referenced samples holds its
        own copies (no ``samples`` key). Read once per ``Run`` object."""
        return self._referenced("samples")

    @cached_property
    def assembly(self) -> Run:
        """The run whose curriculum this run trains on: itself, or for a derived run whose datasets would be its
        parent's row for row (``fingerprints.curriculum``) the run that assembled them, named in ``parent.json``
        (``curriculum``): a new learning rate on a million problems does not sort their texts again."""
        return self._referenced("curriculum")

    @cached_property
    def _origin(self) -> dict[str, Any]:
        """This run's ``parent.json`` (empty for a run that is not derived), read once for both references."""
        return storage.read_json(self.parent, self.options) if storage.exists(self.parent, self.options) else {}

    def _referenced(self, key: str) -> Run:
        source = self._origin.get(key)
        return self if source is None else self.sibling(source)

    def shard_samples(self, shard: int) -> str:
        """The shard's samples; a derived run's are its parent's (``generation``)."""
        return self.generation.path("samples", f"shard-{shard:05d}.parquet")

    def shard_lineage(self, shard: int) -> str:
        """Per-problem stats and GEAR skips of a shard; written last, so it marks the shard complete."""
        return self.path("samples", f"shard-{shard:05d}.json")

    def derived_record(self, run_id: str) -> str:
        """A run derived from this one (``heal train``, ``heal eval``): its id and what it changed, so this run's
        report can list every model trained on its data."""
        return self.path("derived", f"{run_id}.json")

    def curriculum(self, name: str) -> str:
        """A dataset of the curriculum; a derived run's may be its parent's (``assembly``)."""
        return self.assembly.path("curriculum", f"{name}.parquet")

    def evaluation_part(self, unit: str) -> str:
        """One model's results on one set shard (``heal_core.evaluate.EvalUnit.name``), as its heal-eval run wrote
        them; written whole, so it marks the unit evaluated."""
        return self.path("eval", "parts", f"{unit}.parquet")

    def model(self, variant: str, seed: int, stage: str) -> str:
        """One stage's model of one (variant, seed): ``models/<variant>/seed-<seed>/<stage dataset>``."""
        return self.path("models", variant, f"seed-{seed}", stage)

    def variant_record(self, variant: str, seed: int) -> str:
        """The (variant, seed)'s result (stages, steps, final model, or why it was skipped); written after its
        last stage is stored, so it marks the (variant, seed) finished."""
        return self.path("models", variant, f"seed-{seed}", "variant.json")

    def model_card(self, variant: str, seed: int) -> str:
        """The (variant, seed)'s model card (``heal_core/cards.py``), beside its record."""
        return self.path("models", variant, f"seed-{seed}", "README.md")

    def plot(self, name: str) -> str:
        return self.path("plots", f"{name}.png")

    # ---- the config pin ------------------------------------------------------------------------------

    def pin(self, cfg: HealConfig) -> None:
        """Store the run's config, or check that the stored one is ``cfg`` (same hash)."""
        if storage.exists(self.config, self.options):
            stored = self.stored_config()
            if stored.config_hash() != cfg.config_hash():
                raise RunConfigMismatch(
                    f"{self.config} holds config {stored.config_hash()}, not {cfg.config_hash()}: "
                    "use a new run id, or resume with the stored config"
                )
            return
        storage.write_bytes(cfg.to_yaml().encode(), self.config, self.options)

    def stored_config(self) -> HealConfig:
        return parse_config(yaml.safe_load(storage.read_bytes(self.config, self.options)), source=self.config)

    # ---- markers -------------------------------------------------------------------------------------

    def write_manifest(self, config_hash: str, shards: dict[int, str], steps: dict[str, str]) -> None:
        """Each shard's and step's status, for people and tools (the markers, not this, decide what is redone)."""
        record = {
            "run_id": self.run_id,
            "config_hash": config_hash,
            "shards": {str(k): v for k, v in shards.items()},
            "steps": steps,
        }
        storage.write_json(record, self.manifest, self.options)

    def finished_shard(self, shard: int, config_hash: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the shard's lineage record, None) if it finished under ``config_hash`` with its samples intact, else
        (None, why it must be generated again, or None when it simply has not finished).

        Intact means the samples Parquet reads completely, in schema, with as many rows as the lineage record
        says. A truncated or corrupt object (a failing disk, a copy that was not atomic, a hand edit) therefore
        sends the shard back to generation instead of being merged, silently short, into the curriculum.
        """
        uri = self.shard_lineage(shard)
        if not storage.exists(uri, self.options):
            return None, None
        try:
            record = storage.read_json(uri, self.options)
            if record.get("config_hash") != config_hash:
                return None, None
            rows = storage.read_parquet(self.shard_samples(shard), TRAJECTORY_SCHEMA, self.options).num_rows
        except StorageError as err:
            return None, f"shard {shard} is corrupt and will be generated again: {err}"
        if rows != record["samples"]:
            return None, f"shard {shard} holds {rows} samples, its lineage says {record['samples']}: generated again"
        return record, None

    def shard_count(self) -> int:
        """How many problem shards the run wrote (its problems step writes all of them before any is generated)."""
        return len(storage.list_files(self.path("problems"), self.options))

    def unfinished_shards(self, config_hash: str, shards: int) -> list[int]:
        return [s for s in range(shards) if self.finished_shard(s, config_hash)[0] is None]

    def shard_records(self, shards: int) -> list[dict[str, Any]]:
        """Every shard's lineage record, in shard order (read once per run step that needs them)."""
        return [storage.read_json(self.shard_lineage(s), self.options) for s in range(shards)]

    def variant(self, variant: str, seed: int) -> VariantResult | None:
        """The (variant, seed)'s stored result, every stage marked resumed; None until it is finished."""
        record = self.variant_record(variant, seed)
        if not storage.exists(record, self.options):
            return None
        result = VariantResult.from_json(storage.read_json(record, self.options))
        return replace(result, stages=tuple(replace(s, resumed=True) for s in result.stages))

    def variants(self, cfg: HealConfig) -> list[VariantResult]:
        """The finished (variant, seed) results of the config's variants and seeds, skipped ones included."""
        found = (self.variant(v, s) for v in cfg.pace.variants for s in cfg.pace.seeds)
        return [result for result in found if result is not None]
