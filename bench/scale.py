"""The steps after generation at scale: wall time, peak RSS and S3 traffic of each, on a synthesized finished run.

A finished run of ``--problems`` P problems is written directly in the pipeline's own schemas and layout, without a
teacher (``synthesize``), then each step that follows generation runs on it as ``heal run`` runs it, each in a fresh
process of its own under ``/usr/bin/time -v``, in this order:

1. ``curriculum``: ``tasks.curriculum.build_datasets.fn(run, shards, cfg)`` (no Prefect API); the dataset sizes it
   returns feed the report step, as in ``flows/pipeline.py``;
2. ``report``: ``tasks.report.write_report`` as a task of a ``@flow`` on a local Prefect API (``flows/local_api.py``,
   as ``heal run`` gets one: the step creates Prefect artifacts), so its RSS includes Prefect's client; the API
   server is a process of its own, in the tree column only;
3. ``compare``: ``heal compare RUN RUN`` (the run beside itself);
4. ``export``: ``heal export RUN DEST --variant heal --seed S`` into a fresh folder;
5. ``train``: ``heal train RUN --set pace.variants=[heal] --set pace.seeds=[S] --set pace.epochs=0.000001``, a
   derived run (``flows/derive.py``: its curriculum, training, evaluation and report) that trains the tiny demo
   student one optimizer step per stage (heal has no step cap; a tiny epoch count is what caps it; ``--train-set``
   adds or overrides settings, e.g. ``pace.batch_size=4``) and evaluates that model on the held-out problems (the
   teacher's and student base's results come from the evaluation store, as they would after a real run). The
   derived run and its record are removed before each measurement: nothing is adopted or resumed.

Per step: wall time (``time -v``'s elapsed), rows per second (the run's sample rows / wall time), peak RSS (``time
-v``'s "Maximum resident set size": the largest single process of the step, from the kernel), the peak of the whole
process tree's RSS, polled every 0.2 s (psutil), and the anonymous peak (the largest process's RSS less its
file-backed pages: the memory-mapped Arrow that training reads counts in RSS but is page cache). With ``--s3`` the
run lives in a moto S3 server on 127.0.0.1, in this process behind a WSGI middleware that counts, server side, every
request, the request bodies' bytes (written) and the response bodies' bytes (read); the steps reach it through
``s3://`` with the AWS_* environment variables of heal's docs, and each step's bytes read are also shown as a share
of the samples' Parquet bytes. A step that fails (an
exception, MemoryError, killed past ``--max-rss-gb`` of tree RSS or ``--step-timeout``) is recorded as failed with its
reason, and the bench goes on. ``--code DIR`` runs the steps with another checkout's code first on PYTHONPATH (the
baseline: ``git worktree add --detach ../heal-base <commit>``); the run is synthesized by this checkout,
its config pin holding only the settings that differ from the defaults, so an older heal reads it to the same hash.

**The template.** The synthesized run mirrors the rows of a real one: the embedded default's generation (160 demo
problems, N = 8, shards of 64; ``--quick``: 12 of them in shards of 4, 3 held-out problems, heal and rs_sft for one
seed), generated once under ``--scratch`` by heal's shard chain and generation store with the bundled teacher
(``generate_stored``, as a shard's worker runs it; 103 s on the 2-core box), or the rows of any finished run on demo
problems (``--template RUN_ROOT``). Its rows are those of ``heal run``'s run of the embedded default (the same 2,020
rows, 2026-12-07), and its row mix, as this script prints it on its ``template`` line, is per problem 12.625 rows:

* Stage I: 8 samples (1,280), 769 verified (60.1 %), 408 kept (at most 4 per problem);
* buckets: 96 solved, 7 hard, 57 extremely hard (35.6 %; pass rate at most 1 of 8); Stage II on the 64 problems
  below a pass rate of 0.5: 8 hinted rows each (512), 505 verified, 0 leaking the hint (the tiny teacher never
  writes one), PURE keeping 221 and rejecting 181 (164 by ratio, 17 as leaps), 110 never scored (past the cap of
  4 kept, or unverified); GEAR on the 57 extremely hard: 2 failed paths x 2 continuations (228), 226 verified, 130
  kept, 96 PURE-rejected;
* 1,182 of the 2,020 rows (58.5 %) repeat an earlier row's (prompt, text): the tiny teacher writes a problem's right
  solution as the same string every time, so most duplicates are within Stage I and between Stage I and II.

Each synthesized problem copies one template problem's rows (the template's problems in turn, a new permutation each
round, so P = 1,000 holds each six or seven times): their stages, verified flags, leaked hints, PURE verdicts, ratios
and scores, kept flags, waves, GEAR lineage and seeds, and the same duplicate pattern (rows whose texts were equal in
the template are equal here; all others differ; ``--no-duplicates``: none equal, as a large teacher's long traces
rarely are). Its problem is a new demo chain of the template problem's length and kind; ``--no-truth`` words it so
that no step checker recognizes it, and the report's ground-truth audit is then skipped.

**Traces.** Every row has exactly ``--trace-tokens`` T tokens: a demo solution of its own problem (right, or with a
wrong first step where the template row had a wrong step by the demo's step checker; boxing the gold answer where the
template row's answer was the gold one), with T minus its length tokens of demo-like steps (``a+k=b.``) spliced in
before the answer line; at small T the solution is cut at T tokens. The spliced steps are a window, at a random step,
of one pool of 2^22 tokens (or 4 T) made once per synthesis: token ids of the demo teacher's tokenizer, so every
text is the exact decoding of its ids and the audit's token-to-step mapping works, and one float32 entropy per token
(exponential around 0.02 with 3 % gamma surges). Windows at random places of a pool that large keep texts distinct
and give Parquet's compression no repetition to find but the duplicates put there on purpose. PURE's per-step lists
are the template row's, repeated to the text's step count; GEAR's breakpoint token and prefix are scaled to T. The
demo's vocabulary is 340 tokens: Parquet bit-packs its ids, so a teacher with a 152k vocabulary writes more bytes per
row (the in-memory Arrow size, what RSS follows, is the same).

**Outputs.** Besides the problems' and samples' shards, their lineage records (stats, GEAR skips, sources; each
written after its shard), the config pin, problems pin and manifest, the run gets stand-ins for what training and
evaluation store, none of which depends on P: every configured (variant, seed)'s record and stage model folders (the
bundled student's files and completion marker, a 128-step budget, a made-up loss curve), the evaluation tables
(teacher, student base and each model on the held-out problems, pass rates drawn) and the teacher's and student
base's entries in the storage's evaluation store. A synthesized run is cached under ``--scratch`` by (template, P, T,
seed, shard size, --no-truth, --no-duplicates): reruns skip synthesis, and what an earlier measurement's steps wrote
into it is removed first. Writes go through ``heal_core.storage``, so ``synthesize`` writes to a local path or
``s3://`` alike; ``--s3`` uploads the cached local run (not counted) and removes it afterwards.

**Costs to know** (the 2-core box, 2026-12-07, T = 4,096, other work running beside it). Synthesis: 10-16 s per 1,000
problems (12,640 rows; 121 MB of samples Parquet, 244 MB with ``--no-duplicates``). The report's audit maps each
failed Stage I trace's tokens to steps by decoding every prefix of its first third (``entropy.token_steps``): quadratic
in T, 1.1-1.7 s per 4,096-token trace, and P = 1,000 has about 3,200 such traces, so about an hour, and as much again
in the train step's own report: at that T use ``--no-truth`` or a ``--step-timeout``. The train step's peak RSS, 7.6
GiB at P = 50 and 7.9 GiB at P = 1,000, is the student's batch of 16 traces of 4,096 tokens, not P
(``--train-set pace.batch_size=...``).

    python bench/scale.py --problems 1000,5000,20000 --trace-tokens 4096 [--s3] [--code ../heal-base] [--max-rss-gb 20]
    python bench/scale.py --quick        # 8 problems, 64 tokens, the reduced template: a smoke run (CI)

Last line: each step's largest peak RSS (MiB) and the P it was measured at.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STEPS = ("curriculum", "report", "compare", "export", "train")
RUN_ID = "scale"
POOL_TOKENS = 1 << 22  # the trace pool: windows of it are the long part of every trace
SURGE_SHARE = 0.03
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "heal-scale"
CLI = "import sys; from flows.cli import app; sys.argv[0] = 'heal'; app()"
MIB = 1 << 20


# ---- 1. the template: a real generation of the pipeline----------------------------------------------------------


def _demo_problem_file(path: Path, split: str, count: int) -> Path:
    from heal_core.demo import demo_problems

    path.write_text(
        "".join(
            json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}) + "\n"
            for p in demo_problems(split)[:count]
        )
    )
    return path


def build_template(scratch: Path, quick: bool) -> Path:
    """The template run's folder, generated the first time by heal's own shard chain and generation store
    (``heal_core.generation_store.generate_stored``, as ``tasks.generate.run_shard`` calls it; no Prefect) with
    the bundled teacher: the embedded default (160 problems), or with ``quick`` 12 of its problems in shards of 4,
    3 held-out problems, heal and rs_sft for one seed."""
    from dataclasses import asdict

    import torch

    from heal_core import fingerprints, storage, trajectory
    from heal_core.backends.factory import build_backend
    from heal_core.config import parse_config
    from heal_core.demo import demo_defaults, demo_problems
    from heal_core.generation_store import generate_stored, lineage_sources
    from heal_core.problems import problems_to_records
    from heal_core.run import Run
    from heal_core.schema import PROBLEM_SCHEMA, to_table
    from tasks.generate import generation_store
    from tasks.models import resolve_model

    home = scratch / ("template-quick" if quick else "template")
    root = home / "store" / "runs" / "template"
    if (home / "template.json").exists():
        return root
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    overrides = [f"storage.uri={home / 'store'}"]
    if quick:
        overrides += [
            f"problems.uri={_demo_problem_file(home / 'problems.jsonl', 'generation', 12)}",
            f"evaluation.uri={_demo_problem_file(home / 'eval.jsonl', 'eval', 3)}",
            "evaluation.samples=2",
            "orchestration.shard_size=4",
            "pace.seeds=[0]",
            "pace.variants=[heal,rs_sft]",
        ]
    cfg = parse_config(demo_defaults(), overrides, source="bench/scale.py template")
    print(f"template: generating {home} with the bundled teacher (once)", flush=True)
    torch.set_num_threads(1)  # the template's speed is not measured; a busy 2-core box slows 2 threads 10x
    started = time.perf_counter()
    run = Run.of(cfg, "template")
    run.pin(cfg)
    problems = demo_problems("generation")[: 12 if quick else None]
    teacher = resolve_model(cfg.teacher.model, "teacher")
    store, fingerprint = generation_store(cfg, teacher)
    backend = functools.cache(lambda: build_backend(cfg.teacher, teacher))
    size = cfg.orchestration.shard_size
    for shard, first in enumerate(range(0, len(problems), size)):
        chunk = problems[first : first + size]
        storage.write_parquet(to_table(problems_to_records(chunk), PROBLEM_SCHEMA), run.shard_problems(shard))
        out = generate_stored(chunk, cfg, store, fingerprints.selection(cfg), teacher, backend, lambda: None)
        storage.write_parquet(trajectory.to_table(out.trajectories), run.shard_samples(shard))
        storage.write_json(
            {
                "shard": shard,
                "config_hash": cfg.config_hash(),
                "generation_fingerprint": fingerprint,
                "problems": len(chunk),
                "samples": len(out.trajectories),
                "stats": [asdict(s) for s in out.stats.values()],
                "gear_skips": [asdict(s) for s in out.skips],
                "generation": lineage_sources(out.reused, out.reselected, out.sampled, out.usage),
            },
            run.shard_lineage(shard),
        )
    seconds = time.perf_counter() - started
    (home / "template.json").write_text(json.dumps({"problems": len(problems), "seconds": seconds}))
    return root


@dataclasses.dataclass(frozen=True)
class TemplateProblem:
    problem: Any  # heal_core.problems.Problem
    rows: list[int]  # indices into Template.rows, in the run's order
    text_class: list[int]  # per row: which of the problem's distinct texts it has (equal texts, equal class)
    right: list[bool]  # per row: no wrong step by the demo's step checker
    boxed_gold: list[bool]  # per row: the extracted answer is the gold answer
    stats: dict[str, Any]
    skips: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Template:
    root: Path  # the run's folder
    cfg: Any  # HealConfig
    rows: Any  # pyarrow.Table: every sample row, without text, token ids and entropy
    stage: list[int]  # per row
    num_tokens: list[int]  # per row
    problems: list[TemplateProblem]
    usage: dict[str, float]  # the teacher's requests and PURE queries per problem
    fingerprint: str  # the generation fingerprint of its shards


HEAVY = ("text", "token_ids", "entropy")


def load_template(root: Path) -> Template:
    """Every row and lineage record of the template run, its problems' row patterns and truth."""
    import pyarrow as pa

    from heal_core import storage
    from heal_core.demo.arithmetic import first_wrong_step, parse_problem
    from heal_core.run import Run
    from heal_core.schema import TRAJECTORY_SCHEMA
    from tasks.generate import read_shard_problems

    storage_uri = str(root.parent.parent)
    run, cfg = Run.stored(root.name, storage_uri)
    shards = run.shard_count()
    records = run.shard_records(shards)
    tables = [storage.read_parquet(run.shard_samples(s), TRAJECTORY_SCHEMA) for s in range(shards)]
    full = pa.concat_tables(tables)
    texts, problem_of = full.column("text").to_pylist(), full.column("problem_id").to_pylist()
    gold, extracted = full.column("gold_answer").to_pylist(), full.column("extracted_answer").to_pylist()
    by_problem: dict[str, list[int]] = {}
    for i, pid in enumerate(problem_of):
        by_problem.setdefault(pid, []).append(i)
    stats = {s["problem_id"]: s for r in records for s in r["stats"]}
    skips: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        for skip in record["gear_skips"]:
            skips.setdefault(skip["problem_id"], []).append(skip)
    problems = []
    for shard in range(shards):
        for problem in read_shard_problems(run, shard):
            if parse_problem(problem.problem) is None:
                raise SystemExit(
                    f"{root}: {problem.problem_id} is not a demo problem; the template must be a run on "
                    "the demo's problems"
                )
            rows = by_problem.get(problem.problem_id, [])
            classes: dict[str, int] = {}
            problems.append(
                TemplateProblem(
                    problem,
                    rows,
                    [classes.setdefault(texts[i], len(classes)) for i in rows],
                    [first_wrong_step(problem.problem, texts[i]) is None for i in rows],
                    [extracted[i] == gold[i] for i in rows],
                    stats[problem.problem_id],
                    skips.get(problem.problem_id, []),
                )
            )
    teacher = [r["generation"]["teacher"] for r in records]
    usage = {key: sum(t[key] for t in teacher) / len(problems) for key in ("requests", "scored")}
    light = full.drop_columns(list(HEAVY))
    return Template(
        root,
        cfg,
        light,
        light.column("stage").to_pylist(),
        light.column("num_tokens").to_pylist(),
        problems,
        usage,
        records[0]["generation_fingerprint"],
    )


def describe(template: Template) -> str:
    """The template's row mix, as the module docstring quotes it."""
    from collections import Counter

    rows = template.rows.select(["stage", "verified", "leaked_hint", "kept", "pure_verdict"]).to_pylist()
    n, p = len(rows), len(template.problems)
    parts = [f"template {template.root}: {p} problems, {n} rows ({n / p:.3f} per problem)"]
    for stage in (1, 2, 3):
        mine = [r for r in rows if r["stage"] == stage]
        parts.append(
            f"stage {stage}: {len(mine)} rows, {sum(r['verified'] for r in mine)} verified, "
            f"{sum(bool(r['leaked_hint']) for r in mine)} leaked, {sum(r['kept'] for r in mine)} kept, "
            f"PURE {dict(Counter(r['pure_verdict'] for r in mine))}"
        )
    buckets = dict(Counter(tp.stats["bucket"] for tp in template.problems))
    duplicates = sum(len(tp.rows) - len(set(tp.text_class)) for tp in template.problems)
    parts.append(f"buckets {buckets}; {duplicates} rows repeat an earlier row's (prompt, text) ({duplicates / n:.1%})")
    return "; ".join(parts)


# ---- 2. synthesis ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pool:
    """One long trace of demo-like steps, whose windows are the long part of every synthesized trace."""

    ids: Any  # int32 token ids
    entropy: Any  # float32, one per token
    text: str
    offsets: Any  # int64: character offset of each token in ``text``, and len(text) last
    step_starts: Any  # token indices where a step begins
    pieces: list[str]  # the tokenizer's text of each id
    encode: Callable[[str], list[int]]
    separator: int  # the token ".\n\n" that ends a step


def make_pool(tokenizer_dir: str, seed: int, tokens: int = POOL_TOKENS) -> Pool:
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    steps = [
        f"{a}{op}{k}={a + k if op == '+' else a - k}.\n\n" for a in range(100) for op in "+-" for k in range(1, 21)
    ]
    encoded = [np.asarray(tokenizer.encode(step, add_special_tokens=False), dtype=np.int32) for step in steps]
    nprng = np.random.default_rng(seed)
    drawn = nprng.integers(0, len(steps), tokens // 6)
    ids = np.concatenate([encoded[d] for d in drawn])[:tokens]
    if any("".join(pieces[i] for i in e) != step for e, step in zip(encoded, steps, strict=True)):
        raise SystemExit(f"{tokenizer_dir}: its tokens do not spell a step piece by piece")
    lengths = np.asarray([len(p) for p in pieces], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths[ids])])
    text = "".join(steps[d] for d in drawn)[: offsets[-1]]
    separator = tokenizer.encode(".\n\n", add_special_tokens=False)
    if len(separator) != 1:
        raise SystemExit(f"{tokenizer_dir}: '.\\n\\n' is not one token")
    surges = nprng.random(ids.size) < SURGE_SHARE
    entropy = np.where(surges, nprng.gamma(2.0, 0.6, ids.size), nprng.exponential(0.02, ids.size)).astype(np.float32)
    starts = np.concatenate([[0], np.flatnonzero(ids == separator[0]) + 1])
    return Pool(
        ids,
        entropy,
        text,
        offsets,
        starts[starts < ids.size - 1],
        pieces,
        functools.partial(tokenizer.encode, add_special_tokens=False),
        separator[0],
    )


@dataclasses.dataclass
class Trace:
    text: str
    ids: Any
    entropy: Any


def make_trace(pool: Pool, solution: str, tokens: int, rng: Any) -> Trace:
    """A trace of exactly ``tokens`` tokens: ``solution``'s steps, a pool window, then its answer line."""
    import numpy as np

    head, _, answer = solution.rpartition("\n\n")
    head_ids, answer_ids = pool.encode(head + "\n\n"), pool.encode(answer)
    room = tokens - len(head_ids) - len(answer_ids)
    at = int(rng.integers(0, pool.ids.size - tokens))
    entropy = pool.entropy[at : at + tokens]
    if room <= 0:  # a short trace: the solution, cut
        ids = np.asarray((head_ids + answer_ids)[:tokens], dtype=np.int32)
        return Trace("".join(pool.pieces[i] for i in ids), ids, entropy)
    start = int(pool.step_starts[rng.integers(0, pool.step_starts.size)])
    start = min(start, pool.ids.size - room)
    window = pool.ids[start : start + room - 1]
    middle = pool.text[pool.offsets[start] : pool.offsets[start + room - 1]] + pool.pieces[pool.separator]
    ids = np.concatenate([np.asarray(head_ids, np.int32), window, [pool.separator], np.asarray(answer_ids, np.int32)])
    return Trace(head + "\n\n" + middle + answer, ids.astype(np.int32), entropy)


def _new_problem(template: TemplateProblem, index: int, seed: int, truth: bool) -> tuple[Any, Any]:
    """A new demo chain of the template problem's length and kind, and its Problem record."""
    from heal_core.demo.arithmetic import make_chain, parse_problem
    from heal_core.problems import Problem

    old = parse_problem(template.problem.problem)
    chain = make_chain(random.Random(f"scale:{seed}:{index}"), len(old.ops), old.hard)
    text = chain.problem_text() if truth else f"Problem {index}. {chain.problem_text()}"
    return chain, Problem(
        problem_id=f"scale-{seed}-{index:06d}",
        problem=text,
        answer=str(chain.values()[-1]),
        source=template.problem.source,
        metadata=template.problem.metadata,
    )


def _solution(chain: Any, right: bool, boxed_gold: bool, rng: random.Random) -> str:
    from heal_core.demo.arithmetic import solution, wrong_firsts

    if right:
        values = chain.values()
    else:
        wrong = wrong_firsts(chain) or [chain.values()[1] + 1]
        values = chain.values(first=rng.choice(wrong))
    return solution(chain, values, chain.values()[-1] if boxed_gold else values[-1])


def _renamed(sample_id: str | None, old: str, new: str) -> str | None:
    return None if sample_id is None else "|".join(new if part == old else part for part in sample_id.split("|"))


@dataclasses.dataclass
class ShardPlan:
    problems: list[Any]  # Problem records
    chains: list[Any]
    sources: list[TemplateProblem]


def plan_shards(template: Template, count: int, shard_size: int, seed: int, truth: bool) -> Iterator[ShardPlan]:
    """The synthesized problems shard by shard, each mirroring the template's problems in turn."""
    order: list[int] = []
    rng = random.Random(f"order:{seed}")
    for start in range(0, count, shard_size):
        plan = ShardPlan([], [], [])
        for index in range(start, min(count, start + shard_size)):
            if not order:
                order = list(range(len(template.problems)))
                rng.shuffle(order)
            source = template.problems[order.pop()]
            chain, problem = _new_problem(source, index, seed, truth)
            plan.problems.append(problem)
            plan.chains.append(chain)
            plan.sources.append(source)
        yield plan


def shard_table(
    plan: ShardPlan,
    template: Template,
    pool: Pool,
    tokens: int,
    config_hash: str,
    cfg: Any,
    seed: int,
    duplicates: bool = True,
) -> Any:
    """One shard's sample rows in TRAJECTORY_SCHEMA: the template rows of its problems, with this shard's problems,
    ids, prompts and traces."""
    import numpy as np
    import pyarrow as pa

    from heal_core.schema import TRAJECTORY_SCHEMA, conform

    take, keys, traces, rename = [], [], [], []
    nprng = np.random.default_rng(seed)
    for k, (problem, chain, source) in enumerate(zip(plan.problems, plan.chains, plan.sources, strict=True)):
        rng = random.Random(problem.problem_id)
        made: dict[int, Trace] = {}
        for j, row in enumerate(source.rows):
            c = source.text_class[j] if duplicates else j
            if c not in made:
                made[c] = make_trace(pool, _solution(chain, source.right[j], source.boxed_gold[j], rng), tokens, nprng)
            take.append(row)
            traces.append(made[c])
            rename.append((source.problem.problem_id, problem))
            keys.append((template.stage[row], k, j))
    order = sorted(range(len(take)), key=lambda i: keys[i])  # by stage, then problem, as a shard writes them
    take, traces, rename = [take[i] for i in order], [traces[i] for i in order], [rename[i] for i in order]
    table = template.rows.take(pa.array(take, pa.int64()))
    columns = {
        name: table.column(name).to_pylist()
        for name in (
            "sample_id",
            "parent_sample_id",
            "hint",
            "stage",
            "verified",
            "breakpoint_token",
            "prefix_chars",
            "pure_answer_nll",
            "pure_step_ppl",
        )
    }
    texts = [t.text for t in traces]
    old_tokens = [template.num_tokens[i] for i in take]
    templates = {2: cfg.hints.template, 3: cfg.gear.hint_template}
    new: dict[str, list[Any]] = {
        name: []
        for name in (
            "sample_id",
            "parent_sample_id",
            "problem_id",
            "prompt",
            "gold_answer",
            "hint",
            "extracted_answer",
            "breakpoint_token",
            "prefix_chars",
            "pure_answer_nll",
            "pure_step_ppl",
        )
    }
    for i, ((old, problem), trace) in enumerate(zip(rename, traces, strict=True)):
        new["sample_id"].append(_renamed(columns["sample_id"][i], old, problem.problem_id))
        new["parent_sample_id"].append(_renamed(columns["parent_sample_id"][i], old, problem.problem_id))
        new["problem_id"].append(problem.problem_id)
        new["prompt"].append(cfg.teacher.prompt_template.format(problem=problem.problem))
        new["gold_answer"].append(problem.answer)
        hinted = columns["hint"][i] is not None
        new["hint"].append(
            templates[columns["stage"][i]].format(problem=problem.problem, answer=problem.answer) if hinted else None
        )
        boxed = re.search(r"\\boxed\{([^}]*)\}", trace.text[-40:])
        new["extracted_answer"].append(boxed.group(1) if boxed else None)
        scale = tokens / max(1, old_tokens[i])
        bt, pc_ = columns["breakpoint_token"][i], columns["prefix_chars"][i]
        new["breakpoint_token"].append(None if bt is None else min(tokens - 1, round(bt * scale)))
        new["prefix_chars"].append(None if pc_ is None else min(len(trace.text) - 1, round(pc_ * scale)))
        steps = trace.text.count("\n\n") + 1
        for name in ("pure_answer_nll", "pure_step_ppl"):
            values = columns[name][i]
            new[name].append(None if values is None else np.resize(np.asarray(values, np.float32), steps).tolist())
    lengths = np.fromiter((t.ids.size for t in traces), np.int64, len(traces))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    heavy = {
        "text": pa.array(texts, pa.string()),
        "token_ids": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([t.ids for t in traces]))),
        "entropy": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate([t.entropy for t in traces]))),
        "num_tokens": pa.array(lengths.astype(np.int32)),
        "config_hash": pa.array([config_hash] * len(traces)),
    }
    for name, values in {**new, **heavy}.items():
        field = TRAJECTORY_SCHEMA.field(name)
        array = values if isinstance(values, pa.Array) else pa.array(values, field.type)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), field, array)
        else:
            table = table.append_column(field, array)
    return conform(table, TRAJECTORY_SCHEMA, source="synthesized shard")


def lineage(plan: ShardPlan, shard: int, rows: int, tokens: int, template: Template, config_hash: str) -> dict:
    """The shard's lineage record, as ``tasks.generate.run_shard`` writes it (its marker: written last)."""
    from heal_core.generation_store import lineage_sources
    from heal_core.replay import Usage

    stats, skips = [], []
    for problem, source in zip(plan.problems, plan.sources, strict=True):
        old = source.problem.problem_id
        stats.append({**source.stats, "problem_id": problem.problem_id})
        skips += [
            {**s, "problem_id": problem.problem_id, "sample_id": _renamed(s["sample_id"], old, problem.problem_id)}
            for s in source.skips
        ]
    n = len(plan.problems)
    usage = Usage(
        requests=round(template.usage["requests"] * n),
        samples=rows,
        tokens=rows * tokens,
        scored=round(template.usage["scored"] * n),
    )
    return {
        "shard": shard,
        "config_hash": config_hash,
        "generation_fingerprint": template.fingerprint,
        "problems": n,
        "samples": rows,
        "stats": stats,
        "gear_skips": skips,
        "generation": lineage_sources(0, 0, n, usage),
    }


def _rerooted(data: bytes, old: str, new: str) -> bytes:
    return data.replace(old.encode(), new.encode())


def held_out(cfg: Any) -> list[Any]:
    """The run's held-out problems, as ``flows/evaluate.py`` reads them (``evaluation.uri``, else the demo's)."""
    from heal_core.datasets import load_problem_set
    from heal_core.demo import demo_problems

    uri = cfg.evaluation.uri
    problems = load_problem_set(cfg.problems.model_copy(update={"uri": uri}))[0] if uri else demo_problems("eval")
    return problems[: cfg.evaluation.max_problems] if cfg.evaluation.max_problems else problems


def write_outputs(run: Any, cfg: Any, seed: int) -> None:
    """Stand-ins for what training and evaluation store, in heal's schemas and layout: every configured (variant,
    seed)'s record (``heal_core.train.VariantResult``) and stage model folders (the bundled student's files and
    their completion marker), and the evaluation tables (teacher, student base and every model on the held-out
    problems, with drawn pass rates). Neither depends on P: they are what the report, compare and export read."""
    import numpy as np

    from heal_core import storage
    from heal_core.evaluate import (
        HELD_OUT,
        backend_kind,
        evaluation_sampling,
        pass_at_k,
        sampling_settings,
        stored_evaluation,
        summarize,
    )
    from heal_core.fingerprints import model_identity
    from heal_core.schema import EVALUATION_SCHEMA, EVALUATION_SUMMARY_SCHEMA, to_table
    from heal_core.train import MARKER, StageResult, VariantResult
    from heal_core.variants import VARIANTS, split_budget
    from tasks.models import resolve_model, teacher_identity

    student = Path(resolve_model(cfg.student.model, "student"))
    files = {f.relative_to(student): f.read_bytes() for f in sorted(student.rglob("*")) if f.is_file()}
    rng = np.random.default_rng(seed)
    teacher = resolve_model(cfg.teacher.model, "teacher")
    models = [("teacher", None, teacher, 0.55), ("student_base", None, str(student), 0.38)]
    budget = 128
    for variant in cfg.pace.variants:
        for train_seed in cfg.pace.seeds:
            names = VARIANTS[variant]
            stages = []
            for name, steps in zip(names, split_budget(budget, [1] * len(names)), strict=True):
                model_dir = run.model(variant, train_seed, name)
                losses = tuple((s, float(0.1 + 0.5 / s)) for s in range(3, steps + 1, 3))
                stage = StageResult(name, model_dir, 0, steps, losses[-1][1] if losses else None, False, 0, losses)
                for rel, data in files.items():
                    storage.write_bytes(data, storage.join(model_dir, *rel.parts), run.options)
                storage.write_json(dataclasses.asdict(stage), storage.join(model_dir, MARKER), run.options)
                stages.append(stage)
            result = VariantResult(variant, train_seed, budget, tuple(stages))
            storage.write_json(result.to_json(), run.variant_record(variant, train_seed), run.options)
            models.append((variant, train_seed, stages[-1].model_dir, 0.4))
    sampling = evaluation_sampling(cfg)
    rows = []
    problems = held_out(cfg)
    for label, train_seed, path, rate in models:
        for problem in problems:
            n = sampling.n
            correct = int(rng.binomial(n, rate))
            rows.append(
                {
                    "model": label,
                    "train_seed": train_seed,
                    "model_path": path,
                    "backend": backend_kind(label, cfg),
                    "benchmark": HELD_OUT,
                    "problem_id": problem.problem_id,
                    "metadata": dict(problem.metadata),
                    "samples": n,
                    "correct": correct,
                    "pass_at_1": correct / n,
                    "pass_at_k": pass_at_k(n, correct, n),
                    **sampling_settings(sampling),
                }
            )
    storage.write_parquet(to_table(rows, EVALUATION_SCHEMA), run.evaluation, run.options)
    storage.write_parquet(to_table(summarize(rows), EVALUATION_SUMMARY_SCHEMA), run.evaluation_summary, run.options)
    # the teacher's and the student base's results in the evaluation store too, as a real run leaves them: a run
    # derived from it (the train step) evaluates only the model it trains
    identities = {"teacher": teacher_identity(cfg, teacher), "student_base": model_identity(str(student))}
    for label, identity in identities.items():
        mine = [r for r in rows if r["model"] == label]
        storage.write_parquet(
            to_table(mine, EVALUATION_SCHEMA),
            stored_evaluation(cfg, identity, label, None, HELD_OUT, problems),
            run.options,
        )


@dataclasses.dataclass
class Synthesized:
    problems: int
    tokens: int
    rows: int
    shards: int
    samples_bytes: int
    seconds: float
    cached: bool = False


def synthesize(
    root_uri: str,
    problems: int,
    trace_tokens: int,
    storage_options: dict | None = None,
    seed: int = 0,
    *,
    template: Template,
    shard_size: int | None = None,
    truth: bool = True,
    duplicates: bool = True,
) -> Synthesized:
    """A finished run ``scale`` of ``problems`` problems under storage ``root_uri`` (local or ``s3://``), shard by
    shard (one shard's rows in memory at a time), mirroring ``template`` (module docstring)."""
    import yaml

    from heal_core import storage
    from heal_core.config import parse_config
    from heal_core.fingerprints import digest
    from heal_core.problems import problems_to_records
    from heal_core.run import Run
    from heal_core.schema import PROBLEM_SCHEMA, to_table
    from tasks.models import resolve_model

    started = time.perf_counter()
    options = storage_options or {}
    overrides = [f"storage.uri={root_uri}", *([f"orchestration.shard_size={shard_size}"] if shard_size else [])]
    cfg = parse_config(template.cfg.model_dump(mode="json"), overrides, source="bench/scale.py")
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"storage_options": options})})
    run = Run.of(cfg, RUN_ID)
    # the pin holds the settings that differ from the defaults: a baseline checkout (--code) without this code's
    # newer settings reads it too, to the same config hash
    pin = yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    if parse_config(yaml.safe_load(pin)).config_hash() != cfg.config_hash():
        raise SystemExit("the config pin does not read back to the same config")
    storage.write_bytes(pin.encode(), run.config, options)
    config_hash = cfg.config_hash()
    pool = make_pool(resolve_model(cfg.teacher.model, "teacher"), seed, max(POOL_TOKENS, 4 * trace_tokens))
    rows = shards = size = 0
    keys: list[str] = []
    for shard, plan in enumerate(plan_shards(template, problems, cfg.orchestration.shard_size, seed, truth)):
        storage.write_parquet(
            to_table(problems_to_records(plan.problems), PROBLEM_SCHEMA), run.shard_problems(shard), options
        )
        table = shard_table(plan, template, pool, trace_tokens, config_hash, cfg, seed + shard, duplicates)
        storage.write_parquet(table, run.shard_samples(shard), options)
        storage.write_json(
            lineage(plan, shard, table.num_rows, trace_tokens, template, config_hash), run.shard_lineage(shard), options
        )
        keys += [p.key for p in plan.problems]
        rows, shards = rows + table.num_rows, shards + 1
        del table
    size = sum(n for name, n in storage.sizes(run.path("samples"), options).items() if name.endswith(".parquet"))
    storage.write_json({"problems": problems, "digest": digest(keys)}, run.problems_pin, options)
    write_outputs(run, cfg, seed)
    run.write_manifest(
        config_hash,
        {s: "done" for s in range(shards)},
        {"generate": "done", "curriculum": "done", "train": "done", "eval": "done"},
    )
    return Synthesized(problems, trace_tokens, rows, shards, size, time.perf_counter() - started)


def cached_run(
    scratch: Path,
    template: Template,
    tag: str,
    problems: int,
    tokens: int,
    seed: int,
    shard_size: int | None,
    truth: bool,
    duplicates: bool,
) -> tuple[Path, Synthesized]:
    """The synthesized run's storage folder, made unless a previous bench left it complete (``synthesized.json``)."""
    key = (
        f"p{problems}-t{tokens}-s{seed}"
        + (f"-k{shard_size}" if shard_size else "")
        + ("" if truth else "-plain")
        + ("" if duplicates else "-distinct")
    )
    store = scratch / "runs" / tag / key
    marker = store / "synthesized.json"
    if marker.exists():
        return store, dataclasses.replace(Synthesized(**json.loads(marker.read_text())), cached=True)
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    made = synthesize(
        str(store),
        problems,
        tokens,
        None,
        seed,
        template=template,
        shard_size=shard_size,
        truth=truth,
        duplicates=duplicates,
    )
    marker.write_text(json.dumps(dataclasses.asdict(made)))
    return store, made


def upload(store: Path, uri: str) -> None:
    """A local synthesized storage copied to ``uri`` (S3), its records re-rooted."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from heal_core import storage

    for f in sorted(store.rglob("*")):
        if f.is_file() and f.name != "synthesized.json":
            data = f.read_bytes()
            if f.suffix in (".json", ".yaml", ".md"):
                data = _rerooted(data, str(store), uri)
            elif f.name == "results.parquet":  # the evaluation's model paths
                table = pq.read_table(pa.BufferReader(data))
                column = table.column_names.index("model_path")
                table = table.set_column(
                    column, table.schema.field(column), pc.replace_substring(table.column(column), str(store), uri)
                )
                out = pa.BufferOutputStream()
                pq.write_table(table, out, compression="zstd")
                data = out.getvalue().to_pybytes()
            storage.write_bytes(data, storage.join(uri, *f.relative_to(store).parts))


# ---- 3. S3: moto on 127.0.0.1, every request and byte counted --------------------------------------------------


class Counted:
    """WSGI middleware: requests, request body bytes (written) and response body bytes (read), server side."""

    def __init__(self, app: Callable) -> None:
        self.app, self.lock = app, threading.Lock()
        self.requests = self.written = self.read = 0

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.requests, self.written, self.read

    def _add(self, requests: int = 0, written: int = 0, read: int = 0) -> None:
        with self.lock:
            self.requests, self.written, self.read = self.requests + requests, self.written + written, self.read + read

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        self._add(requests=1)
        body = environ.get("wsgi.input")
        if body is not None:
            environ["wsgi.input"] = _CountingInput(body, lambda n: self._add(written=n))
        result = self.app(environ, start_response)
        try:
            for chunk in result:
                self._add(read=len(chunk))
                yield chunk
        finally:
            if hasattr(result, "close"):
                result.close()


class _CountingInput:
    def __init__(self, stream: Any, add: Callable[[int], None]) -> None:
        self.stream, self.add = stream, add

    def read(self, *args: Any) -> bytes:
        data = self.stream.read(*args)
        self.add(len(data))
        return data

    def readline(self, *args: Any) -> bytes:
        data = self.stream.readline(*args)
        self.add(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self.add(len(line))
            yield line


@contextlib.contextmanager
def s3_server() -> Iterator[tuple[str, Counted]]:
    """moto's S3 server on a free local port, in a thread of this process, behind ``Counted``."""
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    counted = Counted(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counted, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counted
    finally:
        server.shutdown()
        thread.join()


# ---- 4. the steps, each in a process of its own -----------------------------------------------------------------


MEMORY_LIMIT = "HEAL_SCALE_MEMORY_LIMIT"  # --memory-limit, handed to a step's process


def _step_env(work: Path, code: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Offline, an own Prefect home (no shared SQLite with other heal runs), no outside Prefect API, the code."""
    env = {
        **os.environ,
        **OFFLINE,
        "PREFECT_HOME": str(work / "prefect-home"),
        "HEAL_CACHE_DIR": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join([str(code or REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        **(extra or {}),
    }
    env.pop("PREFECT_API_URL", None)
    return env


def step_command(
    step: str, storage_uri: str, work: Path, sizes: Path, variant: str, seed: int, train_sets: list[str]
) -> list[str]:
    run_root = f"{storage_uri.rstrip('/')}/runs/{RUN_ID}"
    if step in ("curriculum", "report"):
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--step",
            step,
            "--storage",
            storage_uri,
            "--sizes-file",
            str(sizes),
        ]
    if step == "compare":
        return [sys.executable, "-c", CLI, "compare", run_root, run_root, "--out", str(work / "compare.png")]
    if step == "export":
        return [
            sys.executable,
            "-c",
            CLI,
            "export",
            RUN_ID,
            str(work / "export"),
            "--storage",
            storage_uri,
            "--variant",
            variant,
            "--seed",
            str(seed),
        ]
    sets = [f"pace.variants=[{variant}]", f"pace.seeds=[{seed}]", *train_sets]
    return [
        sys.executable,
        "-c",
        CLI,
        "train",
        RUN_ID,
        "--storage",
        storage_uri,
        *(a for o in sets for a in ("--set", o)),
    ]


def run_step(step: str, storage_uri: str, sizes: Path) -> None:
    """A step's body, in its own process (``--step``): what ``flows/pipeline.py`` calls after generation."""
    from heal_core.run import Run

    run, cfg = Run.stored(RUN_ID, storage_uri)
    if os.environ.get(MEMORY_LIMIT):
        cfg = cfg.model_copy(
            update={"orchestration": cfg.orchestration.model_copy(update={"memory_limit": os.environ[MEMORY_LIMIT]})}
        )
    shards = run.shard_count()
    if step == "curriculum":
        from tasks.curriculum import build_datasets

        sizes.write_text(json.dumps(build_datasets.fn(run, shards, cfg)))
        return
    from prefect import flow

    from flows.local_api import local_api
    from tasks.report import write_report

    @flow(name="heal-scale-report")
    def report() -> None:
        write_report(run, shards, json.loads(sizes.read_text()), cfg)

    with local_api():
        report()


@dataclasses.dataclass
class Measured:
    step: str
    problems: int
    rows: int
    ok: bool
    reason: str = ""
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0
    tree_peak_mib: float = 0.0
    anon_peak_mib: float = 0.0
    s3_requests: int | None = None
    s3_read_bytes: int | None = None
    s3_written_bytes: int | None = None
    samples_bytes: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


def _time_report(path: Path) -> tuple[float, float, str]:
    """(wall s, max RSS MiB, how it ended) from ``/usr/bin/time -v``'s report."""
    text = path.read_text() if path.exists() else ""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = 0.0
    for part in wall.group(1).split(":") if wall else []:
        seconds = seconds * 60 + float(part)
    signal = re.search(r"Command terminated by signal (\d+)", text)
    return seconds, int(rss.group(1)) / 1024 if rss else 0.0, f"signal {signal.group(1)}" if signal else ""


def _tree_rss(process: Any) -> tuple[int, int]:
    """(the tree's RSS, the largest anonymous RSS of one process in it). RSS counts the pages of memory-mapped files
    (the training set's Arrow, TRL's tokenized caches) as they are read; those are page cache the kernel takes back
    under pressure, so the anonymous part (RSS less file-backed and shared pages) is what a step really holds."""
    import psutil

    total = anon = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = p.memory_info()
            total += info.rss
            anon = max(anon, info.rss - info.shared)
    return total, anon


def _kill_children(process: Any) -> None:
    import psutil

    for p in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            p.kill()


def _last_error(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"(Error|error:|Exception|Killed|MemoryError)", line)]
    return ((errors or lines or ["no output"])[-1])[:200]


def measure(command: list[str], env: dict[str, str], work: Path, timeout: float, max_rss: float | None) -> dict:
    """Run ``command`` under ``/usr/bin/time -v`` in ``work``; poll its tree's RSS, kill it past ``max_rss`` bytes or
    ``timeout`` seconds. Returns wall s, peak RSS MiB (largest process), tree peak MiB (polled), ok, reason."""
    import psutil

    log, report = work / "step.log", work / "time.txt"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", str(report), *command],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    watched, started, tree_peak, anon_peak, reason = psutil.Process(proc.pid), time.monotonic(), 0, 0, ""
    try:
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                rss, anon = _tree_rss(watched)
                tree_peak, anon_peak = max(tree_peak, rss), max(anon_peak, anon)
                if max_rss is not None and rss > max_rss and not reason:
                    reason = f"killed at {rss / 2**30:.2f} GiB (--max-rss-gb)"
                    _kill_children(watched)
                elif time.monotonic() - started > timeout and not reason:
                    reason = f"killed after {timeout:.0f} s (--step-timeout)"
                    _kill_children(watched)
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C, or SIGINT to the bench alone: the step's processes go with it
        _kill_children(watched)
        proc.kill()
        raise
    wall, peak, signal = _time_report(report)
    if proc.returncode != 0 and not reason:
        reason = f"{signal or f'exit {proc.returncode}'}: {_last_error(log)}"
    return {
        "wall_s": wall or time.monotonic() - started,
        "peak_rss_mib": peak,
        "tree_peak_mib": tree_peak / MIB,
        "anon_peak_mib": anon_peak / MIB,
        "ok": proc.returncode == 0 and not reason,
        "reason": reason,
    }


STEP_OUTPUTS = ("curriculum", "plots", "derived", "report.md", "summary.json")


def reset_outputs(store: Path) -> None:
    """What the steps of an earlier measurement wrote into a cached run (datasets, report, cards, derived runs): a
    step must not find what this measurement's steps before it did not make."""
    run = store / "runs" / RUN_ID
    for path in (run / name for name in STEP_OUTPUTS):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for card in (run / "models").glob("*/seed-*/README.md"):
        card.unlink()
    for derived in (store / "runs").glob(f"{RUN_ID}.*"):
        shutil.rmtree(derived)


# ---- 5. the bench --------------------------------------------------------------------------------------------


def fmt_bytes(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.1f}"


def table(results: list[Measured], s3: bool) -> list[str]:
    head = "| step | problems | rows | wall s | rows/s | peak RSS MiB | tree peak MiB | anonymous peak MiB |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if s3:
        head += " S3 read MB | % of samples | S3 written MB | requests |"
        rule += "---:|---:|---:|---:|"
    lines = [head + " status |", rule + "---|"]
    for r in results:
        line = (
            f"| {r.step} | {r.problems:,} | {r.rows:,} | {r.wall_s:,.1f} | {r.rows_per_s:,.0f} | "
            f"{r.peak_rss_mib:,.0f} | {r.tree_peak_mib:,.0f} | {r.anon_peak_mib:,.0f} |"
        )
        if s3:
            share = "—" if r.s3_read_bytes is None else f"{100 * r.s3_read_bytes / max(1, r.samples_bytes):.1f} %"
            line += (
                f" {fmt_bytes(r.s3_read_bytes)} | {share} | {fmt_bytes(r.s3_written_bytes)} | {r.s3_requests or 0:,} |"
            )
        lines.append(line + (" ok |" if r.ok else f" failed: {r.reason.replace('|', '/')} |"))
    return lines


def growth(results: list[Measured]) -> list[str]:
    """Each step's peak RSS at the largest P against the smallest P's."""
    sizes = sorted({r.problems for r in results})
    if len(sizes) < 2:
        return []
    lines = [f"| step | peak RSS at {sizes[0]:,} | at {sizes[-1]:,} | change |", "|---|---:|---:|---:|"]
    for step in STEPS:
        by = {r.problems: r for r in results if r.step == step and r.ok}
        if sizes[0] in by and sizes[-1] in by:
            a, b = by[sizes[0]].peak_rss_mib, by[sizes[-1]].peak_rss_mib
            lines.append(f"| {step} | {a:,.0f} | {b:,.0f} | {100 * (b - a) / a:+.0f} % |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="1000", help="comma-separated problem counts, e.g. 1000,5000,20000")
    parser.add_argument("--trace-tokens", type=int, default=4096, help="tokens of every trajectory")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, help="problems per shard (default: the template's config's)")
    parser.add_argument("--no-truth", action="store_true", help="problems no step checker recognizes: no audit")
    parser.add_argument(
        "--no-duplicates",
        action="store_true",
        help="every row's text its own (a real teacher's long traces rarely repeat; the demo's do)",
    )
    parser.add_argument("--s3", action="store_true", help="the run in a moto S3 server on 127.0.0.1, traffic counted")
    parser.add_argument("--code", type=Path, help="run the steps with this checkout's code (first on PYTHONPATH)")
    parser.add_argument("--max-rss-gb", type=float, help="kill a step whose process tree passes this RSS")
    parser.add_argument("--step-timeout", type=float, default=3600.0, help="kill a step after this many seconds")
    parser.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the train step (pace.*, student.*), e.g. pace.batch_size=4 (repeatable; "
        "default pace.epochs=0.000001: one optimizer step per stage)",
    )
    parser.add_argument(
        "--memory-limit",
        help="orchestration.memory_limit of the curriculum and report steps (an "
        "execution setting, so the run's hash is the same; default: the run's config's)",
    )
    parser.add_argument(
        "--template",
        type=Path,
        help="a finished generation's run folder to mirror (default: generated once under --scratch)",
    )
    parser.add_argument("--scratch", type=Path, default=Path("heal-scale"), help="template, runs, logs (reused)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--quick", action="store_true", help="8 problems, 64 tokens, the reduced template (CI)")
    parser.add_argument("--step", choices=("curriculum", "report"), help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--sizes-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.problems, args.trace_tokens = "8", 64
    args.counts = [int(p) for p in args.problems.split(",")]
    args.step_names = [s.strip() for s in args.steps.split(",")]
    args.train_sets = ["pace.epochs=0.000001", *args.train_set]  # a later --set of the same key wins
    if unknown := set(args.step_names) - set(STEPS):
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
    if args.code is not None and not (args.code / "heal_core").is_dir():
        parser.error(f"--code {args.code}: no heal_core there")
    return args


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one synthesized run is measured: its local cache and the storage URI the steps read it from."""

    problems: int
    store: Path
    uri: str
    synthesized: Synthesized
    s3: tuple[str, Counted] | None


def measure_steps(target: Target, template: Template, scratch: Path, args: argparse.Namespace) -> list[Measured]:
    """Each step in a fresh process, after the ones before it, as heal run orders them."""
    results = []
    variant, seed = "heal", template.cfg.pace.seeds[0]
    sizes = scratch / "work" / f"p{target.problems}-sizes.json"  # the curriculum step's, for the report step
    sizes.unlink(missing_ok=True)
    for step in args.step_names:
        work = scratch / "work" / f"p{target.problems}-{step}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = _step_env(
            work,
            args.code,
            {
                **(S3_ENV | {"AWS_ENDPOINT_URL": target.s3[0]} if target.s3 else {}),
                **({MEMORY_LIMIT: args.memory_limit} if args.memory_limit else {}),
            },
        )
        before = target.s3[1].snapshot() if target.s3 else None
        got = measure(
            step_command(step, target.uri, work, sizes, variant, seed, args.train_sets),
            env,
            work,
            args.step_timeout,
            args.max_rss_gb * 2**30 if args.max_rss_gb else None,
        )
        record = Measured(
            step, target.problems, target.synthesized.rows, samples_bytes=target.synthesized.samples_bytes, **got
        )
        if before is not None:
            record.s3_requests, record.s3_written_bytes, record.s3_read_bytes = (
                a - b for a, b in zip(target.s3[1].snapshot(), before, strict=True)
            )
        results.append(record)
        print(
            f"  {step}: {record.wall_s:.1f} s, peak RSS {record.peak_rss_mib:,.0f} MiB"
            f" (anonymous {record.anon_peak_mib:,.0f} MiB)"
            + ("" if record.ok else f", FAILED: {record.reason} (log: {work / 'step.log'})"),
            flush=True,
        )
    return results


def print_figures(results: list[Measured], made: list[Synthesized], args: argparse.Namespace) -> None:
    where = f"code: {args.code or REPO}" + (", S3 (moto on 127.0.0.1)" if args.s3 else ", local storage")
    print(f"\nSteps after generation on synthesized runs, T = {args.trace_tokens:,} tokens per trace ({where}):\n")
    print("\n".join(table(results, args.s3)))
    if extra := growth(results):
        print("\n" + "\n".join(extra))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "synthesis": [dataclasses.asdict(m) for m in made],
                    "steps": [{**dataclasses.asdict(r), "rows_per_s": r.rows_per_s} for r in results],
                },
                indent=1,
            )
        )
    peaks = []
    for step in args.step_names:
        ran = [r for r in results if r.step == step and r.peak_rss_mib]
        if ran:
            top = max(ran, key=lambda r: r.peak_rss_mib)
            peaks.append(f"{step} {top.peak_rss_mib:,.0f} (P={top.problems:,}{'' if top.ok else ', failed'})")
    print("\nlargest peak RSS per step, MiB: " + ("; ".join(peaks) or "none measured: 0"))


def main() -> None:
    args = parse_args()
    if args.step:
        run_step(args.step, args.storage, args.sizes_file)
        return
    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ.update({k: v for k, v in OFFLINE.items() if k not in os.environ})

    # 1. the template: a real generation's rows and lineage
    template_root = args.template.resolve() if args.template else build_template(scratch, args.quick)
    template = load_template(template_root)
    tag = f"{template_root.parent.parent.parent.name}-{hashlib.sha256(str(template_root).encode()).hexdigest()[:8]}"
    print(describe(template), flush=True)

    results: list[Measured] = []
    made: list[Synthesized] = []
    with contextlib.ExitStack() as stack:
        s3 = None
        if args.s3:
            (scratch / "tmp").mkdir(exist_ok=True)
            tempfile.tempdir = str(scratch / "tmp")  # where moto keeps objects over 5 MB
            s3 = stack.enter_context(s3_server())
            os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": s3[0]})
            import fsspec

            fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        for problems in args.counts:
            # 2. the synthesized run (cached), uploaded to S3 with --s3
            store, synth = cached_run(
                scratch,
                template,
                tag,
                problems,
                args.trace_tokens,
                args.seed,
                args.shard_size,
                not args.no_truth,
                not args.no_duplicates,
            )
            made.append(synth)
            print(
                f"run P={problems:,} T={args.trace_tokens:,}: {synth.rows:,} rows in {synth.shards} shards, "
                f"{synth.samples_bytes / 1e6:,.1f} MB of samples Parquet, "
                + ("cached" if synth.cached else f"synthesized in {synth.seconds:.1f} s")
                + f" ({store})",
                flush=True,
            )
            reset_outputs(store)
            uri = f"s3://{BUCKET}/{store.name}" if s3 else str(store)
            if s3:
                upload(store, uri)
            # 3. each step in a fresh process
            results += measure_steps(Target(problems, store, uri, synth, s3), template, scratch, args)
            if s3:
                from heal_core import storage

                storage.remove(uri, None, recursive=True)

    # 4. the figures
    print_figures(results, made, args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the step running was stopped; synthesized runs stay cached under --scratch", file=sys.stderr
        )
        sys.exit(130)
