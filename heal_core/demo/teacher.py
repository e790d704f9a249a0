"""The bundled tiny teacher and student base of the embedded demo: splits, training, calibration.

The demo must show HEAL doing something real offline on a laptop, so the teacher needs a *ceiling*: it solves
short chains, fails long ones, and is helped by the gold answer in the prompt. A ~1M-parameter Qwen2 trained
from scratch on multi-step arithmetic has exactly that shape: one step is an error-prone sampled computation
(temperature 1.0), so the chance of a clean chain falls with the number of steps, and problems past its
reach get zero correct samples out of N.

``heal demo train-teacher`` (= ``python -m heal_core.demo.teacher``; seed 0, 2 threads, 57 minutes measured on a
shared 2-core CPU) trains the committed checkpoints; ``models/README.md`` records how, and what each calibration
candidate measured.
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
import yaml

from heal_core.config import HealConfig, parse_config
from heal_core.demo.arithmetic import Worked, make_problems
from heal_core.problems import Problem

Split = Literal["train", "generation", "eval"]

# Different seeds keep the splits apart; de-duplication by problem text (see ``split``) makes it certain.
SPLIT_SEEDS: dict[Split, int] = {"train": 101, "generation": 202, "eval": 303}
SPLIT_SIZES: dict[Split, int] = {"train": 40000, "generation": 96, "eval": 96}
# The teacher sees unaided prompts of at most UNAIDED_MAX_STEPS steps and hinted prompts of every length in
# TRAIN_STEPS. A tiny model generalises only a few steps past the chain lengths it saw (candidate C1 in
# models/README.md solved every trained length and none far beyond, hinted or not), so this split is what gives
# it a ceiling that a hint lifts. The generation (and eval) split starts where unaided training stopped being
# enough: unaided, the teacher leaves about a third of 8-12-step problems at zero correct of N; hinted, it has
# seen up to 11 steps. Measured in models/README.md; the train split is the same for any GENERATION_STEPS here
# (no generated problem text collides with a training one), so the committed command reproduces the teacher.
GENERATION_STEPS = (8, 12)
TRAIN_STEPS = (1, 11)
UNAIDED_MAX_STEPS = 7
VOCAB_SIZE = 400  # an upper bound: digit-free task text runs out of merges at ~325
OPERAND_TIERS, MAX_VALUE = (30,), 999
STUDENT_MAX_STEPS = 3  # the student base never sees a chain longer than this
MODELS_DIR = Path(__file__).parent / "models"


def demo_config() -> HealConfig:
    """The embedded default (``default.yaml``): the one source of the prompt templates and of N."""
    text = resources.files("heal_core.demo").joinpath("default.yaml").read_text(encoding="utf-8")
    return parse_config(yaml.safe_load(text), source="(embedded default)")


def split(name: Split, count: int | None = None) -> list[Worked]:
    """Problems of one split, deterministic, and disjoint from the others by problem text.

    ``generation`` is the anchor (what the pipeline samples); ``eval`` drops any text in ``generation``;
    ``train`` drops any text in either. So ``count`` is the number of candidates drawn, not always kept.
    """
    low, high = TRAIN_STEPS if name == "train" else GENERATION_STEPS
    drawn = make_problems(count or SPLIT_SIZES[name], SPLIT_SEEDS[name], low, high, OPERAND_TIERS, MAX_VALUE)
    taken = {w.problem.problem for other in _before(name) for w in split(other)}
    return [w for w in drawn if w.problem.problem not in taken]


def _before(name: Split) -> tuple[Split, ...]:
    return {"generation": (), "eval": ("generation",), "train": ("generation", "eval")}[name]


def generation_problems() -> list[Problem]:
    """What the HEAL pipeline samples in the embedded demo."""
    return [w.problem for w in split("generation")]


# ---- training -------------------------------------------------------------------------------------------


def _tokenizer_corpus(rows: Sequence[dict]) -> list[str]:
    """The training rows' text (role names included, as the chat template writes them) with the digits
    removed, so no merge ever joins digits and every number is spelled one digit per token: a tiny model
    learns column arithmetic on digits, not a lookup table over number tokens."""
    texts = [f"{m['role']}\n{m['content']}" for row in rows for m in (*row["prompt"], *row["completion"])]
    return [re.sub(r"\d", "", t) for t in texts]


def _row(w: Worked, cfg: HealConfig, hinted: bool) -> dict[str, list[dict[str, str]]]:
    """A TRL conversational prompt-completion row, prompted exactly as the pipeline will prompt."""
    if hinted:
        prompt = cfg.hints.template.format(problem=w.problem.problem, answer=w.problem.answer)
    else:
        prompt = cfg.teacher.prompt_template.format(problem=w.problem.problem)
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": w.solution}]}


def _sft(model_dir: Path, rows: list[dict], steps: int, lr: float, batch_size: int, seed: int) -> float:
    """TRL SFT from the random init in ``model_dir`` back into it; returns the final-epoch training loss.

    A from-scratch model needs a far higher learning rate than PACE's fine-tuning default, with warmup and
    cosine decay. Nothing but the model and tokenizer is saved (no optimizer state, no checkpoints).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(model_dir / "_trainer"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        max_length=512,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )
    trainer = SFTTrainer(
        model=str(model_dir), args=args, train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    loss = float(trainer.train().training_loss)
    trainer.save_model(str(model_dir))
    shutil.rmtree(model_dir / "_trainer", ignore_errors=True)
    for leftover in ("README.md", "training_args.bin"):  # TRL's model card and pickled args
        (model_dir / leftover).unlink(missing_ok=True)
    return loss


def _teacher_rows(problems: Sequence[Worked], cfg: HealConfig) -> list[dict]:
    """Every other problem hinted, and every problem longer than ``UNAIDED_MAX_STEPS``: the teacher learns both
    prompt forms from one pass over the split, but the long chains only with the answer in the prompt."""
    return [_row(w, cfg, hinted=i % 2 == 1 or w.steps > UNAIDED_MAX_STEPS) for i, w in enumerate(problems)]


def train_teacher(
    out_dir: str | Path, seed: int = 0, steps: int = 3000, examples: int = SPLIT_SIZES["train"],
    hidden_size: int = 128, layers: int = 6, lr: float = 1e-3, batch_size: int = 32,
) -> Path:
    """Tokenizer + random Qwen2 + SFT on unaided and hinted prompts; returns the model directory."""
    from heal_core.testing import build_tiny_model, build_tokenizer

    out = Path(out_dir)
    cfg = demo_config()
    rows = _teacher_rows(split("train", examples), cfg)
    tokenizer = build_tokenizer(out, _tokenizer_corpus(rows), vocab_size=VOCAB_SIZE)
    build_tiny_model(out, "qwen2", hidden_size, layers, seed, tokenizer)
    _sft(out, rows, steps, lr, batch_size, seed)
    return out


def train_student_base(
    out_dir: str | Path, teacher_dir: str | Path, seed: int = 0, steps: int = 400, examples: int = 6000,
    hidden_size: int = 96, layers: int = 4, lr: float = 1e-3, batch_size: int = 32,
) -> Path:
    """The student's starting checkpoint: the teacher's tokenizer, a smaller Qwen2, unaided prompts only,
    and only chains of at most ``STUDENT_MAX_STEPS``, so the long range is new to it and HEAL has room."""
    from transformers import AutoTokenizer

    from heal_core.testing import build_tiny_model

    out = Path(out_dir)
    cfg = demo_config()
    easy = [w for w in split("train", examples) if w.steps <= STUDENT_MAX_STEPS]
    build_tiny_model(out, "qwen2", hidden_size, layers, seed, AutoTokenizer.from_pretrained(teacher_dir))
    _sft(out, [_row(w, cfg, hinted=False) for w in easy], steps, lr, batch_size, seed)
    return out


# ---- calibration ----------------------------------------------------------------------------------------


def pass_rates(model_dir: str | Path, problems: Sequence[Worked], hinted: bool, n: int | None = None) -> list[float]:
    """Share of ``n`` samples (default: the demo's N) with a verified answer, per problem, sampled exactly as
    the pipeline samples (``HFBackend`` with ``teacher.sampling``, templates from the embedded default)."""
    from heal_core.backends.hf import HFBackend
    from heal_core.verify import check_many

    cfg = demo_config()
    sampling = cfg.teacher.sampling if n is None else cfg.teacher.sampling.model_copy(update={"n": n})
    backend = HFBackend(str(model_dir), "float32", "cpu", cfg.teacher.max_batch_sequences)
    prompts = [_row(w, cfg, hinted)["prompt"][0]["content"] for w in problems]
    samples = backend.sample(prompts, sampling.n, sampling)
    verdicts = iter(check_many([(g.text, w.problem.answer) for w, gens in zip(problems, samples) for g in gens]))
    return [sum(next(verdicts).correct for _ in gens) / len(gens) for gens in samples]


def calibration_table(model_dir: str | Path, problems: Sequence[Worked]) -> str:
    """Markdown: per chain length, mean pass rate unaided and hinted and the share of problems with zero
    correct unaided samples; the last row is the whole split."""
    unaided, hinted = pass_rates(model_dir, problems, False), pass_rates(model_dir, problems, True)
    groups: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(problems)), key=lambda i: problems[i].steps):
        groups[f"{problems[i].steps} steps"].append(i)
    for i in sorted(range(len(problems)), key=lambda i: problems[i].max_operand):
        groups[f"operands <= {problems[i].max_operand}"].append(i)
    groups["all"] = list(range(len(problems)))
    lines = ["| problems | count | pass unaided | pass hinted | zero correct unaided | solved >= 0.5 |", "|---|---|---|---|---|---|"]
    for key, idx in groups.items():
        u, h = [unaided[i] for i in idx], [hinted[i] for i in idx]
        lines.append(
            f"| {key} | {len(idx)} | {sum(u) / len(u):.2f} | {sum(h) / len(h):.2f} "
            f"| {sum(x == 0 for x in u) / len(u):.0%} | {sum(x >= 0.5 for x in u) / len(u):.0%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps on a few examples: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)  # the laptop this demo targets; also what the timings in models/README.md assume
    quick = {"steps": 4, "examples": 32} if args.quick else {}
    start = time.time()
    teacher = train_teacher(args.out / "teacher", args.seed, **quick)
    student = train_student_base(args.out / "student", teacher, args.seed, **quick)
    print(f"trained in {time.time() - start:.0f} s")
    problems, held_out = (split("generation")[:2], split("eval")[:2]) if args.quick else (split("generation"), split("eval"))
    print("teacher on the generation split:\n" + calibration_table(teacher, problems))
    student_eval = pass_rates(student, held_out, hinted=False)
    print(f"student base pass@1 on eval: {sum(student_eval) / len(student_eval):.3f}")


if __name__ == "__main__":
    main()
