"""Evaluation: pass@1 (mean over k samples) and pass@k of a model on a problem set, and their summary per
benchmark and per metadata group (MATH-500's subject and level).

pass@k uses the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) for n samples with c
correct, so k may be below the number of samples drawn; with k = n it is "any sample correct".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from math import comb
from typing import Any

from heal_core import fingerprints, progress, stores
from heal_core.backends.base import Request, TeacherBackend, require_usable
from heal_core.config import HealConfig, SamplingConfig
from heal_core.problems import Problem
from heal_core.reasoning import ReasoningFormat
from heal_core.schema import SAMPLING_COLUMNS
from heal_core.seeds import request_seed
from heal_core.verify import DEFAULT_MAX_ERROR_SHARE, check_many

HELD_OUT = "held_out"  # the benchmark label of evaluation.uri (the demo's eval split when it is empty)


@dataclass(frozen=True)
class EvalUnit:
    """One model on one shard of one set: what one ``heal-eval`` deployment run evaluates, and one part of the
    run's results (``Run.evaluation_part``). ``model`` is the rows' label (teacher, student_base or a variant) and
    ``train_seed`` its seed (None for teacher and student base); the shard is ``problems[start:stop]`` of ``benchmark``.
    """

    model: str
    train_seed: int | None
    benchmark: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        """How runs and parts name it, e.g. ``heal-seed-0-held_out-0-50``."""
        seed = "" if self.train_seed is None else f"-seed-{self.train_seed}"
        return f"{self.model}{seed}-{self.benchmark}-{self.start}-{self.stop}"


def evaluation_units(
    models: Sequence[tuple[str, int | None]], sets: Mapping[str, Sequence[Problem]], shard_size: int
) -> list[EvalUnit]:
    """Every (model, set shard), model after model and set after set, the order of the results' rows; a set is one
    shard when ``shard_size`` is 0. A problem's samples are seeded by its id (``heal_core/seeds.py``), not by its
    place, so how sets are cut changes no result."""

    def cuts(size: int) -> list[tuple[int, int]]:
        step = shard_size or max(size, 1)
        return [(start, min(start + step, size)) for start in range(0, size, step)]

    return [
        EvalUnit(label, seed, name, start, stop)
        for label, seed in models
        for name, problems in sets.items()
        for start, stop in cuts(len(problems))
    ]


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in 1..n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@dataclass(frozen=True)
class ProblemResult:
    problem_id: str
    metadata: dict[str, str]  # the problem's (MATH-500: subject, level): what the summary groups by
    samples: int
    correct: int
    pass_at_1: float
    pass_at_k: float


def evaluate(
    backend: TeacherBackend,
    problems: Sequence[Problem],
    prompt_template: str,
    sampling: SamplingConfig,
    k: int,
    max_error_share: float = DEFAULT_MAX_ERROR_SHARE,
    reasoning_format: ReasoningFormat = "none",
) -> list[ProblemResult]:
    """Draw ``sampling.n`` samples per problem and score them; ``k`` <= ``sampling.n``. ``reasoning_format`` is
    the evaluated model's (``heal_core/reasoning.py``)."""
    requests = [
        Request(
            prompt_template.format(problem=p.problem), sampling.n, request_seed(sampling.seed, "eval", p.problem_id)
        )
        for p in problems
    ]
    progress.stage("eval", sum(r.n for r in requests))
    batches = require_usable(backend.generate(requests, sampling), "evaluation sampling")
    pairs = [(g.text, p.answer) for p, gens in zip(problems, batches, strict=True) for g in gens]
    cut = [g.finish_reason == "length" for gens in batches for g in gens]  # cut off: wrong, as in Stage I
    verdicts = iter(
        check_many(pairs, truncated=cut, max_error_share=max_error_share, reasoning_format=reasoning_format)
    )
    results = []
    for p, gens in zip(problems, batches, strict=True):
        correct = sum(next(verdicts).correct for _ in gens)
        n = len(gens)
        results.append(ProblemResult(p.problem_id, dict(p.metadata), n, correct, correct / n, pass_at_k(n, correct, k)))
    return results


def evaluation_sampling(cfg: HealConfig) -> SamplingConfig:
    """How every model is sampled for evaluation: the teacher's settings (max_new_tokens, top_k, seed) with
    ``evaluation.samples``, ``evaluation.temperature`` and ``evaluation.top_p``."""
    return cfg.teacher.sampling.model_copy(
        update={"n": cfg.evaluation.samples, "temperature": cfg.evaluation.temperature, "top_p": cfg.evaluation.top_p}
    )


def sampling_settings(sampling: SamplingConfig) -> dict[str, Any]:
    """The settings every evaluation row records (see ``heal_core.schema.SAMPLING_COLUMNS``)."""
    return {name: getattr(sampling, name) for name in SAMPLING_COLUMNS}


def _value_order(value: str) -> tuple[int, int, str]:
    """Numeric values (MATH levels) in numeric order before the others in text order: level 10 after level 9."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean pass@1 and pass@k per model, backend, benchmark and sampling setting, over all its problems (group_field and
    group_value None) and over the problems of each value of each metadata field (rows of EVALUATION_SCHEMA in,
    rows of EVALUATION_SUMMARY_SCHEMA out). Rows drawn with other settings are never averaged together. A
    variant's mean is over its training seeds and problems alike; ``problems`` counts each problem once."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        setting = (row["model"], row["backend"], row["benchmark"], row["samples"], *(row[c] for c in SAMPLING_COLUMNS))
        groups[(setting, None, None)].append(row)
        for field, value in dict(row["metadata"] or {}).items():  # Arrow hands a map back as (key, value) pairs
            groups[(setting, field, value)].append(row)
    first_seen = {setting: i for i, setting in enumerate(dict.fromkeys(key[0] for key in groups))}

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        setting, field, value = key
        return (first_seen[setting], field is not None, field or "", _value_order(value or ""))

    summary = []
    for key in sorted(groups, key=order):
        (model, backend, benchmark, samples, *settings), field, value = key
        members = groups[key]
        summary.append(
            {
                "model": model,
                "backend": backend,
                "benchmark": benchmark,
                "group_field": field,
                "group_value": value,
                "problems": len({r["problem_id"] for r in members}),
                "samples": samples,
                "pass_at_1": sum(r["pass_at_1"] for r in members) / len(members),
                "pass_at_k": sum(r["pass_at_k"] for r in members) / len(members),
                **dict(zip(SAMPLING_COLUMNS, settings, strict=True)),
            }
        )
    return summary


def written_format(label: str, cfg: HealConfig) -> ReasoningFormat:
    """The untrained student writes in its own format; a trained student writes as the teacher it learned from."""
    return cfg.student.reasoning_format if label == "student_base" else cfg.teacher.reasoning_format


def backend_kind(label: str, cfg: HealConfig) -> str:
    """What samples the model: ``evaluation.backend``; when it is not set, the teacher's own backend for the teacher
    (where its training samples came from) and transformers for the students."""
    return cfg.evaluation.backend or (cfg.teacher.backend if label == "teacher" else "hf")


def served_by_heal(label: str, cfg: HealConfig) -> bool:
    """Whether heal starts a server for the model while it is evaluated (``heal_core/backends/served.py``): backend
    openai, except for a teacher that has its own server (``teacher.backend: openai``)."""
    return backend_kind(label, cfg) == "openai" and not (label == "teacher" and cfg.teacher.backend == "openai")


def backend_key(label: str, cfg: HealConfig) -> tuple[str, ...]:
    """How the model is run, as the evaluation store keys it: the backend, the dtype, and for a model heal serves,
    whose server (vLLM's or heal's own sample differently). At the defaults the key of heal 0.1: (the teacher's
    backend, its dtype) for the teacher and ("hf", student.dtype) for the students."""
    dtype = cfg.teacher.dtype if label == "teacher" else cfg.student.dtype
    if served_by_heal(label, cfg):
        return "openai", dtype, "vllm serve" if cfg.evaluation.vllm_python else "heal serve-teacher"
    return backend_kind(label, cfg), dtype


def stored_evaluation(
    cfg: HealConfig, identity: str, label: str, train_seed: int | None, name: str, problems: Sequence[Problem]
) -> str:
    """Where one model's results on one set live in the evaluation store, ``<storage.uri>/evaluations/``, shared by
    every run there: keyed by the evaluation settings, the model (``identity``: a stored model's URI, or what a
    local model's files are, ``fingerprints.model_identity``), how it is run, and the set's name and problems. A run
    that evaluates the same teacher the same way on the same set (every run derived from another, a nightly run)
    reads its results instead of asking the teacher again. Objects live in their evaluation fingerprint's folder
    (``heal_core/stores.py``), which ``heal store ls`` lists and ``heal store gc`` removes whole."""
    key = fingerprints.digest(
        {
            "evaluation": fingerprints.evaluation(cfg),
            "model": identity,
            "label": label,
            "train_seed": train_seed,
            "backend": backend_key(label, cfg),
            "reasoning_format": written_format(label, cfg),
            "set": name,
            "problems": [(p.problem_id, p.problem, p.answer, sorted(p.metadata.items())) for p in problems],
        }
    )
    return stores.evaluation_object(cfg, key)


def evaluation_rows(
    backend: TeacherBackend, label: str, train_seed: int | None, name: str, problems: Sequence[Problem], cfg: HealConfig
) -> list[dict[str, Any]]:
    """One model's per-problem result rows on one set, as the evaluation store and a run's tables hold them."""
    sampling = evaluation_sampling(cfg)
    return [
        {
            "model": label,
            "train_seed": train_seed,
            "model_path": backend.model_path,
            "backend": backend.kind,
            "benchmark": name,
            **asdict(result),
            **sampling_settings(sampling),
        }
        for result in evaluate(
            backend,
            problems,
            cfg.teacher.prompt_template,
            sampling,
            k=cfg.evaluation.samples,
            max_error_share=cfg.orchestration.max_verify_error_share,
            reasoning_format=written_format(label, cfg),
        )
    ]
