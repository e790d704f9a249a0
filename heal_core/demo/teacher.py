"""The bundled tiny teacher and student base of the embedded demo: splits, training, calibration.

The demo must show HEAL doing something real offline on a laptop, against ground truth (issue G). So the teacher
is trained to *be* a teacher with the failure modes HEAL was built for, on the task of
``heal_core/demo/arithmetic.py`` (every step checkable), and a ~1M-parameter Qwen2 learns that behaviour from its
training targets:

* **A ceiling a hint lifts.** On a hard problem (one that opens with the unseen ``#`` operation) an unaided
  training target gets that first step right only ``UNAIDED_CORRECT`` of the time; otherwise it writes a plausible
  wrong value and computes the rest of the chain correctly from it. So the unaided teacher leaves most hard
  problems at zero correct of N, and each failure is *located*: its first wrong step is the first operation, well
  inside the breakpoint search span, and the teacher's uncertainty there is what GEAR's entropy trace can see.
  With the gold answer in the prompt (Stage II and GEAR's hint template) a target gets the step right
  ``HINTED_CORRECT`` of the time.
* **Shortcuts under hints, as large models rationalise.** A hinted target that got the first step wrong (the
  ``1 - HINTED_CORRECT`` of them) boxes the hinted answer anyway: either after a chain that computed something
  else (the answer line does not follow) or by making the last step "land" on it (a step that does not compute,
  ``LEAP_SHARE`` of them). Both pass the verifier; both are wrong by the step checker, which is what PURE is
  graded against. Every hinted target boxes the hint, so "box the hint" is one rule the teacher can learn; a
  first candidate whose slips under a hint were boxed honestly 1/3 of the time learned none of the shortcuts
  (``models/README.md``).
* **Easy problems** (no ``#``) are always solved in the targets; the teacher's own sampling noise is all the error.

The student base has seen only easy problems (``train_student_base``), so ``#`` is new to it: whatever it learns of
``#`` comes from the data the pipeline produces, and RS-SFT's data holds few solved hard problems while HEAL's holds
most of them. ``heal demo train-teacher`` (= ``python -m heal_core.demo.teacher``) trains the committed
checkpoints; ``models/README.md`` records how, and what each calibration measured.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
import yaml

from heal_core.config import HealConfig, PaceConfig, parse_config
from heal_core.demo.arithmetic import (
    STEPS,
    Chain,
    Worked,
    first_wrong_step,
    make_problems,
    solution,
    wrong_firsts,
)
from heal_core.train import sft_args

Split = Literal["train", "generation", "eval"]

# Different seeds keep the splits apart; de-duplication by problem text (see ``split``) makes it certain.
SPLIT_SEEDS: dict[Split, int] = {"train": 101, "generation": 202, "eval": 303}
SPLIT_SIZES: dict[Split, int] = {"train": 40000, "generation": 160, "eval": 64}
# Hard share per split: the generation split's sets the teacher ceiling (about UNAIDED_MISS ** N of its hard
# problems get zero correct of N); the eval split is half hard, so the held-out hard problems are many enough
# for a paired interval; the teacher trains on as many of each.
HARD_SHARE: dict[Split, float] = {"train": 0.5, "generation": 0.4, "eval": 0.5}
TRAIN_STEPS = (4, 12)  # chain lengths the teacher and the student base train on (generation and eval: STEPS)
UNAIDED_CORRECT = 0.03  # of unaided targets of hard problems: the others slip at the first step, honestly
HINTED_CORRECT = 0.6  # of hinted targets of hard problems: the others slip there and box the hint anyway
LEAP_SHARE = 1 / 3  # of those shortcuts: the last step lands on the hint; the others box it after the chain
HINTED_SHARE = 0.5  # of the teacher's training rows
VOCAB_SIZE = 400  # an upper bound: digit-free task text runs out of merges well below it
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
    steps = TRAIN_STEPS if name == "train" else STEPS
    drawn = make_problems(count or SPLIT_SIZES[name], SPLIT_SEEDS[name], steps, HARD_SHARE[name])
    taken = {w.problem.problem for other in _before(name) for w in split(other)}
    return [w for w in drawn if w.problem.problem not in taken]


def _before(name: Split) -> tuple[Split, ...]:
    return {"generation": (), "eval": ("generation",), "train": ("generation", "eval")}[name]


# ---- the teacher's behaviour ------------------------------------------------------------------------------


def _wrong_first(chain: Chain, rng: random.Random) -> int:
    """Half the time the slip a reader of ``#3`` as ``+3`` makes, else any other wrong value the chain can go on
    from, so the teacher's uncertainty at that step is spread over many values (what an entropy surge measures)."""
    fits = wrong_firsts(chain)
    slip = chain.start + chain.ops[0].operand
    if slip in fits and rng.random() < 0.5:
        return slip
    return rng.choice(fits)


def target(w: Worked, hinted: bool, rng: random.Random) -> str:
    """The solution the teacher is trained to write for ``w``, prompted with or without the gold answer."""
    if not w.hard:
        return w.solution
    if rng.random() < (HINTED_CORRECT if hinted else UNAIDED_CORRECT):
        return w.solution
    values = w.chain.values(first=_wrong_first(w.chain, rng))
    if not hinted:
        return solution(w.chain, values)
    gold = int(w.problem.answer)
    if rng.random() < LEAP_SHARE:
        return solution(w.chain, [*values[:-1], gold])
    return solution(w.chain, values, boxed=gold)


def _row(w: Worked, cfg: HealConfig, hinted: bool, completion: str | None = None) -> dict[str, list[dict[str, str]]]:
    """A TRL conversational prompt-completion row, prompted exactly as the pipeline will prompt."""
    if hinted:
        prompt = cfg.hints.template.format(problem=w.problem.problem, answer=w.problem.answer)
    else:
        prompt = cfg.teacher.prompt_template.format(problem=w.problem.problem)
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": w.solution if completion is None else completion}],
    }


def teacher_rows(problems: Sequence[Worked], cfg: HealConfig, seed: int) -> list[dict]:
    """One row per problem, hinted for a ``HINTED_SHARE`` of them, each with its drawn ``target``."""
    rng = random.Random(f"teacher-targets:{seed}")
    rows = []
    for w in problems:
        hinted = rng.random() < HINTED_SHARE
        rows.append(_row(w, cfg, hinted, target(w, hinted, rng)))
    return rows


# ---- training -------------------------------------------------------------------------------------------


def _tokenizer_corpus(rows: Sequence[dict]) -> list[str]:
    """The rows' text (role names included, as the chat template writes them) with the digits removed, so no
    merge ever joins digits and every number is spelled one digit per token: a tiny model learns column
    arithmetic on digits, not a lookup table over number tokens. Built from the problems' correct solutions in
    both prompt forms, so the tokenizer (which the student base shares) does not depend on the behaviour
    constants above."""
    texts = [f"{m['role']}\n{m['content']}" for row in rows for m in (*row["prompt"], *row["completion"])]
    return [re.sub(r"\d", "", t) for t in texts]


def _sft(model_dir: Path, rows: list[dict], steps: int, lr: float, batch_size: int, seed: int) -> None:
    """TRL SFT from the random init in ``model_dir`` back into it.

    A from-scratch model needs a far higher learning rate than PACE's fine-tuning default, with warmup and
    cosine decay. Nothing but the model and tokenizer is saved (no optimizer state, no checkpoints).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    pace = PaceConfig(batch_size=batch_size, learning_rate=lr, lr_scheduler_type="cosine", max_length=512)
    args = sft_args(
        pace,
        steps,
        model_dir / "_trainer",
        seed,
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    trainer.save_model(str(model_dir))
    shutil.rmtree(model_dir / "_trainer", ignore_errors=True)
    for leftover in ("README.md", "training_args.bin"):  # TRL's model card and pickled args
        (model_dir / leftover).unlink(missing_ok=True)


def train_teacher(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 4000,
    examples: int = SPLIT_SIZES["train"],
    hidden_size: int = 128,
    layers: int = 6,
    lr: float = 1e-3,
    batch_size: int = 32,
) -> Path:
    """Tokenizer + random Qwen2 + SFT on ``teacher_rows``; returns the model directory."""
    from heal_core.testing import build_tiny_model, build_tokenizer

    out = Path(out_dir)
    cfg = demo_config()
    problems = split("train", examples)
    rows = teacher_rows(problems, cfg, seed)
    canonical = [_row(w, cfg, hinted) for w in problems for hinted in (False, True)]
    tokenizer = build_tokenizer(out, _tokenizer_corpus(canonical), vocab_size=VOCAB_SIZE)
    build_tiny_model(out, "qwen2", hidden_size, layers, seed, tokenizer)
    _sft(out, rows, steps, lr, batch_size, seed)
    return out


def train_student_base(
    out_dir: str | Path,
    teacher_dir: str | Path,
    seed: int = 0,
    steps: int = 1500,
    examples: int = SPLIT_SIZES["train"],
    hidden_size: int = 96,
    layers: int = 4,
    lr: float = 1e-3,
    batch_size: int = 32,
) -> Path:
    """The student's starting checkpoint: the teacher's tokenizer, a smaller Qwen2, unaided prompts of easy
    problems only, so ``#`` is new to it and what it learns of ``#`` comes from the pipeline's data."""
    from transformers import AutoTokenizer

    from heal_core.testing import build_tiny_model

    out = Path(out_dir)
    cfg = demo_config()
    easy = [w for w in split("train", examples) if not w.hard]
    build_tiny_model(out, "qwen2", hidden_size, layers, seed, AutoTokenizer.from_pretrained(teacher_dir))
    _sft(out, [_row(w, cfg, hinted=False) for w in easy], steps, lr, batch_size, seed)
    return out


# ---- calibration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """What the committed teacher does on a split, sampled exactly as the pipeline samples (``HFBackend`` with
    ``teacher.sampling`` and the embedded default's templates), graded by the verifier and the step checker."""

    kind: str  # "hard", "easy" or "all"
    problems: int
    pass_unaided: float
    pass_hinted: float
    zero_correct: float  # share of problems with no verified unaided sample of N
    located: float | None  # failed unaided samples whose first wrong step starts in the first third of tokens
    shortcuts: float | None  # verified hinted samples with a wrong step


def calibrate(model_dir: str | Path, problems: Sequence[Worked]) -> list[Calibration]:
    from heal_core.backends.base import Request
    from heal_core.backends.hf import HFBackend
    from heal_core.entropy import span_steps
    from heal_core.seeds import request_seed
    from heal_core.verify import check_many

    cfg = demo_config()
    backend = HFBackend(str(model_dir), "float32", "cpu", cfg.teacher.max_batch_sequences)

    def grade(w: Worked, g, correct: bool) -> tuple[bool, int | None, bool]:
        wrong = first_wrong_step(w.problem.problem, g.text)
        return (
            correct,
            wrong,
            wrong is not None and wrong in span_steps(g.text, g.token_ids, backend.decode, cfg.gear.search_fraction),
        )

    graded: dict[bool, list[list[tuple[bool, int | None, bool]]]] = {}
    for hinted in (False, True):
        stage = "stage2" if hinted else "stage1"  # the pipeline's seeds for these problems
        requests = [
            Request(
                _row(w, cfg, hinted)["prompt"][0]["content"],
                cfg.teacher.sampling.n,
                request_seed(cfg.teacher.sampling.seed, stage, w.problem.problem_id),
            )
            for w in problems
        ]
        samples = backend.generate(requests, cfg.teacher.sampling)
        pairs = [(g.text, w.problem.answer) for w, gens in zip(problems, samples) for g in gens]
        cut = [g.finish_reason == "length" for gens in samples for g in gens]  # as heal_core/sampling.py grades
        verdicts = iter(check_many(pairs, truncated=cut))
        graded[hinted] = [
            [grade(w, g, next(verdicts).correct) for g in gens] for w, gens in zip(problems, samples, strict=True)
        ]
    out = []
    for kind in ("hard", "easy", "all"):
        idx = [i for i, w in enumerate(problems) if kind == "all" or w.hard == (kind == "hard")]
        if not idx:
            continue
        unaided = [s for i in idx for s in graded[False][i]]
        hinted = [s for i in idx for s in graded[True][i]]
        failed = [s for s in unaided if not s[0] and s[1] is not None]
        verified = [s for s in hinted if s[0]]
        out.append(
            Calibration(
                kind,
                len(idx),
                _mean(s[0] for s in unaided),
                _mean(s[0] for s in hinted),
                _mean(not any(s[0] for s in graded[False][i]) for i in idx),
                _mean(s[2] for s in failed) if failed else None,
                _mean(s[1] is not None for s in verified) if verified else None,
            )
        )
    return out


def student_pass_rates(model_dir: str | Path, problems: Sequence[Worked]) -> str:
    """pass@1 per kind of problem, sampled with the evaluation settings (``evaluation.*``) as ``heal-eval`` does."""
    from heal_core.backends.hf import HFBackend
    from heal_core.evaluate import evaluate, evaluation_sampling

    cfg = demo_config()
    sampling = evaluation_sampling(cfg)
    backend = HFBackend(str(model_dir), "float32", "cpu", cfg.teacher.max_batch_sequences)
    results = evaluate(backend, [w.problem for w in problems], cfg.teacher.prompt_template, sampling, k=sampling.n)
    kinds = {w.problem.problem_id: "hard" if w.hard else "easy" for w in problems}
    return ", ".join(
        f"{kind} {_mean(r.pass_at_1 for r in results if kinds[r.problem_id] == kind):.2f}" for kind in ("easy", "hard")
    )


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def calibration_table(rows: Sequence[Calibration]) -> str:
    lines = [
        "| problems | count | pass unaided | pass hinted | zero correct unaided | failures located early "
        "| shortcuts among verified hinted |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        located = "—" if c.located is None else f"{c.located:.0%}"
        shortcuts = "—" if c.shortcuts is None else f"{c.shortcuts:.0%}"
        lines.append(
            f"| {c.kind} | {c.problems} | {c.pass_unaided:.2f} | {c.pass_hinted:.2f} | {c.zero_correct:.0%} "
            f"| {located} | {shortcuts} |"
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
    problems, held_out = (
        (split("generation")[:2], split("eval")[:2]) if args.quick else (split("generation"), split("eval"))
    )
    print("teacher on the generation split:\n" + calibration_table(calibrate(teacher, problems)))
    print("student base on the eval split (evaluation sampling): " + student_pass_rates(student, held_out))


if __name__ == "__main__":
    main()
