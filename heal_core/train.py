"""Training: TRL's SFTTrainer run stage after stage, each stage starting from the previous one's weights.

``train_variant`` is the one training loop: one variant (``heal_core/variants.py``) for one seed. One new
trainer per stage (not one trainer over concatenated data): each stage gets a fresh optimizer and
learning-rate schedule, exactly as "stage k starts from stage k-1's weights" reads, and a finished stage is a
complete model directory that a resumed run can start from without retraining it. A stage is finished when
its ``heal_stage.json`` marker exists, written only after the model is saved.

Loss is on the completion only (TRL's default for prompt-completion data). On CPU, ``bf16=False``: TRL's
default ``bf16=True`` raises there.

TRL renders every example through the student tokenizer's chat template, and some templates rewrite assistant
messages: DeepSeek-R1-Distill's keeps only the text after ``</think>``, so a student trained through it would
learn the answers without the reasoning, the most valuable part of every trace, and nothing would say so.
``check_targets`` renders examples the way TRL does before any step and refuses a template that drops text;
``pace.chat_template`` puts a template that keeps it in its place.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from heal_core import checkpoints, launch, memory_plan, progress, storage
from heal_core.config import PaceConfig
from heal_core.launch import BatchLayout, LaunchError, batch_layout
from heal_core.reasoning import THINK_END
from heal_core.variants import VariantPlan, stage_steps

MARKER = "heal_stage.json"
PROGRESS = "progress.json"  # the launched main process's steps and loss, for the launching one


@dataclass(frozen=True)
class StageResult:
    name: str
    model_dir: str
    examples: int
    steps: int
    train_loss: float | None
    resumed: bool  # True when the stage was already finished and not retrained
    started_at: int = 0  # the step a checkpoint let it resume from (0: trained from its first step)
    losses: tuple[tuple[int, float], ...] = ()  # (step, logged training loss): the stage's curve

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageResult:
        """A stored result; those written before checkpoints and curves existed lack the last two fields."""
        return cls(**{**data, "losses": tuple((int(s), float(v)) for s, v in data.get("losses", ()))})


def finished(model_dir: str | Path) -> StageResult | None:
    """The stage's result if ``model_dir`` holds a finished stage; ``model_dir`` is where it is now (a copy
    fetched from storage on another worker), not where it was trained."""
    marker = Path(model_dir) / MARKER
    if not marker.exists():
        return None
    return StageResult.from_json({**json.loads(marker.read_text()), "model_dir": str(model_dir), "resumed": True})


def sft_args(
    cfg: PaceConfig,
    steps: int,
    output_dir: str | Path,
    seed: int,
    layout: BatchLayout | None = None,
    run_name: str = "",
    **overrides: Any,
):
    """TRL's ``SFTConfig`` for ``steps`` optimizer steps of ``cfg``: the one place PACE's settings become
    trainer arguments (``bench/training.py`` trains its plain-TRL side with the same ones, the demo models
    with their own ``overrides``). ``layout`` is the batch of each of the stage's processes (one process when
    absent). Set explicitly where TRL's defaults would differ on a laptop: gradient checkpointing as
    configured (TRL turns it on), no reporting unless asked, and bf16 only on a GPU that has it."""
    import torch
    from trl import SFTConfig

    layout = layout or batch_layout(cfg, 1)
    on_gpu = torch.cuda.is_available()
    settings = {
        "output_dir": str(output_dir),
        "max_steps": steps,
        "per_device_train_batch_size": layout.micro,
        "gradient_accumulation_steps": layout.accumulation,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "warmup_steps": round(cfg.warmup_ratio * steps),
        "max_length": cfg.max_length,
        "bf16": bf16_gpu(),
        "use_cpu": not on_gpu,
        "activation_checkpointing": cfg.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if cfg.gradient_checkpointing else None,
        "padding_free": cfg.padding_free,
        "use_liger_kernel": liger(cfg, on_gpu),
        "model_init_kwargs": {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else None,
        "logging_steps": max(1, steps // 10),
        "save_strategy": "steps" if cfg.save_steps else "no",
        "save_steps": cfg.save_steps or 500,
        "save_total_limit": cfg.save_total_limit,
        "report_to": list(cfg.report_to) or "none",
        "run_name": run_name or None,
        "dataloader_num_workers": 0,
        "seed": seed,
    }
    return SFTConfig(**{**settings, **overrides})


def bf16_gpu() -> bool:
    """Train in bf16 (autocast over float32 weights): on a GPU that has it. TRL's default ``bf16=True`` raises on
    a CPU."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def liger(cfg: PaceConfig, on_gpu: bool) -> bool:
    """Whether the stage trains with Liger's kernels (``pace.liger_kernel``): auto means on a GPU where the
    package is installed; on where it is not is refused rather than trained without."""
    installed = importlib.util.find_spec("liger_kernel") is not None
    if cfg.liger_kernel == "on" and not installed:
        raise LaunchError(
            "pace.liger_kernel is on and liger-kernel is not installed: pip install liger-kernel, "
            "or set pace.liger_kernel to auto"
        )
    return cfg.liger_kernel == "on" or (cfg.liger_kernel == "auto" and on_gpu and installed)


@dataclass(frozen=True)
class StageSpec:
    """One stage's training, complete: what the calling process and every launched process
    (``heal_core/stage_process.py``) train from. JSON, with no credentials: storage options are the config's,
    whose ``${NAME}`` references each process resolves from its own environment."""

    name: str
    init_model: str
    model_dir: str
    pace: dict[str, Any]  # PaceConfig, as dumped
    seed: int
    steps: int
    examples: int
    micro: int  # per process and forward pass
    accumulation: int
    run_name: str = ""
    checkpoints: str = ""  # where in-stage checkpoints are kept (a storage URI); "" = none
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> PaceConfig:
        return PaceConfig.model_validate(self.pace)

    @property
    def trainer_dir(self) -> Path:
        """The trainer's own folder beside the model: local checkpoints, tensorboard's ``runs/``."""
        return Path(f"{self.model_dir}.trainer")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def train_stage(
    name: str,
    init_model: str,
    examples: Sequence[dict[str, Any]],
    model_dir: str | Path,
    cfg: PaceConfig,
    seed: int,
    max_steps: int | None = None,
    checkpoint_uri: str = "",
    storage_options: Mapping[str, Any] | None = None,
    run_name: str = "",
) -> StageResult:
    """Fine-tune ``init_model`` on ``examples`` (TRL prompt-completion rows) and save to ``model_dir``; ``seed``
    is the trainer's (data order, dropout). Without ``max_steps``, ``cfg.epochs`` passes. ``checkpoint_uri``, a
    storage URI (beside ``model_dir`` when empty), keeps the stage's checkpoints (``pace.save_steps``) where a
    retry on any worker finds them.

    One DDP process trains here, in the calling process; more (``pace.distributed``) are started through
    accelerate's launcher on this node, which returns once every process is done."""
    done = finished(model_dir)
    if done is not None:
        return done
    if not examples:
        raise ValueError(f"stage {name}: no training examples")
    gpus = launch.visible_gpus()
    launch.check(cfg.distributed, gpus)
    layout = batch_layout(cfg, launch.world_size(cfg.distributed, gpus))
    liger(cfg, gpus > 0)  # refused here, before any process starts
    memory_plan.check_worker(init_model, cfg, gpus)
    tokenizer = training_tokenizer(init_model, cfg)
    check_targets(tokenizer, examples, f"stage {name}")
    steps = max_steps or stage_steps(len(examples), cfg)
    spec = StageSpec(
        name,
        init_model,
        str(model_dir),
        cfg.model_dump(mode="json"),
        seed,
        steps,
        len(examples),
        layout.micro,
        layout.accumulation,
        run_name,
        checkpoint_uri or f"{model_dir}.checkpoints",
        dict(storage_options or {}),
    )
    progress.stage(name, steps)
    if launch.launched(cfg.distributed, gpus):
        result = _launched(spec, examples, cfg, gpus)
    else:
        result = fit(spec, _dataset(examples), tokenizer)
    for leftover in (
        *spec.trainer_dir.glob(f"{checkpoints.PREFIX}*"),
        *spec.trainer_dir.glob("resume-node*"),
        spec.trainer_dir / "data",
    ):
        shutil.rmtree(leftover, ignore_errors=True)  # the model is saved: nothing resumes from these
    return result


def _launched(spec: StageSpec, examples: Sequence[dict[str, Any]], cfg: PaceConfig, gpus: int) -> StageResult:
    """Train ``spec`` through accelerate's launcher, this node's processes reporting their steps to this one."""
    spec_file = write_spec(spec, examples)
    (spec.trainer_dir / PROGRESS).unlink(missing_ok=True)  # an earlier attempt's
    log = spec.trainer_dir / "launch.log"
    launch.run(
        cfg.distributed, gpus, 0, [str(spec_file)], log, bf16_gpu(), _progress_reader(spec.trainer_dir / PROGRESS)
    )
    result = finished(spec.model_dir)
    if result is None:
        raise RuntimeError(f"stage {spec.name}: the training processes exited without saving {spec.model_dir}")
    return replace(result, resumed=False)


def write_spec(spec: StageSpec, examples: Sequence[Mapping[str, Any]]) -> Path:
    """The spec file ``heal_core.stage_process`` reads, its examples beside it as Arrow (memory-mapped by each
    process, copied by none); ``heal train-stage`` on the other nodes of a multi-node stage reads the same."""
    data = spec.trainer_dir / "data"
    _dataset(examples).save_to_disk(str(data))
    spec_file = spec.trainer_dir / "spec.json"
    storage.write_json({"spec": spec.to_json(), "data": str(data)}, str(spec_file))
    return spec_file


def read_spec(spec_file: Path) -> tuple[StageSpec, str]:
    """The stage and the folder of its examples, as ``write_spec`` wrote them."""
    saved = json.loads(Path(spec_file).read_text())
    return StageSpec(**saved["spec"]), saved["data"]


def pending_specs(root: Path) -> list[Path]:
    """The spec files under ``root`` (a worker's cache of models) of stages launched and not finished, oldest
    first: what the other nodes of a multi-node stage train (``heal train-stage --follow``)."""
    specs = (
        s
        for s in root.glob("**/*.trainer/spec.json")
        if not (s.parent.with_name(s.parent.name.removesuffix(".trainer")) / MARKER).exists()
    )
    return sorted(specs, key=lambda s: s.stat().st_mtime)


def _dataset(examples: Sequence[Mapping[str, Any]]) -> Any:
    """TRL's training set of ``examples``: a run's curriculum comes as a ``datasets.Dataset`` over memory-mapped
    Arrow (``tasks.curriculum.read_datasets``), used as it is, never read into lists; a list of records (tests, the
    judge's training) is turned into one."""
    from datasets import Dataset

    if isinstance(examples, Dataset):
        return examples.select_columns(["prompt", "completion"])
    return Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])


def fit(spec: StageSpec, dataset: Any, tokenizer: Any = None) -> StageResult:
    """Train one stage in this process, which is the whole stage or one of its launched processes (TRL's trainer
    finds its place in the process group accelerate's launcher made). Resumes from the newest complete
    checkpoint in ``spec.checkpoints``; the main process saves the model and writes the marker last.
    ``tokenizer``: the training tokenizer when the caller has it loaded (``training_tokenizer``'s)."""
    from trl import SFTTrainer

    cfg = spec.cfg
    args = sft_args(
        cfg, spec.steps, spec.trainer_dir, spec.seed, BatchLayout(spec.micro, spec.accumulation, 1), spec.run_name
    )
    launched = "LOCAL_RANK" in os.environ  # torchrun's: this is one of the processes accelerate launched
    callbacks = [_progress_callback(spec.trainer_dir / PROGRESS if launched else None)]
    if spec.checkpoints and cfg.save_steps:
        callbacks.append(checkpoints.keeper(spec.checkpoints, spec.storage_options, cfg.save_total_limit))
    trainer = SFTTrainer(
        model=spec.init_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer or training_tokenizer(spec.init_model, cfg),
        callbacks=callbacks,
    )
    start = checkpoints.restore(spec.checkpoints, spec.storage_options, spec.trainer_dir) if cfg.save_steps else None
    state = trainer.accelerator.state
    if launched and trainer.is_world_process_zero():  # one line the launch log can be checked against
        print(
            f"heal: stage {spec.name}: {state.distributed_type.value} over {state.num_processes} process(es) "
            f"({state.backend or 'no process group'}), micro-batch {spec.micro} x {spec.accumulation} "
            f"accumulation, {spec.steps} steps" + (f", resuming at step {start[0]}" if start else ""),
            flush=True,
        )
    output = trainer.train(resume_from_checkpoint=str(start[1]) if start else None)
    trainer.save_model(spec.model_dir)  # every process: ZeRO-3 and FSDP gather the shards, the main one writes
    losses = tuple((int(log["step"]), float(log["loss"])) for log in trainer.state.log_history if "loss" in log)
    result = StageResult(
        spec.name,
        spec.model_dir,
        spec.examples,
        spec.steps,
        float(output.training_loss),
        False,
        start[0] if start else 0,
        losses,
    )
    if trainer.is_world_process_zero():
        marker = json.dumps({k: v for k, v in asdict(result).items() if k != "resumed"}).encode()
        storage.write_bytes(marker, str(Path(spec.model_dir) / MARKER))  # atomic: an empty marker fails every retry
    trainer.accelerator.wait_for_everyone()
    return result


def _progress_callback(shared: Path | None) -> Any:
    """Optimizer steps and the logged loss, as ``heal_core.progress`` events of the running training stage; in a
    launched stage the main process also keeps them in ``shared``, where the launching process reads them
    (``_progress_reader``): progress listeners live in that process, not in the launched ones."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        loss: float | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.advance(1)
            self._share(state)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
                progress.advance(0, loss=self.loss)
                self._share(state)

        def _share(self, state: Any) -> None:
            if shared is not None and state.is_world_process_zero:
                storage.write_json({"step": state.global_step, "loss": self.loss}, str(shared))

    return Steps()


def _progress_reader(shared: Path) -> Callable[[], None]:
    """Pass the launched processes' steps and loss (``_progress_callback``'s file) on as progress events here."""
    seen = [0]

    def read() -> None:
        try:
            state = json.loads(shared.read_text())
        except (OSError, ValueError):  # not written yet
            return
        progress.advance(max(0, state["step"] - seen[0]), loss=state["loss"])
        seen[0] = max(seen[0], state["step"])

    return read


class TemplateDropsText(ValueError):
    """The student's chat template would train on shorter targets than the curriculum's trajectories."""


def training_tokenizer(model: str, cfg: PaceConfig) -> Any:
    """``model``'s tokenizer with the chat template training renders with: ``pace.chat_template`` when set (saved
    with the trained model, so every later stage and the student's users get it too)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if cfg.chat_template:
        if not Path(cfg.chat_template).is_file():
            raise FileNotFoundError(f"pace.chat_template: {cfg.chat_template} does not exist")
        tokenizer.chat_template = Path(cfg.chat_template).read_text(encoding="utf-8")
    return tokenizer


def trained_text(tokenizer: Any, example: Mapping[str, Any]) -> str:
    """The text of the tokens TRL trains on for a prompt-completion example: the prompt+completion rendering past
    its common prefix with the rendering of the prompt alone (``SFTTrainer``'s completion mask)."""
    prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    prompt_ids, full_ids = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in (prompt, full))
    shared = 0
    while shared < min(len(prompt_ids), len(full_ids)) and prompt_ids[shared] == full_ids[shared]:
        shared += 1
    return tokenizer.decode(full_ids[shared:])


def check_targets(tokenizer: Any, examples: Sequence[Mapping[str, Any]], what: str, sample: int = 16) -> None:
    """Raise ``TemplateDropsText`` unless each of ``sample`` examples spread over ``examples`` keeps its whole
    completion in ``trained_text``. Whitespace is compared loosely: a template that re-spaces ``<think>`` tags
    (Qwen3's) trains on the same words; one that removes words does not."""

    def words(text: str) -> str:
        return " ".join(text.split())

    for i in range(0, len(examples), max(1, len(examples) // sample))[:sample]:
        target, trained = examples[i]["completion"][-1]["content"], trained_text(tokenizer, examples[i])
        if words(target) in words(trained):
            continue
        rule = "rewrites assistant messages"
        if THINK_END in target and THINK_END not in trained:
            rule = "removes the thinking from assistant messages (a rule such as content.split('</think>')[-1])"
        raise TemplateDropsText(
            f"{what}: the student's chat template {rule}: example {i} ({examples[i].get('sample_id')}), "
            f"{len(target)} characters, would be trained on {trained[:80]!r}... Set pace.chat_template to a Jinja "
            "file that renders assistant content as it is (README: Reasoning traces)"
        )


@dataclass(frozen=True)
class VariantResult:
    variant: str
    seed: int
    budget: int  # the step budget B every variant got
    stages: tuple[StageResult, ...]  # in training order; an empty stage: 0 steps, the previous stage's model
    skip_reason: str | None = None  # set: nothing was trained (every stage has 0 steps)

    @property
    def model_dir(self) -> str | None:
        """The variant's final model (None when skipped)."""
        return self.stages[-1].model_dir if self.skip_reason is None else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VariantResult:
        return cls(**{**data, "stages": tuple(StageResult.from_json(s) for s in data["stages"])})


def train_variant(
    student: str,
    plan: VariantPlan,
    datasets: Mapping[str, Sequence[dict[str, Any]]],
    model_dirs: Mapping[str, str | Path],
    seed: int,
    cfg: PaceConfig,
    on_stage_done: Callable[[StageResult], None] = lambda result: None,
    checkpoint_uris: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    run_name: str = "",
) -> VariantResult:
    """Train ``plan``'s stages in order from ``student``, each into its ``model_dirs[dataset]`` and initialised
    from the previous stage's output; a stage finished there before is not retrained. Each stage keeps its
    checkpoints in ``checkpoint_uris[dataset]`` (beside its model when absent) and reports as
    ``<run_name>-<variant>-seed<seed>-<dataset>``.

    ``on_stage_done`` sees each trained or resumed stage as soon as it is finished, so a caller can store it
    before the next stage starts (a run interrupted mid-variant then keeps its finished stages). An empty
    stage passes its input model on unchanged rather than failing the run: it is reported with 0 steps.
    """
    if plan.skip_reason is not None:
        untrained = tuple(StageResult(s.dataset, student, s.examples, 0, None, False) for s in plan.stages)
        return VariantResult(plan.variant, seed, plan.budget, untrained, plan.skip_reason)
    results = []
    init = student
    for stage in plan.stages:
        examples = datasets[stage.dataset]
        if len(examples) != stage.examples:
            raise ValueError(
                f"{plan.variant}: {stage.dataset} holds {len(examples)} examples, the plan {stage.examples}"
            )
        if not stage.steps:
            results.append(StageResult(stage.dataset, init, 0, 0, None, False))
            continue
        result = train_stage(
            stage.dataset,
            init,
            examples,
            model_dirs[stage.dataset],
            cfg,
            seed,
            stage.steps,
            (checkpoint_uris or {}).get(stage.dataset, ""),
            storage_options,
            "-".join(p for p in (run_name, plan.variant, f"seed{seed}", stage.dataset) if p),
        )
        on_stage_done(result)
        results.append(result)
        init = result.model_dir
    return VariantResult(plan.variant, seed, plan.budget, tuple(results))
