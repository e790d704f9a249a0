"""Where a run's outputs live under ``<storage.uri>/runs/<run_id>/``: one place, so every task agrees."""

from __future__ import annotations

import re
from dataclasses import dataclass

from heal_core import storage

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_run_id(run_id: str) -> str:
    """Run ids become storage keys: no separators, no ``..``, nothing absolute."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-' (no '/', no '..')")
    return run_id


@dataclass(frozen=True)
class RunLayout:
    root: str  # <storage.uri>/runs/<run_id>

    @classmethod
    def of(cls, storage_uri: str, run_id: str) -> RunLayout:
        return cls(storage.join(storage_uri, "runs", check_run_id(run_id)))

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def config(self) -> str:
        return self.path("config.yaml")

    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    def shard_problems(self, shard: int) -> str:
        return self.path("problems", f"shard-{shard:05d}.parquet")

    def shard_samples(self, shard: int) -> str:
        return self.path("samples", f"shard-{shard:05d}.parquet")

    def shard_lineage(self, shard: int) -> str:
        """Per-problem stats and GEAR skips of a shard; written last, so it marks the shard complete."""
        return self.path("samples", f"shard-{shard:05d}.json")

    def curriculum(self, name: str) -> str:
        return self.path("curriculum", f"{name}.parquet")

    def model(self, variant: str, seed: int, stage: str) -> str:
        """One stage's model of one (variant, seed): ``models/<variant>/seed-<seed>/<stage dataset>``."""
        return self.path("models", variant, f"seed-{seed}", stage)

    def variant_record(self, variant: str, seed: int) -> str:
        """The (variant, seed)'s result (stages, steps, final model, or why it was skipped); written after its
        last stage is stored, so it marks the (variant, seed) finished."""
        return self.path("models", variant, f"seed-{seed}", "variant.json")

    @property
    def evaluation(self) -> str:
        return self.path("eval", "results.parquet")

    @property
    def evaluation_summary(self) -> str:
        """pass@1 and pass@k per model, benchmark and metadata group (MATH-500 subject, level)."""
        return self.path("eval", "summary.parquet")

    @property
    def contamination(self) -> str:
        """Training problems dropped as copies of evaluation items, each with the item it matches."""
        return self.path("decontamination.json")

    @property
    def report(self) -> str:
        return self.path("report.md")

    def plot(self, name: str) -> str:
        return self.path("plots", f"{name}.png")
