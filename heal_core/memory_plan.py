"""How much GPU memory one training process needs, before any GPU is asked: the training memory plan.

A stage that does not fit fails minutes into its first step with ``CUDA out of memory``, after the model, the data
and every process have loaded, and says nothing about which setting would have fit. The plan counts the bytes of
one process from the config and the student's shape, so ``heal config check --gpus`` and ``heal train --plan``
refuse such a config at once and name the ``--set`` that fits.

Notation: Ψ parameters, N training processes (``pace.distributed``: processes_per_node × nodes), b sequences per
micro-batch and s = ``pace.max_length`` tokens each (``launch.batch_layout``), T = b·s tokens in flight, L layers,
h hidden, q = heads·head_dim, k = kv_heads·head_dim, i intermediate, V vocabulary. Bytes per GPU:

* parameters Ψ: embeddings V·h (twice when lm_head is untied); per layer q/k/v/o (h·q + 2·h·k + q·h, Qwen2's
  q/k/v biases q + 2k), the SwiGLU MLP 3·h·i, two RMSNorms 2h; a final RMSNorm h (transformers' Qwen2 modeling).
* model states, by ``pace.distributed.strategy``:

  - ddp (heal's default): TRL loads the student in float32 and trains it under bf16 autocast, so fp32 weights
    4Ψ + fp32 gradients 4Ψ + AdamW's two fp32 moments 8Ψ; autocast's bf16 copies of every matmul weight (all
    but the norms and an untied input embedding), which autograd keeps for the backward, 2 bytes each; with
    N > 1, DDP's gradient buckets, copies of the gradients, 4Ψ (one process trains without DDP: launch.launched).
  - deepspeed_zero2 / zero3: the ZeRO paper (Rajbhandari et al. 2020, §3.1 and Figure 1, K = 12 for
    mixed-precision Adam): bf16 parameters 2Ψ, bf16 gradients 2Ψ, fp32 master weights and Adam moments 12Ψ.
    ZeRO-2 shards the gradients and the optimizer states over N (2Ψ + 2Ψ/N + 12Ψ/N), ZeRO-3 the parameters too
    (16Ψ/N); ZeRO-3 also holds the layers it has gathered.
  - fsdp (FSDP2, full shard, accelerate's bf16 MixedPrecisionPolicy): fp32 parameters, gradients and Adam moments
    sharded, 16Ψ/N, plus the layers gathered in bf16.
  - gathered bf16 weights (ZeRO-3, FSDP): two decoder layers (the one computing, the one prefetched) and the
    embedding and lm_head, 2·(2·layer + embeddings) bytes.
* activations, per token and layer, counted from the tensors autograd saves in transformers' Qwen2 decoder layer
  (``models/qwen2/modeling_qwen2.py``) with sdpa or flash attention, which keep no s × s scores, only the output
  and a fp32 log-sum-exp per head. With r the residual stream's bytes (4: autocast over fp32 weights, whose
  embedding output and residual adds stay fp32; 2: bf16 weights) and a = 2 the bf16 of the matmuls:

  - each RMSNorm: its input as fp32 4h, the normalised r·h that the weight multiplies, its output as the
    matmuls take it (under autocast one bf16 cast per consuming linear, 2h each: 3 for q/k/v, 2 for gate/up;
    else one r·h tensor), 4 bytes of rsqrt;
  - attention: sdpa keeps the query after RoPE a·q, the keys and values a·k each, its output a·q (which is
    o_proj's input too: the kernels write it head-minor, so the ``transpose(1, 2).contiguous()`` copies nothing)
    and a fp32 log-sum-exp per head, 4·heads; RoPE's multiplications keep only cos and sin, shared by all layers;
    with a padding mask (micro-batch > 1 without ``pace.padding_free``) sdpa repeats k and v to every head,
    2a·(q − k) more, and keeps the mask converted to the compute dtype, b·s² of a per layer (a·s per token);
    the boolean mask transformers builds, b·s², is counted once;
  - MLP: gate, silu(gate), up and their product, 4a·i.

  So 16h + 4q + 4k + 8i + 4·heads + 8 bytes per token and layer in bf16, 26h + 4q + 4k + 8i + 4·heads + 8
  under autocast (checked byte for byte against what autograd saves in a small Qwen2 on a CPU, whose autocast
  casts the same ops: tests/test_memory_plan.py; not yet against a GPU's measured peak). Without
  checkpointing all L layers are kept; with it (Chen et al. 2016, transformers' non-reentrant
  ``GradientCheckpointingLayer``) each layer keeps its input, r·h, and one layer's activations exist again while
  it is recomputed. The final norm adds one more RMSNorm per token.
* logits: b·s·V in bf16, their fp32 upcast (``ForCausalLMLoss``, then log-softmax's fp32 output) and the fp32
  gradient: a + 4 + 4 = 10 bytes per token and vocabulary entry (12 on a CPU). One 20,480-token sequence ×
  151,936 is 12.4 GB in fp32, as much again for the gradient. Liger's fused linear cross-entropy (Hsu et al.
  2024) never makes them: it computes the loss and the gradient chunk by chunk,
  ``chunk = next_pow2(ceil(T / ceil(V/h)))`` tokens (liger-kernel's ``ops/fused_linear_cross_entropy.py``),
  counted as one fp32 chunk, chunk·V·4, plus the hidden-state gradient it keeps from the forward, T·h·a.
* overhead: a fixed 2 GiB for the CUDA context (about 0.5 GiB), cuBLAS workspaces, NCCL communicators and
  DeepSpeed's or DDP's communication buffers.

The total is the sum, an upper bound: gradients appear during the backward as activations go. A plan fits when
it is within 90 % of the GPU's memory: the rest is for the caching allocator's fragmentation, the transient
buffers of a backward and what the count leaves out (TRL's metrics over the logits, RoPE's cos/sin tables).
On a CPU (no GPU) everything is fp32 (``bf16=False``): r = a = 4, no autocast copies, no overhead.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heal_core.config import PaceConfig
from heal_core.launch import NEEDS, LaunchError, batch_layout, world_size

if TYPE_CHECKING:
    from heal_core.config import HealConfig

GiB = 2**30
HEADROOM = 0.10
"""Share of a GPU's memory a plan leaves free: the caching allocator's fragmentation and the uncounted."""
OVERHEAD = 2 * GiB
"""Bytes per GPU process outside the model: CUDA context, cuBLAS workspaces, NCCL and communication buffers."""
MAX_GPUS_PER_NODE = 8
"""The largest node ``suggest`` plans for."""


class MemoryPlanError(ValueError):
    """A training config whose plan does not fit the GPU; the message names the setting that would."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2/LLaMA-style dense decoder that its memory depends on (its config.json's)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = True  # Qwen2's q/k/v projections have biases, LLaMA's none

    @classmethod
    def from_config(cls, fields: Mapping[str, Any]) -> ModelShape:
        """From a config.json mapping (a multimodal model's ``text_config``). Missing optional keys take
        transformers' Qwen2/LLaMA defaults: kv heads = heads, head_dim = hidden / heads, untied embeddings."""
        if "hidden_size" not in fields and isinstance(fields.get("text_config"), Mapping):
            fields = fields["text_config"]
        try:
            hidden, heads = int(fields["hidden_size"]), int(fields["num_attention_heads"])
            return cls(
                hidden=hidden,
                layers=int(fields["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(fields.get("num_key_value_heads") or heads),
                head_dim=int(fields.get("head_dim") or hidden // heads),
                intermediate=int(fields["intermediate_size"]),
                vocab=int(fields["vocab_size"]),
                tied_embeddings=bool(fields.get("tie_word_embeddings", False)),
                qkv_bias=bool(fields.get("attention_bias", fields.get("model_type") == "qwen2")),
            )
        except KeyError as err:
            raise ValueError(f"model config has no {err.args[0]}: not a dense decoder the memory plan knows") from None

    @property
    def embedding_parameters(self) -> int:
        """The input embedding, V·h (lm_head has as many more when untied)."""
        return self.vocab * self.hidden

    @property
    def layer_parameters(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def parameters(self) -> int:
        """Ψ: embeddings (and an untied lm_head), the decoder layers, the final norm."""
        heads = 1 if self.tied_embeddings else 2
        return heads * self.embedding_parameters + self.layers * self.layer_parameters + self.hidden

    @property
    def matmul_parameters(self) -> int:
        """The weights autocast casts to bf16 for a matmul: all but the RMSNorms and an untied input embedding (a
        lookup, not a matmul; a tied one is cast for lm_head)."""
        untied = 0 if self.tied_embeddings else self.embedding_parameters
        return self.parameters - untied - (2 * self.layers + 1) * self.hidden


@cache
def _bundled() -> dict[str, dict[str, Any]]:
    return json.loads(resources.files("heal_core").joinpath("model_shapes.json").read_text(encoding="utf-8"))


def shape_of(model: str) -> ModelShape:
    """``model``'s shape from its config.json: a local directory's; else the Hugging Face cache's (never a
    download: a plan is made before anything is fetched, and on machines that cannot); else the bundled table
    (``model_shapes.json``) of the students the shipped configs name, so a laptop plans for a cluster's model."""
    if not model:
        raise ValueError("no student model to plan for: set student.model, or pass a local path")
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        return ModelShape.from_config(json.loads(config.read_text(encoding="utf-8")))
    if not model.startswith((".", "/", "~")):
        try:
            from transformers import AutoConfig

            return ModelShape.from_config(AutoConfig.from_pretrained(model, local_files_only=True).to_dict())
        except (OSError, ValueError, ImportError):  # not cached (OSError), not a hub name (HFValidationError)
            pass
    if model in _bundled():
        return ModelShape.from_config(_bundled()[model])
    raise ValueError(
        f"cannot plan memory for {model!r}: it is not a local directory with a config.json, not in the "
        f"Hugging Face cache (nothing is downloaded for a plan), and not one of the bundled shapes "
        f"({', '.join(sorted(_bundled()))}); pass a local path to the model"
    )


@dataclass(frozen=True)
class MemoryPlan:
    """One training process's memory, in bytes per GPU, and what it was planned for (``plan``)."""

    model: str
    parameter_count: int
    strategy: str
    processes_per_node: int
    nodes: int
    world: int
    micro_batch: int
    accumulation: int
    max_length: int
    gradient_checkpointing: bool
    liger: bool  # the fused loss is used (pace.liger_kernel on, or auto on a GPU with liger-kernel installed)
    liger_setting: str
    on_gpu: bool
    precision: str
    gpu_memory: int  # 0: a CPU plan, not held against any memory
    parameters: int
    weight_copies: int  # autocast's bf16 copies (ddp) or the gathered bf16 layers (zero3, fsdp)
    gradients: int
    grad_buckets: int
    optimizer: int
    activations: int  # as configured (gradient_checkpointing)
    activations_other: int  # with the other gradient_checkpointing, for the printout
    logits: int
    overhead: int

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.weight_copies
            + self.gradients
            + self.grad_buckets
            + self.optimizer
            + self.activations
            + self.logits
            + self.overhead
        )

    @property
    def usable(self) -> int:
        """The GPU memory a plan may take: all but ``HEADROOM``."""
        return int(self.gpu_memory * (1 - HEADROOM))

    @property
    def fits(self) -> bool:
        return self.on_gpu and self.total <= self.usable


@dataclass(frozen=True)
class _Precision:
    name: str
    residual: int  # bytes of the residual stream (the layer input)
    element: int  # bytes of a matmul's input or output
    autocast: bool  # a cast per consuming linear


def _precision(strategy: str, on_gpu: bool) -> _Precision:
    if not on_gpu:
        return _Precision("fp32 (CPU)", 4, 4, False)
    if strategy == "ddp":
        return _Precision("fp32 weights, bf16 autocast", 4, 2, True)
    if strategy == "fsdp":
        return _Precision("fp32 shards, bf16 compute (FSDP2)", 2, 2, False)
    return _Precision("bf16 weights, fp32 master (ZeRO)", 2, 2, False)


def _norm_bytes(hidden: int, p: _Precision, consumers: int) -> int:
    """One RMSNorm's saved bytes per token: fp32 input, normalised value, output as its linears take it, rsqrt."""
    output = consumers * 2 * hidden if p.autocast else p.residual * hidden
    return 4 * hidden + p.residual * hidden + output + 4


def _layer_bytes(shape: ModelShape, p: _Precision, padded_length: int) -> int:
    """Bytes autograd saves per token in one Qwen2 decoder layer (module docstring) with sdpa/flash attention;
    ``padded_length``: the sequence length of a padded micro-batch, whose mask every layer keeps (0: none)."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    attention = p.element * (2 * q + 2 * kv) + 4 * shape.heads
    if padded_length:
        attention += 2 * p.element * (q - kv) + p.element * padded_length
    mlp = 4 * p.element * shape.intermediate
    return _norm_bytes(shape.hidden, p, 3) + attention + _norm_bytes(shape.hidden, p, 2) + mlp


def _states(shape: ModelShape, strategy: str, world: int, on_gpu: bool) -> tuple[int, int, int, int, int]:
    """(parameters, weight copies, gradients, gradient buckets, optimizer states) in bytes per GPU."""
    psi = shape.parameters

    def shard(per_parameter: int) -> int:
        return -(-per_parameter * psi // world)

    gathered = 2 * (2 * shape.layer_parameters + shape.embedding_parameters * (1 if shape.tied_embeddings else 2))
    if strategy == "ddp":
        copies = 2 * shape.matmul_parameters if on_gpu else 0
        return 4 * psi, copies, 4 * psi, 4 * psi if world > 1 else 0, 8 * psi
    if strategy == "deepspeed_zero2":
        return 2 * psi, 0, shard(2), 0, shard(12)
    if strategy == "deepspeed_zero3":
        return shard(2), gathered, shard(2), 0, shard(12)
    if strategy == "fsdp":
        return shard(4), gathered, shard(4), 0, shard(8)
    raise ValueError(f"pace.distributed.strategy {strategy!r}: no memory plan for it")


def _logits_bytes(shape: ModelShape, tokens: int, liger: bool, element: int) -> int:
    if not liger:
        return tokens * shape.vocab * (element + 4 + 4)
    chunk = 1 << (math.ceil(tokens / math.ceil(shape.vocab / shape.hidden)) - 1).bit_length()
    return chunk * shape.vocab * 4 + tokens * shape.hidden * element


def liger_installed() -> bool:
    """Whether liger-kernel is importable here: what ``pace.liger_kernel: auto`` decides on a GPU."""
    return importlib.util.find_spec("liger_kernel") is not None


def plan(model_shape: ModelShape, cfg: PaceConfig, gpus_per_node: int, gpu_memory: int, model: str = "") -> MemoryPlan:
    """The memory plan of one training process of ``cfg`` on workers with ``gpus_per_node`` GPUs (what
    ``processes_per_node: 0`` means; 0: a CPU worker) of ``gpu_memory`` bytes each. The batch split is the one
    training uses (``launch.batch_layout``), so a global batch that does not divide raises its ``LaunchError``."""
    on_gpu = gpus_per_node > 0
    world = world_size(cfg.distributed, gpus_per_node)
    layout = batch_layout(cfg, world)
    strategy = cfg.distributed.strategy
    precision = _precision(strategy, on_gpu)
    liger = on_gpu and (cfg.liger_kernel == "on" or (cfg.liger_kernel == "auto" and liger_installed()))
    tokens = layout.micro * cfg.max_length
    padded = layout.micro > 1 and not cfg.padding_free
    mask = layout.micro * cfg.max_length**2 if padded else 0
    layer = _layer_bytes(model_shape, precision, cfg.max_length if padded else 0)
    head = _norm_bytes(model_shape.hidden, precision, 1)
    kept = tokens * (model_shape.layers * layer + head) + mask
    recomputed = tokens * (model_shape.layers * precision.residual * model_shape.hidden + layer + head) + mask
    parameters, copies, gradients, buckets, optimizer = _states(model_shape, strategy, world, on_gpu)
    return MemoryPlan(
        model=model,
        parameter_count=model_shape.parameters,
        strategy=strategy,
        processes_per_node=world // cfg.distributed.nodes,
        nodes=cfg.distributed.nodes,
        world=world,
        micro_batch=layout.micro,
        accumulation=layout.accumulation,
        max_length=cfg.max_length,
        gradient_checkpointing=cfg.gradient_checkpointing,
        liger=liger,
        liger_setting=cfg.liger_kernel,
        on_gpu=on_gpu,
        precision=precision.name,
        gpu_memory=gpu_memory if on_gpu else 0,
        parameters=parameters,
        weight_copies=copies,
        gradients=gradients,
        grad_buckets=buckets,
        optimizer=optimizer,
        activations=recomputed if cfg.gradient_checkpointing else kept,
        activations_other=kept if cfg.gradient_checkpointing else recomputed,
        logits=_logits_bytes(model_shape, tokens, liger, precision.element),
        overhead=OVERHEAD if on_gpu else 0,
    )


Change = tuple[tuple[str, Any], ...]


def _candidates(cfg: PaceConfig, liger_used: bool) -> list[Change]:
    """What ``suggest`` tries, in order: on the configured processes, gradient checkpointing, Liger's fused loss,
    both, then a micro-batch of one sequence (``gradient_accumulation_steps = batch_size``: the same global batch);
    then ZeRO-3 with checkpointing over 2, 4 and 8 GPUs per node with the same additions. Execution settings come
    first (they change no fingerprint), fewer GPUs before more. Assignments that change nothing are left out."""
    ckpt = ("pace.gradient_checkpointing", True)
    liger = ("pace.liger_kernel", "on")
    accumulation = ("pace.gradient_accumulation_steps", cfg.batch_size)
    current = {
        "pace.gradient_checkpointing": cfg.gradient_checkpointing,
        "pace.liger_kernel": "on" if liger_used else cfg.liger_kernel,
        "pace.gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "pace.distributed.strategy": cfg.distributed.strategy,
        "pace.distributed.processes_per_node": cfg.distributed.processes_per_node,
    }
    raw: list[Change] = [(ckpt,), (liger,), (ckpt, liger), (ckpt, accumulation), (ckpt, liger, accumulation)]
    for gpus in (2, 4, MAX_GPUS_PER_NODE):
        base = (("pace.distributed.strategy", "deepspeed_zero3"), ("pace.distributed.processes_per_node", gpus), ckpt)
        raw += [base, (*base, liger), (*base, accumulation), (*base, liger, accumulation)]
    seen: set[Change] = set()
    changes = []
    for change in raw:
        effective = tuple((key, value) for key, value in change if current[key] != value)
        if effective and effective not in seen:
            seen.add(effective)
            changes.append(effective)
    return changes


def _apply(cfg: PaceConfig, change: Change) -> PaceConfig:
    pace = {key.removeprefix("pace."): value for key, value in change if not key.startswith("pace.distributed.")}
    distributed = {
        key.removeprefix("pace.distributed."): value for key, value in change if key.startswith("pace.distributed.")
    }
    return cfg.model_copy(update={**pace, "distributed": cfg.distributed.model_copy(update=distributed)})


def _assignment(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` reads it (YAML). A bare ``on`` is YAML's true, which ``pace.liger_kernel`` takes
    as the word written."""
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def suggest(shape: ModelShape, cfg: PaceConfig, gpus_per_node: int, gpu_memory: int) -> str | None:
    """The first change (``_candidates``) whose plan fits, as ``key=value`` assignments separated by spaces, each
    one a ``--set``; None when the plan fits already, or when nothing up to ``MAX_GPUS_PER_NODE`` GPUs per node
    does. A change whose global batch does not divide over its processes is skipped (``batch_layout`` refuses it:
    another batch size is another experiment)."""
    current = plan(shape, cfg, gpus_per_node, gpu_memory)
    if current.fits or not current.on_gpu:
        return None
    for change in _candidates(cfg, current.liger):
        try:
            fits = plan(shape, _apply(cfg, change), gpus_per_node, gpu_memory).fits
        except LaunchError:
            continue
        if fits:
            return " ".join(_assignment(key, value) for key, value in change)
    return None


def _gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def _needs(suggestion: str) -> list[str]:
    """What a suggested setting needs installed that this machine lacks (the GPU workers may have it)."""
    notes = []
    if "pace.liger_kernel=on" in suggestion and not liger_installed():
        notes.append("pace.liger_kernel=on needs liger-kernel on the GPU workers (pip install liger-kernel)")
    for strategy, module in NEEDS.items():
        if f"pace.distributed.strategy={strategy}" in suggestion and importlib.util.find_spec(module) is None:
            notes.append(f"{strategy} needs {module} on the GPU workers")
    return notes


def check(plan: MemoryPlan, suggestion: str | None) -> None:
    """Raise ``MemoryPlanError`` when ``plan`` does not fit its GPU, naming the per-GPU total, the GPU's memory and
    ``suggestion`` (``suggest``'s) or, without one, that nothing heal can set fits. A CPU plan is not checked."""
    if plan.fits or not plan.on_gpu:
        return
    what = (
        f"{plan.model or 'the student'} needs about {_gib(plan.total)} GiB per GPU to train "
        f"({plan.strategy} over {plan.world} process{'es' if plan.world > 1 else ''}, micro-batch "
        f"{plan.micro_batch} x {plan.max_length} tokens, gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}, liger {'on' if plan.liger else 'off'}) and a GPU of "
        f"{_gib(plan.gpu_memory)} GiB ({plan.gpu_memory / 1e9:.1f} GB) leaves {_gib(plan.usable)} GiB with "
        f"{HEADROOM:.0%} headroom"
    )
    if suggestion is None:
        raise MemoryPlanError(
            f"{what}; nothing heal can set fits on up to {MAX_GPUS_PER_NODE} GPUs per node (ZeRO-3, gradient "
            "checkpointing, Liger, one sequence per micro-batch): use GPUs with more memory, more nodes "
            "(pace.distributed.nodes) or a shorter pace.max_length"
        )
    settings = " ".join(f"--set {a}" for a in suggestion.split())
    notes = "".join(f"; {note}" for note in _needs(suggestion))
    raise MemoryPlanError(f"{what}; it fits with {settings}{notes}")


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a plain-text table: each component in GiB per GPU, the total, and the verdict."""
    copies = "bf16 weight copies (autocast)" if plan.strategy == "ddp" else "gathered bf16 layers"
    loss = "bf16 + fp32 + fp32 grad" if plan.on_gpu else "fp32 + fp32 + fp32 grad"
    unit = "GiB per GPU" if plan.on_gpu else "GiB"
    on, off = "checkpointing on", "checkpointing off"
    now, other = (on, off) if plan.gradient_checkpointing else (off, on)
    rows = [
        ("parameters", plan.parameters),
        *([(copies, plan.weight_copies)] if plan.on_gpu else []),
        ("gradients", plan.gradients),
        *([("DDP gradient buckets", plan.grad_buckets)] if plan.strategy == "ddp" else []),
        ("optimizer states (AdamW)", plan.optimizer),
        (f"activations ({now})", plan.activations),
        ("logits (Liger, one chunk)" if plan.liger else f"logits ({loss})", plan.logits),
        *([("framework overhead (CUDA context etc.)", plan.overhead)] if plan.on_gpu else []),
    ]
    other_row = f"(activations with {other}: not counted)"
    width = max(len(other_row), *(len(name) for name, _ in rows)) + 2
    processes = f"{plan.processes_per_node} per node x {plan.nodes} node{'s' if plan.nodes > 1 else ''}"
    title = (
        f"memory plan: {plan.model} ({plan.parameter_count / 1e9:.2f} B parameters), {plan.strategy} over "
        f"{plan.world} process{'es' if plan.world > 1 else ''} ({processes}), {plan.precision}"
    )
    batch = (
        f"micro-batch {plan.micro_batch} x {plan.max_length} tokens, {plan.accumulation} accumulation "
        f"step{'s' if plan.accumulation > 1 else ''}, gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}, liger {'on' if plan.liger else 'off'} "
        f"(pace.liger_kernel {plan.liger_setting})"
    )
    lines = [
        title,
        batch,
        f"{'component':<{width}}{unit:>12}",
        *(f"{name:<{width}}{_gib(value):>12}" for name, value in rows),
        f"{'total':<{width}}{_gib(plan.total):>12}",
        f"{other_row:<{width}}{_gib(plan.activations_other):>12}",
    ]
    if plan.on_gpu:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(
            f"GPU memory {_gib(plan.gpu_memory)} GiB ({plan.gpu_memory / 1e9:.1f} GB), "
            f"{_gib(plan.usable)} GiB usable with {HEADROOM:.0%} headroom: {verdict}"
        )
    return "\n".join(lines)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """``80GB`` (10^9 bytes each), ``80GiB`` (2^30), ``1.5TB``, or a plain number of bytes. Both units are taken
    as written, never guessed: an H100 sold as "80 GB" has 81,559 MiB (nvidia-smi), about 79.6 GiB, so ``80GB``
    (74.5 GiB) plans on the safe side and ``80GiB`` for about what it has."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text)
    unit = match and _UNITS.get(match[2].lower())
    if not match or unit is None or float(match[1]) <= 0:
        raise ValueError(
            f"{text!r} is not a memory size: write e.g. 80GB (10^9 bytes), 80GiB (2^30 bytes) or a number of bytes"
        )
    return round(float(match[1]) * unit)


def _local_gpu_memory() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def check_worker(model: str, cfg: PaceConfig, gpus: int) -> None:
    """Refuse a stage that cannot fit on this worker's GPUs before any process loads the model (``train_stage``).
    A student whose shape cannot be read (not a decoder heal knows) is trained unplanned, with a warning."""
    memory = _local_gpu_memory()
    if not gpus or memory is None:
        return
    try:
        shape = shape_of(model)
    except ValueError as err:
        warnings.warn(f"no training memory plan: {err}", stacklevel=2)
        return
    current = plan(shape, cfg, gpus, memory, model)
    check(current, None if current.fits else suggest(shape, cfg, gpus, memory))


def render(cfg: HealConfig, model: str, gpus: int | None, gpu_memory: str | None) -> tuple[str, MemoryPlanError | None]:
    """What ``heal config check --gpus`` and ``heal train --plan`` print for ``cfg``'s student (``model``, the
    path or name it resolves to), and the refusal when it does not fit. ``gpus`` defaults to the GPUs torch sees,
    ``gpu_memory`` to GPU 0's; with no GPU the plan is for the CPU and nothing is refused. Raises ``ValueError``
    for a bad size or an unknown model."""
    from heal_core.launch import visible_gpus

    notes = []
    if model != cfg.student.model:
        notes.append(f"student.model is empty: the plan is for the bundled demo student ({model})")
    memory = parse_size(gpu_memory) if gpu_memory is not None else None
    if memory is not None and memory < GiB:
        raise ValueError(f"--gpu-memory {gpu_memory}: {memory} bytes is less than 1 GiB; did you mean {gpu_memory}GB?")
    if gpus is None:
        gpus = visible_gpus() or (1 if memory is not None else 0)
    if gpus and memory is None:
        memory = _local_gpu_memory()
        if memory is None:
            raise ValueError(
                f"--gpus {gpus}: this machine has no GPU to read the memory of; give --gpu-memory (e.g. 80GB)"
            )
    if not gpus:
        notes.append(
            "no GPU: the plan is for training on this machine's CPU (fp32); it is not held against any GPU "
            "(pass --gpus and --gpu-memory to plan for GPU workers)"
        )
    shape = shape_of(model)
    current = plan(shape, cfg.pace, gpus, memory or 0, model)
    if gpus and cfg.pace.distributed.processes_per_node > gpus:
        notes.append(
            f"pace.distributed.processes_per_node {cfg.pace.distributed.processes_per_node} needs as many "
            f"GPUs per node, more than --gpus {gpus}: planned for {current.processes_per_node}"
        )
    text = "\n".join([format_plan(current), *notes])
    try:
        check(current, None if current.fits else suggest(shape, cfg.pace, gpus, memory or 0))
    except MemoryPlanError as err:
        return text, err
    return text, None
