"""How heal-pipeline's children run: one ``Executor`` per ``orchestration.mode``, so the pipeline says *what*
runs (shards, training, evaluation) and never *how*.

* ``Embedded``: subflows in this process (a laptop, the tests).
* ``Deployments``: each child is a run of its own deployment on a work pool (``flows/dispatch.py``), so a failed
  shard, (variant, seed) of the training or (model, set shard) of the evaluation is retried alone on a GPU worker,
  from the UI.

Both hand a child the run's URI and the config as plain JSON; the child opens the same ``Run`` from them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from prefect import runtime

from flows.dispatch import EVAL_DEPLOYMENT, SHARD_DEPLOYMENT, TRAIN_DEPLOYMENT, Child, run_children
from flows.evaluate import heal_eval
from flows.shard import heal_shard
from flows.train import heal_train
from heal_core import storage
from heal_core.config import HealConfig
from heal_core.run import Run
from tasks.evaluation import evaluation_plan, pending_units, write_evaluation
from tasks.training import TrainedModel


class Executor(ABC):
    label: str  # for the log

    def __init__(self, run: Run, cfg: HealConfig) -> None:
        self.run, self.cfg = run, cfg

    @abstractmethod
    def shards(self, pending: Sequence[int], on_done: Callable[[int], None]) -> None:
        """Generate every pending shard; ``on_done(shard)`` as each completes."""

    @abstractmethod
    def train(self) -> None:
        """Every (variant, seed) of the config."""

    @abstractmethod
    def evaluate(self, trained: Sequence[TrainedModel]) -> None:
        """Teacher, student base and every trained model; the run's results assembled from their parts."""


class Embedded(Executor):
    label = "embedded"

    def shards(self, pending: Sequence[int], on_done: Callable[[int], None]) -> None:
        for shard in pending:
            heal_shard(self.run.root, shard, self.cfg)
            on_done(shard)

    def train(self) -> None:
        heal_train(self.run.root, self.cfg)

    def evaluate(self, trained: Sequence[TrainedModel]) -> None:
        heal_eval(self.run.root, self.cfg, list(trained))


class Deployments(Executor):
    """Children named and keyed by run id, child and config hash: a retried parent re-attaches to them."""

    label = "deployments"

    def _child(self, name: str, key: str, extra: dict[str, Any]) -> Child:
        """Flow run ``<run id>-<name>``, idempotency key ``<run id>-<key>-<config hash>``."""
        params = {"run_root": self.run.root, "config": self.cfg.model_dump(mode="json"), **extra}
        return Child(f"{self.run.run_id}-{name}", f"{self.run.run_id}-{key}-{self.cfg.config_hash()}", params)

    def _wait(self, deployment: str, children: Sequence[Child], **options: Any) -> None:
        run_children(deployment, children, self.run.run_id, self.cfg.orchestration.poll_seconds, **options)

    def shards(self, pending: Sequence[int], on_done: Callable[[int], None]) -> None:
        # rerun_completed: the pipeline found these shards unfinished, so a completed run of one lost its outputs
        self._wait(
            SHARD_DEPLOYMENT,
            [self._child(f"shard-{s:05d}", f"shard-{s}", {"shard": s}) for s in pending],
            rerun_completed=True,
            on_completed=lambda child: on_done(child.parameters["shard"]),
        )

    def train(self) -> None:
        # one run per (variant, seed): as many students train at once as GPU workers are free
        self._wait(
            TRAIN_DEPLOYMENT,
            [
                self._child(f"train-{v}-seed-{s}", f"train-{v}-{s}", {"variant": v, "seed": s})
                for v in self.cfg.pace.variants
                for s in self.cfg.pace.seeds
            ],
        )

    def evaluate(self, trained: Sequence[TrainedModel]) -> None:
        # one run per (model, set shard) the run holds no part of; the parent assembles the parts, loading no model
        _, units = evaluation_plan(self.cfg, trained)
        models = {(m.variant, m.seed): [asdict(m)] for m in trained}
        self._wait(
            EVAL_DEPLOYMENT,
            [
                self._child(
                    f"eval-{u.name}",
                    f"eval-{u.name}",
                    {"trained": models.get((u.model, u.train_seed), []), "units": [asdict(u)]},
                )
                for u in pending_units(self.run, units)
            ],
            rerun_completed=True,
        )
        write_evaluation(self.run, units, self.cfg)


def executor_for(run: Run, cfg: HealConfig) -> Executor:
    """``auto`` follows the parent: a parent started from a deployment (a schedule, the UI, the REST API) runs
    its children as deployment runs; one started in-process (``heal run``, tests) runs them as subflows.
    Deployment runs execute on other workers, so the run's storage must be one they share."""
    mode = cfg.orchestration.mode
    if mode == "deployments" or (mode == "auto" and runtime.deployment.id is not None):
        storage.check_shared(cfg.storage.uri)
        return Deployments(run, cfg)
    return Embedded(run, cfg)
