"""Runs derived from a finished run's data: new students (``heal train``) or a new evaluation (``heal eval``),
without touching the teacher.

A derived run is a run of its own, ``<run id>.<kind>-<config hash>`` beside the one it comes from, so its results
land next to the old ones, keyed by what changed, and every tool that reads a run reads it. It starts from the
run's problems (copied) and samples (referenced, not copied: ``Run.generation``), so the curriculum is exactly the
run's, even when the problem file has grown since; its curriculum is the run's too, referenced (``Run.assembly``),
unless PACE's mode changed; and it may change only the settings of the steps after generation: PACE's training
settings and the student (``train``), or the evaluation (``eval``). A setting that changes which rows are kept
belongs to a new ``heal run``, where the generation store re-selects the stored rows without sampling
(``heal_core/generation_store.py``). Models whose training fingerprint is the run's are adopted, not trained
again (``heal_core/fingerprints.py``), and the teacher's and student base's evaluations come from the evaluation
store.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from heal_core import storage
from heal_core.config import ConfigError, HealConfig, parse_config
from heal_core.evaluate import HELD_OUT
from heal_core.run import Run
from heal_core.schema import EVALUATION_SCHEMA
from heal_core.settings import Role, leaves, renames

Kind = Literal["train", "eval"]
ROLE: dict[str, Role] = {"train": Role.TRAINING, "eval": Role.EVALUATION}
"""A derived run may change the settings of its kind's role (and execution settings), and no other: every other
one shapes the data."""


def derived_config(parent: HealConfig, kind: Kind, overrides: list[str], variants: list[str]) -> HealConfig:
    """The parent's config with ``overrides`` (``section.key=value``) and, for ``train``, ``variants`` added to
    ``pace.variants``; an override of a setting of another role (``heal config explain`` shows each one's), one
    that changes which rows are kept among them, is a ``ConfigError`` naming it. Execution settings (how many
    GPUs a stage trains on, its checkpoints) change how, not what: any derived run may set them."""
    roles = {leaf.path: leaf.declaration.role for leaf in leaves(HealConfig) if leaf.declaration}
    mine = sorted({path.split(".")[0] for path, role in roles.items() if role == ROLE[kind]})
    renamed = renames(HealConfig)
    for assignment in overrides:
        key = assignment.partition("=")[0].strip()
        path = renamed.get(key, key)
        role = roles.get(path)
        if role == Role.SELECTION and path.split(".", 1)[0] in mine:
            raise ConfigError(
                f"--set {key}: it changes which rows are kept; start a new heal run with it (the "
                "generation store re-selects the stored rows without sampling again)"
            )
        if role is not None and role not in (ROLE[kind], Role.EXECUTION):
            raise ConfigError(
                f"--set {key}: heal {kind} changes only {', '.join(s + '.*' for s in mine)} ({ROLE[kind]} "
                f"settings; the role of {key} is {role}): heal train changes training settings, heal "
                "eval evaluation settings, and any other needs a new heal run (the generation store "
                "re-uses what the teacher already sampled)"
            )
    if variants and kind != "train":
        raise ConfigError("--variant: only heal train trains variants")
    added = [v for v in variants if v not in parent.pace.variants]
    extra = [f"pace.variants=[{', '.join([*parent.pace.variants, *added])}]"] if added else []
    return parse_config(parent.model_dump(mode="json"), [*overrides, *extra], source=f"heal {kind}")


def derived_id(run_id: str, kind: Kind, cfg: HealConfig) -> str:
    return f"{run_id}.{kind}-{cfg.config_hash()[:8]}"


def trained_models(run: Run, cfg: HealConfig) -> list[tuple[str, str, str, int, str, str]]:
    """(run id, what it changed, variant, seed, held-out pass@1, the run that trained it) of every model trained on
    ``run``'s data: its own, then those of each run derived from it and not removed since (an adopted model is
    listed under every run that evaluates it, as trained by ``run``)."""
    runs: list[tuple[Run, HealConfig, str]] = [(run, cfg, "—")]
    for record_uri in storage.list_files(run.path("derived"), run.options):
        record = storage.read_json(record_uri, run.options)
        derived = run.sibling(record["run_id"])
        if not storage.exists(derived.config, derived.options):
            continue  # removed since (the parent's objects, this record among them, are never touched)
        changed = ", ".join([*record["overrides"], *(f"+{v}" for v in record["variants"])]) or "—"
        runs.append((derived, derived.stored_config(), f"{record['kind']}: {changed}"))
    rows = []
    for this, this_cfg, changed in runs:
        scores = _held_out_pass_at_1(this)
        for result in this.variants(this_cfg):
            if result.model_dir is not None:
                score = scores.get((result.variant, result.seed))
                trained_by = this.run_id if result.model_dir.startswith(this.root + "/") else run.run_id
                rows.append(
                    (
                        this.run_id,
                        changed,
                        result.variant,
                        result.seed,
                        "—" if score is None else f"{score:.3f}",
                        trained_by,
                    )
                )
    return rows


def _held_out_pass_at_1(run: Run) -> dict[tuple[str, int], float]:
    """Mean held-out pass@1 per (variant, seed) of a run's evaluation; empty until the run has evaluated."""
    if not storage.exists(run.evaluation, run.options):
        return {}
    table = storage.read_parquet(
        run.evaluation, EVALUATION_SCHEMA, run.options, ["model", "train_seed", "benchmark", "pass_at_1"]
    )
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in table.to_pylist():
        if row["benchmark"] == HELD_OUT and row["train_seed"] is not None:
            values[(row["model"], row["train_seed"])].append(row["pass_at_1"])
    return {key: sum(v) / len(v) for key, v in values.items()}
