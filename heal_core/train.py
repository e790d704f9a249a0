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

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from heal_core import progress, storage
from heal_core.config import PaceConfig
from heal_core.reasoning import THINK_END
from heal_core.variants import VariantPlan, stage_steps

MARKER = "heal_stage.json"


@dataclass(frozen=True)
class StageResult:
    name: str
    model_dir: str
    examples: int
    steps: int
    train_loss: float | None
    resumed: bool  # True when the stage was already finished and not retrained


def finished(model_dir: str | Path) -> StageResult | None:
    """The stage's result if ``model_dir`` holds a finished stage; ``model_dir`` is where it is now (a copy
    fetched from storage on another worker), not where it was trained."""
    marker = Path(model_dir) / MARKER
    if not marker.exists():
        return None
    return StageResult(**{**json.loads(marker.read_text()), "model_dir": str(model_dir), "resumed": True})


def sft_args(cfg: PaceConfig, steps: int, output_dir: str | Path, seed: int, **overrides: Any):
    """TRL's ``SFTConfig`` for ``steps`` optimizer steps of ``cfg``: the one place PACE's settings become
    trainer arguments (``bench/training.py`` trains its plain-TRL side with the same ones, the demo models
    with their own ``overrides``). Set explicitly where TRL's defaults would differ on a laptop: gradient
    checkpointing off, no checkpoints saved, no reporting, and bf16 only on a GPU that has it."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    settings = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=max(1, cfg.batch_size // cfg.gradient_accumulation_steps),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=round(cfg.warmup_ratio * steps),
        max_length=cfg.max_length,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=seed,
    )
    return SFTConfig(**{**settings, **overrides})


def train_stage(
    name: str,
    init_model: str,
    examples: Sequence[dict[str, Any]],
    model_dir: str | Path,
    cfg: PaceConfig,
    seed: int,
    max_steps: int | None = None,
) -> StageResult:
    """Fine-tune ``init_model`` on ``examples`` (TRL prompt-completion rows) and save to ``model_dir``; ``seed``
    is the trainer's (data order, dropout). Without ``max_steps``, ``cfg.epochs`` passes."""
    done = finished(model_dir)
    if done is not None:
        return done
    from datasets import Dataset
    from trl import SFTTrainer

    if not examples:
        raise ValueError(f"stage {name}: no training examples")
    tokenizer = training_tokenizer(init_model, cfg)
    check_targets(tokenizer, examples, f"stage {name}")
    steps = max_steps or stage_steps(len(examples), cfg)
    args = sft_args(cfg, steps, Path(model_dir) / "checkpoints", seed)
    dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    trainer = SFTTrainer(model=init_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[_progress_callback()])
    progress.stage(name, steps)
    output = trainer.train()
    trainer.save_model(str(model_dir))
    result = StageResult(name, str(model_dir), len(examples), steps, float(output.training_loss), False)
    marker = json.dumps({k: v for k, v in asdict(result).items() if k != "resumed"}).encode()
    storage.write_bytes(marker, str(Path(model_dir) / MARKER))  # atomic: an empty marker would fail every retry
    return result


def _progress_callback() -> Any:
    """Optimizer steps and the logged loss, as ``heal_core.progress`` events of the running training stage."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.advance(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                progress.advance(0, loss=float(logs["loss"]))

    return Steps()


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
            "file that renders assistant content as it is (README: Reasoning traces)")


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
        return cls(**{**data, "stages": tuple(StageResult(**s) for s in data["stages"])})


def train_variant(
    student: str,
    plan: VariantPlan,
    datasets: Mapping[str, Sequence[dict[str, Any]]],
    model_dirs: Mapping[str, str | Path],
    seed: int,
    cfg: PaceConfig,
    on_stage_done: Callable[[StageResult], None] = lambda result: None,
) -> VariantResult:
    """Train ``plan``'s stages in order from ``student``, each into its ``model_dirs[dataset]`` and initialised
    from the previous stage's output; a stage finished there before is not retrained.

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
            raise ValueError(f"{plan.variant}: {stage.dataset} holds {len(examples)} examples, the plan {stage.examples}")
        if not stage.steps:
            results.append(StageResult(stage.dataset, init, 0, 0, None, False))
            continue
        result = train_stage(stage.dataset, init, examples, model_dirs[stage.dataset], cfg, seed, stage.steps)
        on_stage_done(result)
        results.append(result)
        init = result.model_dir
    return VariantResult(plan.variant, seed, plan.budget, tuple(results))
