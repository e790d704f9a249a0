"""Training throughput: TRL SFT tokens/s in heal's PACE stage runner vs a plain SFTTrainer on the same data.

Both sides fine-tune the same student on the same prompt-completion rows (the demo task's worked
solutions, in TRL's conversational format) for the same number of optimizer steps with the same settings:
both use ``heal_core.train.sft_args`` (TRL's defaults would differ, e.g. gradient checkpointing on); the plain
side calls ``SFTTrainer(...).train()`` and ``save_model`` itself. Each run loads the model from disk and writes a
fresh output
directory. Runs alternate between the sides; the best of ``--repeats`` counts.

Tokens = the non-padding tokens the trainer fed the model (TRL's ``num_tokens``). Two rates: over the
``train()`` call alone (timed by wrapping ``SFTTrainer.train``, the same on both sides), and over the whole
call, set-up (model and tokenizer load, dataset tokenisation) and save included.

    python bench/training.py [--model PATH] [--examples 256] [--batch-size 8] [--device cpu|cuda] [--quick]

Last line: the headline ratio, train_stage tokens/s divided by plain SFTTrainer tokens/s (whole call).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from heal_core.config import PaceConfig
from heal_core.demo import bundled_model
from heal_core.demo.teacher import split
from heal_core.train import sft_args, train_stage

TRAIN_CALLS: list[tuple[float, float]] = []  # (seconds in SFTTrainer.train, tokens it reports), per call


def instrument_train() -> None:
    """Time every ``SFTTrainer.train`` call and record the tokens it saw, whoever makes the call."""
    from trl import SFTTrainer

    original = SFTTrainer.train

    def train(self, *args, **kwargs):
        start = time.perf_counter()
        output = original(self, *args, **kwargs)
        seconds = time.perf_counter() - start
        tokens = max((float(e.get("num_tokens", 0)) for e in self.state.log_history), default=0.0)
        TRAIN_CALLS.append((seconds, tokens))
        return output

    SFTTrainer.train = train


def plain_sft(model: str, examples: list[dict], out: Path, cfg: PaceConfig, steps: int, seed: int) -> None:
    """What a user would write with TRL alone, with train_stage's trainer arguments."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg, steps, out / "checkpoints", seed),
        train_dataset=Dataset.from_list(examples),
        processing_class=AutoTokenizer.from_pretrained(model),
    )
    trainer.train()
    trainer.save_model(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(bundled_model("student")), help="default: the bundled demo student")
    parser.add_argument("--examples", type=int, default=256, help="one epoch of these")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="smallest settings (CI): checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.batch_size, args.repeats, args.threads = 8, 4, 1, 1
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    instrument_train()

    examples = [
        {
            "prompt": [{"role": "user", "content": w.problem.problem}],
            "completion": [{"role": "assistant", "content": w.solution}],
        }
        for w in split("train", args.examples)
    ][: args.examples]
    cfg = PaceConfig(epochs=1, batch_size=args.batch_size, learning_rate=1e-4)
    seed = cfg.seeds[0]
    steps = -(-len(examples) // cfg.batch_size)
    times: dict[str, list[tuple[float, float, float]]] = {"plain": [], "heal": []}  # (total s, train s, tokens)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.quick:  # warm-up, untimed: the first training in a process pays one-off set-up costs
            plain_sft(args.model, examples[: cfg.batch_size], Path(tmp) / "warm-up", cfg, 1, seed)
        for repeat in range(args.repeats):
            for side in ("plain", "heal") if repeat % 2 == 0 else ("heal", "plain"):
                out = Path(tmp) / f"{side}-{repeat}"
                start = time.perf_counter()
                if side == "heal":
                    result = train_stage("stage1", args.model, examples, out, cfg, seed)
                    assert result.steps == steps, (result.steps, steps)
                else:
                    plain_sft(args.model, examples, out, cfg, steps, seed)
                total = time.perf_counter() - start
                train_s, tokens = TRAIN_CALLS[-1]
                times[side].append((total, train_s, tokens))

    tokens = times["heal"][0][2]
    if any(t != tokens for runs in times.values() for _, _, t in runs):
        raise SystemExit(f"the sides saw different token counts: {times}")
    print(
        f"model: {args.model}; {len(examples)} examples, batch {cfg.batch_size}, {steps} steps, "
        f"{tokens:,.0f} tokens; {torch.get_num_threads()} threads; best of {args.repeats}"
    )
    print()
    print("| runner | whole call s | train() s | tokens/s, whole call | tokens/s, train() |")
    print("|---|---|---|---|---|")
    best = {}
    for side, label in (("plain", "plain SFTTrainer"), ("heal", "heal_core.train.train_stage")):
        total = min(t for t, _, _ in times[side])
        train_s = min(t for _, t, _ in times[side])
        best[side] = (total, train_s)
        print(f"| {label} | {total:.2f} | {train_s:.2f} | {tokens / total:,.0f} | {tokens / train_s:,.0f} |")
    print()
    print(
        f"train_stage/plain tokens/s: {best['plain'][0] / best['heal'][0]:.3f} "
        f"(train() alone: {best['plain'][1] / best['heal'][1]:.3f})"
    )


if __name__ == "__main__":
    main()
