"""The one configuration model of heal.

Every number the paper gives is a default here (arXiv 2603.10359: N=30 samples, Stage II below pass rate
0.5, GEAR 10 failed paths x 20 continuations, PURE lambda=0.2 / epsilon=0.01, SFT 5 epochs, lr 1e-5,
batch 8). Where the paper is silent the default is ours and the field's docstring says why.

A config is YAML, validated strictly: an unknown key or a wrong type is an error that names the key's
dotted path, because a silently ignored typo (``pure.lamda: 0.3``) would change a run's science.
``--set section.key=value`` overrides are parsed as YAML scalars, so ``--set teacher.sampling.n=8`` is an int.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from heal_core.reasoning import ReasoningFormat


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    """Frozen: a config is read, never changed in place (``model_copy(update=...)`` or ``parse_config`` with
    overrides makes a new one), so a hash taken of it stays true."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(_Section):
    """How the teacher samples.

    ``top_k=0`` disables top-k: HF ``generate`` silently defaults to 50 while vLLM defaults to off, and
    the paper's pass rates assume plain temperature sampling. temperature/top_p defaults follow the common
    R1-distillation setting (0.7 / 0.95); the paper does not state them.
    """

    n: int = Field(30, ge=1, description="samples per problem (paper: 30)")
    temperature: float = Field(0.7, gt=0.0, le=2.0, description="sampling temperature of the training data (paper: silent)")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling; 1.0 disables it")
    top_k: int = Field(0, ge=0, description="0 = disabled")
    max_new_tokens: int = Field(4096, ge=1, description="a longer generation is cut and counted truncated, never correct")
    seed: int = Field(0, description="base seed: each request's seed is derived from it and what the request is "
                      "(stage, problem or repaired path; heal_core/seeds.py)")


class VLLMConfig(_Section):
    """The vLLM engine (``teacher.backend: vllm``, in the GPU worker's process) and ``heal serve-teacher --backend vllm``.

    Data parallelism in the worker is one engine per GPU: one ``heal worker --gpu I`` each, every shard run on
    one GPU (vLLM refuses ``data_parallel_size > 1`` inside one process). ``data_parallel_size`` applies to
    ``heal serve-teacher``, where ``vllm serve`` runs the ranks itself.
    """

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans (a teacher too big for one GPU)")
    data_parallel_size: int = Field(1, ge=1, description="engine replicas behind one served endpoint (serve-teacher)")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="share of GPU memory vLLM takes; lower it for entropy: exact (HF shares the GPU)"
    )
    max_model_len: int = Field(0, ge=0, description="context length; 0 = the model's")
    enable_prefix_caching: bool = Field(True, description="re-use the KV of shared prefixes (N samples, GEAR prefixes)")


class ServerConfig(_Section):
    """An OpenAI-compatible completions endpoint (``teacher.backend: openai``): vllm serve, SGLang, heal serve-teacher.

    Everything here is how to reach the server, not what it computes, so none of it enters the config hash.
    """

    url: str = Field("", description="base URL up to /v1, e.g. http://gpu-node:8000/v1")
    model_name: str = Field("", description="the served model name; empty = teacher.model")
    api_key_env: str = Field("", description="environment variable holding the bearer token; empty = none")
    max_concurrency: int = Field(32, ge=1, description="requests in flight at once")
    timeout_seconds: float = Field(600.0, gt=0, description="per request; long generations take minutes")
    max_retries: int = Field(5, ge=0, description="retries after a 429/5xx/timeout/connection error")
    backoff_seconds: float = Field(1.0, gt=0, description="first retry delay; doubles each retry (Retry-After wins)")


class TeacherConfig(_Section):
    """The teacher and its backend.

    ``entropy``: ``exact`` is the full-vocabulary entropy the paper's breakpoints need. The HF backend has it at no
    extra cost; the vLLM engine stores the top-k bound while sampling and recomputes exact traces with one
    teacher-forced HF pass on the same GPU, only for the failed trajectories GEAR cuts. ``topk`` stores and uses
    the lower bound from the top ``top_logprobs`` log-probs (heal_core/backends/logprobs.py); it is the only mode
    a remote server offers.
    """

    backend: Literal["hf", "vllm", "openai"] = Field("hf", description="hf (transformers), vllm (engine), openai (server)")
    model: str = Field("", description="HF model path or hub name")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto = the checkpoint's")
    device: str = Field("auto", description="'auto' picks cuda when available, else cpu")
    max_batch_sequences: int = Field(
        64, ge=1, description="sequences per generate() call; n is split across calls when larger"
    )
    prompt_template: str = Field(
        "{problem}\n\nPlease reason step by step, separate steps with a blank line, "
        "and put your final answer within \\boxed{{}}.",
        description="user message built from a problem; {problem} is replaced",
    )
    reasoning_format: ReasoningFormat = Field(
        "none",
        description="none, or think_tags: the teacher thinks in a <think>...</think> block (Qwen3, DeepSeek-R1), "
        "its final answer is read only after the block, and a block that never closes means no answer "
        "(heal_core/reasoning.py); checked against the teacher's chat template at startup",
    )
    sampling: SamplingConfig = SamplingConfig()
    entropy: Literal["exact", "topk"] = Field("exact", description="exact (hf, vllm) or topk (vllm, openai)")
    top_logprobs: int = Field(20, ge=1, description="k of the top-k log-probs (vllm, openai; <= the server's max)")
    vllm: VLLMConfig = VLLMConfig()
    server: ServerConfig = ServerConfig()

    @model_validator(mode="after")
    def _backend_settings(self) -> TeacherConfig:
        if self.backend == "hf" and self.entropy != "exact":
            raise ValueError("entropy: the hf backend computes exact entropy at no cost; topk is for vllm and openai")
        if self.backend == "openai":
            if self.entropy != "topk":
                raise ValueError("entropy: a server returns only top-k log-probs; set teacher.entropy: topk")
            if not self.server.url:
                raise ValueError("server.url: the openai backend needs the endpoint, e.g. http://host:8000/v1")
        return self


class HintsConfig(_Section):
    """Stage II, global hindsight: regenerate hard problems with the gold answer in the prompt."""

    pass_rate_below: float = Field(0.5, ge=0.0, le=1.0, description="problems below this pass rate get hints")
    template: str = Field(
        "{problem}\n\nHint: the final answer is {answer}. Derive it step by step without mentioning "
        "this hint, separate steps with a blank line, and put your final answer within \\boxed{{}}.",
        description="hinted user message; {problem} and {answer} are replaced",
    )
    n: int = Field(30, ge=1, description="hinted samples per hard problem (paper: same N as Stage I)")
    leakage_patterns: list[str] = Field(
        default_factory=lambda: [
            r"\bhint\b",
            r"\bgiven (final )?answer\b",
            r"\bthe answer (is|was) (given|provided)\b",
            r"\bwe (are|were) told the answer\b",
        ],
        description="case-insensitive regexes; a trajectory matching any is rejected as leaking the hint",
    )
    max_per_problem: int = Field(4, ge=1, description="kept hinted samples per problem")
    wave_samples: int = Field(
        8, ge=1, description="hinted samples drawn per problem per wave; a problem with max_per_problem kept gets "
        "no further wave (paper: silent; all n at once when >= n)",
    )

    @field_validator("leakage_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {i} ({pattern!r}) is not a valid regex: {exc}") from None
        return patterns


class GearConfig(_Section):
    """Stage III, GEAR: entropy-guided repair of failed trajectories of extremely hard problems."""

    extreme_max_correct: int = Field(1, ge=0, description="<= this many correct of N is 'extremely hard' (paper: 1)")
    failed_paths: int = Field(10, ge=1, description="failed trajectories repaired per problem (paper: 10)")
    continuations: int = Field(20, ge=1, description="continuations per breakpoint (paper: 20)")
    search_fraction: float = Field(
        1 / 3, gt=0.0, le=1.0, description="breakpoint searched in this leading share of tokens (paper: first third)"
    )
    surge_window: int = Field(
        16, ge=1, description="trailing moving-average window (tokens) that a surge is measured against"
    )
    hint_template: str = Field(
        "{problem}\n\nHint: the final answer is {answer}. Continue the partial solution step by step "
        "without mentioning this hint, separate steps with a blank line, and put your final answer "
        "within \\boxed{{}}.",
        description="user message for repairs; the kept prefix is the partially written answer",
    )
    max_per_problem: int = Field(4, ge=1, description="kept repairs per problem")
    wave_paths: int = Field(
        1, ge=1, description="failed paths repaired per problem per wave; a problem with max_per_problem kept "
        "repairs gets no further wave (paper: silent)",
    )


class PureConfig(_Section):
    """PURE shortcut filter; see heal_core/pure.py for the formulation."""

    lam: float = Field(0.2, ge=0.0, description="lambda: reject when forced-answer ratio R > lam (paper: 0.2)")
    eps: float = Field(0.01, gt=0.0, description="epsilon in R = U_{K-1} / (U_0 + eps) (paper: 0.01)")
    answer_lead: str = Field(
        "\n\nThe final answer is \\boxed{", description="text between a step prefix and the scored gold answer"
    )
    leap_drop_share: float = Field(
        0.8, gt=0.0, le=1.0, description="a step that removes this share of the uncertainty drop is a leap candidate"
    )
    leap_log_ppl_margin: float = Field(
        1.0, ge=0.0, description="... and is rejected when its log-perplexity exceeds the median step's by this"
    )
    enabled: bool = Field(True, description="off: Stage II and III rows are kept without PURE's check")


VariantName = Literal["heal", "rs_sft", "keep_all", "heal_no_pure", "heal_no_gear", "heal_mixed"]
"""The training variants ``heal_core/variants.py`` defines: which datasets each trains on, in which order."""


def _no_duplicates(values: list[Any]) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return values


class PaceConfig(_Section):
    """PACE: three sequential SFT stages, each initialised from the previous stage's weights.

    Every variant in ``variants`` is trained once per seed in ``seeds`` on the same run's data, with the same
    optimizer-step budget (HEAL's; see ``heal_core/variants.py``), so the report can tell the data's effect from
    seed noise: its intervals resample seeds as well as problems.
    """

    epochs: float = Field(5.0, gt=0.0, description="per stage (paper: 5)")
    learning_rate: float = Field(1e-5, gt=0.0, description="paper: 1e-5")
    batch_size: int = Field(8, ge=1, description="effective batch size (paper: 8)")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="batch_size is split into this many micro-batches (less memory, same effective batch)")
    max_length: int = Field(8192, ge=16, description="long: TRL truncates the tail, answer included")
    chat_template: str = Field(
        "",
        description="a Jinja file (.jinja) that renders the SFT examples in place of the student tokenizer's own "
        "chat template, and is saved with every trained student (TRL's SFTConfig.chat_template_path): for a "
        "template that drops text from assistant messages (DeepSeek-R1-Distill's keeps only what follows "
        "</think>), which heal refuses to train on; empty = the student's own",
    )
    lr_scheduler_type: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="per stage, each with a fresh optimizer; cosine with warmup is open-r1's distillation "
        "recipe (the paper does not say)",
    )
    warmup_ratio: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of a stage's steps spent warming the learning rate up: a fresh Adam "
        "at the full rate on an already trained model knocks it off (measured on the demo student: 16 steps at 1e-3 "
        "without warm-up took it from 0.62 to 0.01 pass@1 on problems it solved)",
    )
    mode: Literal["cumulative", "incremental"] = Field(
        "cumulative", description="stage k trains on stages <= k (cumulative) or on stage k's new data only"
    )
    stage1_cap_per_problem: int = Field(4, ge=1, description="verified samples per problem kept for Stage I")
    variants: list[VariantName] = Field(
        default_factory=lambda: ["heal", "rs_sft"],
        description="what is trained and compared: heal (PACE I -> II -> III), rs_sft (Stage I data: the paper's "
        "baseline), keep_all (every Stage I sample, unverified), heal_no_pure (PACE without the PURE filter), "
        "heal_no_gear (PACE I -> II), heal_mixed (all of HEAL's data in one SFT run); each leaves one "
        "ingredient of HEAL out, and rs_sft is the baseline the report's differences are taken against",
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1,
        description="training seeds (SFTConfig.seed: data order, dropout); each variant is trained once per seed, "
        "so a difference between variants can be told apart from seed-to-seed variation",
    )

    @field_validator("variants", "seeds")
    @classmethod
    def _listed_once(cls, values: list[Any]) -> list[Any]:
        return _no_duplicates(values)

    @field_validator("chat_template")
    @classmethod
    def _jinja_file(cls, value: str) -> str:
        if value and not value.endswith((".jinja", ".j2")):
            raise ValueError(f"{value!r}: a chat template override is a Jinja file (.jinja or .j2)")
        return value


class StudentConfig(_Section):
    """The small model PACE fine-tunes (the bundled demo student when ``model`` is empty)."""

    model: str = Field("", description="HF model path or hub name of the student's starting checkpoint")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="training dtype; auto = the checkpoint's")
    reasoning_format: ReasoningFormat = Field(
        "none",
        description="how the untrained student writes, for its evaluation (as teacher.reasoning_format); the "
        "students trained on the curriculum write the teacher's format and are evaluated in it",
    )


_CREDENTIAL = re.compile(r"(^|_)(key|secret|token|password|credentials?|connection_string)($|_)", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def _literal_credentials(options: Any, path: str = "storage.storage_options") -> list[str]:
    """Keys of ``options`` (nested too) that hold a credential as a literal rather than a ``${NAME}`` reference."""
    if isinstance(options, dict):
        found = []
        for name, value in options.items():
            key = f"{path}.{name}"
            if isinstance(value, (dict, list)):
                found += _literal_credentials(value, key)
            elif _CREDENTIAL.search(str(name)) and value not in (None, "") and not _ENV_REFERENCE.fullmatch(str(value)):
                found.append(key)
        return found
    if isinstance(options, list):
        return [key for i, item in enumerate(options) for key in _literal_credentials(item, f"{path}.{i}")]
    return []


class StorageConfig(_Section):
    """Credentials never live in the config: the config is copied into every run (``config.yaml``), into flow
    parameters (stored by the Prefect server, shown in its UI) and into logs. They come from the environment
    (``AWS_*``, or ``${NAME}`` references in ``storage_options``), which ``orchestration.secrets_block`` can fill
    from a Prefect Secret block on each worker."""

    uri: str = Field("./heal-data", description="local path or s3://bucket/prefix; runs land under <uri>/runs/")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to fsspec (s3fs: endpoint_url, ...); credentials only as ${ENV_VAR} references; "
                    "AWS_* env vars also apply",
    )

    @field_validator("storage_options")
    @classmethod
    def _no_literal_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        literal = _literal_credentials(options)
        if literal:
            raise ValueError(
                f"{', '.join(literal)}: a credential written into the config would be copied into config.yaml, "
                "flow parameters and logs; write it as a ${ENV_VAR} reference, or use the AWS_* variables"
            )
        return options


class OrchestrationConfig(_Section):
    """How a run is executed. Only ``shard_size`` shapes the data; the rest can change between a run and its
    resume (see ``HealConfig.config_hash``)."""

    shard_size: int = Field(64, ge=1, description="problems per shard (one deployment run each)")
    mode: Literal["auto", "embedded", "deployments"] = Field(
        "auto",
        description="embedded: shards, training and evaluation run in the parent's process as subflows; "
        "deployments: each is a run of its deployment on a work pool (retryable alone from the UI); "
        "auto: deployments when the parent itself is a deployment run, else embedded",
    )
    cpu_pool: str = Field("cpu", description="work pool of heal-pipeline (it waits on its children: keep it off the GPUs)")
    gpu_pool: str = Field("gpu", description="work pool of heal-shard, heal-train and heal-eval")
    poll_seconds: float = Field(5.0, gt=0, description="how often the parent checks its deployment runs")
    heartbeat_timeout_seconds: int = Field(
        90, ge=45, description="a deployment run silent this long (workers send a heartbeat every 30 s) is marked "
        "CRASHED by the automation heal deploy creates, so a killed worker's runs become retryable",
    )
    shard_retries: int = Field(3, ge=0, description="retries of a failed shard inside its run, before it waits for Retry")
    max_verify_error_share: float = Field(
        0.1, ge=0.0, le=1.0, description="a verifier call with more than one failed check (status error) making up "
        "more than this share of its checks fails the work (heal_core.verify.VerifierUnavailable), as a broken "
        "verifier pool does: a broken tool must not turn every sample into an unsolved one",
    )
    retry_backoff_seconds: float = Field(
        5.0, ge=0, description="first retry delay, doubled each retry: the default 5, 10, 20 s outlasts a 30 s outage"
    )
    max_shard_tokens: int = Field(
        512_000_000, ge=1,
        description="refuse a config whose shard may generate more tokens than this (worst case: every problem "
        "hard and extremely hard); a shard holds its samples and entropy traces in memory, ~10 bytes a token: "
        "~5 GB at the default, which the paper's settings with 16k-token samples and 64-problem shards fit",
    )
    secrets_block: str = Field(
        "", description="name of a Prefect Secret block holding a JSON object of environment variables (S3 "
        "credentials, API tokens) that every heal flow run sets in its process before it starts work",
    )


ProblemFormat = Literal["fields", "gsm8k", "math", "aime", "amc"]
_MAPPING_KEYS = ("id_field", "problem_field", "answer_field", "solution_field", "metadata_fields")


class ProblemsConfig(_Section):
    """Where problems come from and which record fields hold what.

    A built-in ``format`` is a published benchmark layout with its own field names and answer rules (see
    ``heal_core/datasets.py``); the field mapping keys apply to ``format: fields`` only, and setting them
    with a built-in format is an error rather than silently ignored.
    """

    uri: str = Field("", description="JSONL or Parquet file, or a local HF datasets directory (save_to_disk)")
    format: ProblemFormat = Field(
        "fields", description="fields (the mapping below), or a built-in layout: gsm8k, math, aime, amc"
    )
    split: str = Field("", description="split of an HF DatasetDict directory; empty when it holds one split")
    id_field: str = Field("id", description="records without it get positional ids")
    problem_field: str = Field("problem", description="the problem statement's field")
    answer_field: str = Field("answer", description="the gold answer's field")
    solution_field: str = Field(
        "", description="worked solution; its last \\boxed{} is the answer of a record without one (MATH layout)"
    )
    metadata_fields: list[str] = Field(
        default_factory=list, description="fields kept with each problem (e.g. subject, level) for grouped evaluation"
    )
    max_chars: int = Field(
        20000, gt=0,
        description="a problem or answer longer than this is quarantined: a prompt that size fills a teacher's "
                    "context and its memory (the longest MATH-500 problem is about 3 400 characters)",
    )

    @model_validator(mode="after")
    def _mapping_only_for_fields(self) -> ProblemsConfig:
        if self.format != "fields":
            defaults = ProblemsConfig.model_construct()
            changed = [key for key in _MAPPING_KEYS if getattr(self, key) != getattr(defaults, key)]
            if changed:
                raise ValueError(f"{', '.join(changed)}: format {self.format!r} has its own field names; "
                                 "use format 'fields' to map fields yourself")
        return self


class DecontaminationConfig(_Section):
    """Training problems that copy an evaluation problem are dropped before sampling (heal_core/decontaminate.py).

    8-grams over normalised words follow open-r1's decontamination script. One shared 8-gram is too little
    evidence (competition boilerplate shares them), so a copy must hold ``min_overlap`` of the eval item's n-grams.
    """

    ngram: int = Field(8, ge=2, description="n of the word n-grams")
    min_overlap: float = Field(
        0.5, ge=0.0, le=1.0, description="share of an eval item's n-grams a training problem must hold; 0 = any one"
    )
    against: list[ProblemsConfig] = Field(
        default_factory=list, description="evaluation sets (uri, format, ...) to check against; empty = off"
    )


class JudgeConfig(_Section):
    """An LLM judge for answers the rule-based verifier rejects but that are not trivially different (see
    ``heal_core/judge.py``). Off by default: a judge is slower than Math-Verify and can be wrong itself."""

    enabled: bool = Field(False, description="re-examine the verifier's rejections with the judge")
    model: str = Field("", description="judge model, on the teacher's backend settings; empty = the teacher")
    template: str = Field(
        "Do these two final answers to a math problem denote the same value?\nAnswer A: {prediction}\n"
        "Answer B: {gold}\nReply with yes or no.",
        description="the judge's user message; {prediction} and {gold} are replaced",
    )
    temperature: float = Field(0.01, gt=0.0, le=2.0, description="near-greedy: a verdict, not a sample")
    max_new_tokens: int = Field(8, ge=1, description="a verdict is a word")


class EvaluationConfig(_Section):
    """Evaluation of teacher and students: pass@1 as the mean over ``samples`` draws, pass@samples.

    The held-out set (``uri``) is always evaluated; ``benchmarks`` adds published sets, each reported under
    its set name (file stem, as ``decontamination.against`` names them), so one run compares the models on
    MATH-500, GSM8K, AIME, ... with the same sampling settings. The report's intervals over the held-out set
    (``heal_core/stats.py``) use ``bootstrap_resamples`` and ``confidence``.
    """

    # what is evaluated
    uri: str = Field("", description="JSONL or Parquet problems (same field mapping as problems)")
    benchmarks: list[ProblemsConfig] = Field(
        default_factory=list, description="benchmark sets (uri, format, ...) evaluated besides the held-out set"
    )
    max_problems: int = Field(0, ge=0, description="problems per set (held-out and each benchmark); 0 = all")

    # how every model is sampled
    samples: int = Field(4, ge=1, description="samples per problem")
    temperature: float = Field(
        0.6, gt=0.0, le=2.0,
        description="sampling temperature of every evaluated model (teacher too); the teacher's own "
        "(teacher.sampling) is set for diverse training data, not for measuring a model: DeepSeek-R1 reports "
        "pass@1 at 0.6",
    )
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling of evaluation (DeepSeek-R1: 0.95)")

    # how the report states its uncertainty
    bootstrap_resamples: int = Field(
        2000, ge=100,
        description="bootstrap draws behind the report's intervals; percentile bounds need 1000 or more to be "
        "stable from one set of draws to the next (Efron & Tibshirani, An Introduction to the Bootstrap, ch. 13)",
    )
    confidence: float = Field(
        0.95, gt=0.0, lt=1.0, description="coverage of the report's percentile bootstrap intervals"
    )


EXECUTION_ONLY: dict[str, Any] = {
    "storage": True,
    "orchestration": {"mode", "cpu_pool", "gpu_pool", "poll_seconds", "secrets_block", "max_shard_tokens",
                      "shard_retries", "retry_backoff_seconds", "heartbeat_timeout_seconds",
                      "max_verify_error_share"},
    "teacher": {"server": True, "vllm": {"gpu_memory_utilization", "data_parallel_size"}},
}


class HealConfig(_Section):
    problems: ProblemsConfig = ProblemsConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    teacher: TeacherConfig = TeacherConfig()
    hints: HintsConfig = HintsConfig()
    gear: GearConfig = GearConfig()
    pure: PureConfig = PureConfig()
    pace: PaceConfig = PaceConfig()
    judge: JudgeConfig = JudgeConfig()
    student: StudentConfig = StudentConfig()
    storage: StorageConfig = StorageConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _extreme_within_n(self) -> HealConfig:
        if self.gear.extreme_max_correct >= self.teacher.sampling.n:
            raise ValueError(
                f"gear.extreme_max_correct ({self.gear.extreme_max_correct}) must be below "
                f"teacher.sampling.n ({self.teacher.sampling.n})"
            )
        return self

    @model_validator(mode="after")
    def _shard_fits_memory(self) -> HealConfig:
        per_problem = (self.teacher.sampling.n + self.hints.n + self.gear.failed_paths * self.gear.continuations) \
            * self.teacher.sampling.max_new_tokens
        limit = self.orchestration.max_shard_tokens
        if self.orchestration.shard_size * per_problem > limit:
            raise ValueError(
                f"orchestration.shard_size={self.orchestration.shard_size} may generate "
                f"{self.orchestration.shard_size * per_problem:,} tokens in one shard (per problem: (teacher.sampling.n"
                f" + hints.n + gear.failed_paths x gear.continuations) x teacher.sampling.max_new_tokens = "
                f"{per_problem:,}), over orchestration.max_shard_tokens={limit:,}; a shard is held in memory until "
                f"it is written: use orchestration.shard_size <= {max(1, limit // per_problem)}"
            )
        return self

    def config_hash(self) -> str:
        """Stable short hash of every setting that shapes a run's data: shard outputs are keyed by it.

        Where the data lives and how the run is executed are left out, so a run started embedded on a laptop
        can be resumed on a cluster (other pools, other credentials in ``storage_options``) and keep its shards.
        Computed once per config (it is frozen); a copy with changes computes its own.
        """
        return self._hash

    @cached_property
    def _hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json", exclude=EXECUTION_ONLY), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> HealConfig:
        """pydantic's copy, less the cached hash it would carry over from the original."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_hash", None)
        return copied

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif key == "<root>" or key.startswith("storage.storage_options"):  # whole config, or maybe a credential
            lines.append(f"'{key}': {e['msg']}")
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    where = f" {source}" if source else ""
    return f"invalid config{where}: " + "; ".join(lines)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{assignment}' is not of the form section.key=value")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{assignment}': value is not valid YAML: {exc}") from exc


def parse_config(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = (), source: str = "") -> HealConfig:
    """Validate a config mapping after applying ``section.key=value`` overrides."""
    data = copy.deepcopy(data or {})
    for assignment in overrides:
        _apply_override(data, assignment)
    try:
        return HealConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> HealConfig:
    """Load a YAML config file (or the defaults when ``path`` is None) and apply overrides."""
    if path is None:
        return parse_config({}, overrides, source="(defaults)")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, not {type(data).__name__}")
    return parse_config(data, overrides, source=str(path))
