"""Training memory against the memory plan, and training throughput, on a random-weight model of a real student's shape.

What it does: builds a random-weight model of a bundled shape (``heal_core/model_shapes.json``, e.g. Qwen2.5-0.5B;
``--layers`` shrinks it for a CPU), trains ``--steps`` optimizer steps of one sequence of each ``--lengths`` through
``heal_core.train.train_stage`` (the path every stage takes), with and without gradient checkpointing, and prints
one row per run: the peak memory measured, the plan's figure for the same settings
(``heal_core.memory_plan.plan``), their ratio, tokens/s over the steps after the first and, on a GPU, the model
FLOPs utilisation (6Ψ + 12·L·h·s FLOPs per token; peak from ``--peak-tflops``, 989 for an H100's or H200's dense
bf16).

Measured: on a GPU, ``torch.cuda.max_memory_allocated`` against the plan without its fixed overhead (the CUDA context
is not in the allocator's count); on a CPU, the process's peak RSS during the stage minus its RSS before it against
the CPU plan (fp32, no overhead). The stage loads its own copy of the model, so the CPU figure holds the weights
once more than a GPU's would count them apart; the plan is an upper bound either way.

    python bench/train_memory.py --shape Qwen/Qwen2.5-0.5B --lengths 8192 16384 --steps 4          # a GPU
    python bench/train_memory.py --shape Qwen/Qwen2.5-0.5B --layers 2 --lengths 512 1024 --steps 3  # this CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heal_core import memory_plan, progress
from heal_core.config import PaceConfig
from heal_core.testing import build_tokenizer
from heal_core.train import train_stage

GiB = 2**30


def random_model(shape: str, layers: int | None, out: Path) -> Path:
    """A random-weight model of ``shape``'s config (fewer layers when asked) with heal's tiny offline tokenizer:
    nothing is downloaded, and the vocabulary (the logits' size) is the real one."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    fields = dict(memory_plan._bundled()[shape])
    fields.pop("model_type", None)
    if layers:
        fields["num_hidden_layers"] = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**fields), dtype=torch.float32)
    model.save_pretrained(out)
    build_tokenizer(out)
    return out


def examples(tokenizer_dir: Path, length: int, count: int) -> list[dict]:
    """Prompt-completion rows whose completion runs past ``length`` tokens (TRL truncates to max_length)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    words = ["the", "answer", "is", "12", "because", "3", "times", "4", "is", "12", "and"]
    text, n = [], 0
    while n < length + 64:
        text.append(words[len(text) % len(words)])
        n = len(tokenizer(" ".join(text), add_special_tokens=False)["input_ids"]) if len(text) % 256 == 0 else n
    completion = " ".join(text)
    return [
        {
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "completion": [{"role": "assistant", "content": completion}],
        }
        for i in range(count)
    ]


class PeakRSS:
    """The process's largest resident set while the block runs, sampled every 5 ms (``ru_maxrss`` is the peak of
    the process's whole life, which the model's creation already set)."""

    def __enter__(self) -> Self:
        import psutil

        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.before = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def run(model: Path, length: int, checkpointing: bool, steps: int, peak_tflops: float, work: Path) -> dict:
    cfg = PaceConfig(
        batch_size=1,
        max_length=length,
        gradient_checkpointing=checkpointing,
        learning_rate=1e-5,
        warmup_ratio=0.0,
        seeds=[0],
    )
    gpus = torch.cuda.device_count()
    planned = memory_plan.plan(memory_plan.shape_of(str(model)), cfg, gpus, 0, str(model))
    rows = examples(model, length, steps)
    stamps: list[float] = []
    on_gpu = torch.cuda.is_available()
    torch.cuda.empty_cache() if on_gpu else None
    torch.cuda.reset_peak_memory_stats() if on_gpu else None
    before = torch.cuda.memory_allocated() if on_gpu else 0
    with PeakRSS() as host, progress.listen(lambda snap: stamps.append(time.perf_counter()) if snap.done else None):
        train_stage("bench", str(model), rows, work / f"{length}-{checkpointing}", cfg, 0, steps)
    peak = torch.cuda.max_memory_allocated() - before if on_gpu else host.peak - host.before
    plan_bytes = planned.total - planned.overhead
    tokens_per_s = length * (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    shape = memory_plan.shape_of(str(model))
    flops_per_token = 6 * shape.parameters + 12 * shape.layers * shape.hidden * length
    return {
        "length": length,
        "checkpointing": checkpointing,
        "device": "cuda" if on_gpu else "cpu",
        "peak_gib": round(peak / GiB, 2),
        "plan_gib": round(plan_bytes / GiB, 2),
        "peak_over_plan": round(peak / plan_bytes, 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(tokens_per_s * flops_per_token / (peak_tflops * 1e12), 4) if on_gpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="Qwen/Qwen2.5-0.5B")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape's (a CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--checkpointing",
        choices=["both", "on", "off"],
        default="both",
        help="one setting per call on a CPU: freed memory stays in the process, so each "
        "figure after a process's first reads low",
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    modes = {"both": (False, True), "on": (True,), "off": (False,)}
    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(args.shape, args.layers, Path(tmp) / "model")
        results = [
            run(model, length, checkpointing, args.steps, args.peak_tflops, Path(tmp))
            for length in args.lengths
            for checkpointing in modes[args.checkpointing]
        ]
    print("| tokens | checkpointing | device | peak GiB | plan GiB | peak / plan | tokens/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['length']} | {'on' if r['checkpointing'] else 'off'} | {r['device']} | {r['peak_gib']} | "
            f"{r['plan_gib']} | {r['peak_over_plan']} | {r['tokens_per_s']} "
            f"| {r['mfu'] if r['mfu'] is not None else '-'} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
