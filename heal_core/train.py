"""PACE training: TRL's SFTTrainer run stage after stage, each stage starting from the previous one's weights.

One new trainer per stage (not one trainer over concatenated data): each stage gets a fresh optimizer and
learning-rate schedule, exactly as "stage k starts from stage k-1's weights" reads, and a finished stage is a
complete model directory that a resumed run can start from without retraining it. A stage is finished when
its ``heal_stage.json`` marker exists, written only after the model is saved.

Loss is on the completion only (TRL's default for prompt-completion data). On CPU, ``bf16=False``: TRL's
default ``bf16=True`` raises there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from heal_core.config import PaceConfig

MARKER = "heal_stage.json"


@dataclass(frozen=True)
class StageResult:
    name: str
    model_dir: str
    examples: int
    steps: int
    train_loss: float | None
    resumed: bool  # True when the stage was already finished and not retrained


def stage_steps(examples: int, cfg: PaceConfig) -> int:
    """Optimizer steps one stage takes: ``epochs`` passes at the configured effective batch size."""
    return max(1, math.ceil(cfg.epochs * math.ceil(examples / cfg.batch_size)))


def finished(model_dir: str | Path) -> StageResult | None:
    """The stage's result if ``model_dir`` holds a finished stage; ``model_dir`` is where it is now (a copy
    fetched from storage on another worker), not where it was trained."""
    marker = Path(model_dir) / MARKER
    if not marker.exists():
        return None
    return StageResult(**{**json.loads(marker.read_text()), "model_dir": str(model_dir), "resumed": True})


def train_stage(
    name: str,
    init_model: str,
    examples: Sequence[dict[str, Any]],
    model_dir: str | Path,
    cfg: PaceConfig,
    max_steps: int | None = None,
) -> StageResult:
    """Fine-tune ``init_model`` on ``examples`` (TRL prompt-completion rows) and save to ``model_dir``."""
    done = finished(model_dir)
    if done is not None:
        return done
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError(f"stage {name}: no training examples")
    steps = max_steps or stage_steps(len(examples), cfg)
    per_device = max(1, cfg.batch_size // cfg.gradient_accumulation_steps)
    on_gpu = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(Path(model_dir) / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=cfg.seed,
    )
    dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    trainer = SFTTrainer(
        model=init_model, args=args, train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(init_model),
    )
    output = trainer.train()
    trainer.save_model(str(model_dir))
    result = StageResult(name, str(model_dir), len(examples), steps, float(output.training_loss), False)
    (Path(model_dir) / MARKER).write_text(json.dumps({k: v for k, v in asdict(result).items() if k != "resumed"}))
    return result


def train_curriculum(
    student: str, stages: dict[int, Sequence[dict[str, Any]]], work_dir: str | Path, cfg: PaceConfig
) -> list[StageResult]:
    """Stages I -> II -> III in order, each initialised from the previous stage's output.

    A stage with no examples (say, no repair survived PURE in incremental mode) passes its input model on
    unchanged rather than failing the run: it is reported with 0 steps.
    """
    results = []
    init = student
    for stage in sorted(stages):
        if not stages[stage]:
            results.append(StageResult(f"stage{stage}", init, 0, 0, None, False))
            continue
        result = train_stage(f"stage{stage}", init, stages[stage], Path(work_dir) / f"stage{stage}", cfg)
        results.append(result)
        init = result.model_dir
    return results
