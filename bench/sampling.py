"""Sampling cost of the HF backend (per-token entropy capture, one generator per row) vs bare batched
``model.generate`` (HF's own sampling from torch's global RNG).

Both sides run the same model object, prompts, n, sampling settings and rows per call (the backend's
``max_batch_sequences``, rows longest first). They cannot draw the same tokens (the backend seeds every row on its
own, ``heal_core/seeds.py``), so the two do the same work when every call runs the same number of decoding steps:
a call runs until its longest row stops, and with the default random model some row of every call runs to
``max_new_tokens`` (the script checks, or says it is not like for like). The ratio is then bare time / backend
time, i.e. decoding-step throughput. The
backend's time covers all it adds: chat templating, left padding, the entropy ``LogitsProcessor``, the per-row
draws, trimming and decoding. The bare side gets pre-tokenised prompts, left-pads them per call like the backend and
returns the raw output ids. Runs alternate between the two sides; the best of ``--repeats`` counts.

The default model is a random Qwen2 built locally (no download); its vocabulary is tiny, so the entropy
(O(rows x vocab) per step) weighs more against the model's compute than with a real teacher's vocabulary.

    python bench/sampling.py [--model PATH] [--prompts 8] [--n 8] [--max-new-tokens 128] [--device cpu|cuda]

Last line: the headline ratio, bare time / backend time for the same decoding steps (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from heal_core.backends.base import Request
from heal_core.backends.hf import HFBackend
from heal_core.config import SamplingConfig
from heal_core.testing import build_tiny_model

PROMPT = "Start with {a}. Add {b}, then multiply by {c}, then subtract {d}. What is the result?"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_generate(backend: HFBackend, rows: list[list[int]], sampling: SamplingConfig) -> list[list[int]]:
    """Plain ``model.generate`` over ``rows`` in calls of the backend's size; the raw output ids of each row."""
    config = GenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=backend.eos_ids,
        pad_token_id=backend.pad_id,
    )
    out: list[list[int]] = []
    torch.manual_seed(sampling.seed)
    with torch.inference_mode():
        for start in range(0, len(rows), backend.batch_rows):
            input_ids, attention_mask = backend._left_pad(rows[start : start + backend.batch_rows])
            new = backend.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
            out += new[:, input_ids.shape[1] :].cpu().tolist()
    return out


def trim(ids: list[int], eos: list[int]) -> list[int]:
    stop = next((t for t, tok in enumerate(ids) if tok in eos), None)
    return ids if stop is None else ids[: stop + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: a random Qwen2 built locally (see --hidden, --layers)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-batch-sequences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="smallest settings (CI): checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.prompts, args.n, args.max_new_tokens, args.repeats = 64, 2, 2, 2, 16, 1
        args.threads = 1  # a tiny model gains nothing from a second thread, and threads stall on a busy machine
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    model = args.model or str(
        build_tiny_model(tempfile.mkdtemp(), "qwen2", hidden_size=args.hidden, layers=args.layers)
    )
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    backend = HFBackend(model, dtype=dtype, device=args.device, max_batch_sequences=args.max_batch_sequences)
    sampling = SamplingConfig(
        n=args.n, temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=args.max_new_tokens, seed=0
    )
    prompts = [PROMPT.format(a=3 + i, b=7 * i % 50, c=2 + i % 7, d=i) for i in range(args.prompts)]
    requests = [Request(p, args.n, 1000 * i) for i, p in enumerate(prompts)]
    rows = sorted((backend._prompt_ids(p) for p in prompts for _ in range(args.n)), key=len, reverse=True)
    params = sum(p.numel() for p in backend.model.parameters())

    for _ in range(2):  # warm-up, untimed: the first generate() calls pay one-off set-up costs
        bare_generate(backend, rows, sampling)
        backend.generate(requests, sampling)
    times: dict[str, list[float]] = {"bare": [], "backend": []}
    for repeat in range(args.repeats):
        for side in ("bare", "backend") if repeat % 2 == 0 else ("backend", "bare"):
            sync(backend.device)
            start = time.perf_counter()
            if side == "bare":
                bare = bare_generate(backend, rows, sampling)
            else:
                ours = backend.generate(requests, sampling)
            sync(backend.device)
            times[side].append(time.perf_counter() - start)

    tokens = {
        "bare": sum(len(trim(ids, backend.eos_ids)) for ids in bare),  # kept, up to and with the stop token
        "backend": sum(len(g.token_ids) for per_prompt in ours for g in per_prompt),
    }
    longest = sorted((len(g.token_ids) for per_prompt in ours for g in per_prompt), reverse=True)
    calls = range(0, len(rows), backend.batch_rows)
    steps = {
        "bare": sum(max(len(ids) for ids in bare[c : c + backend.batch_rows]) for c in calls),
        "backend": sum(max(longest[c : c + backend.batch_rows]) for c in calls),
    }  # its calls: longest rows first
    if steps["bare"] != steps["backend"]:
        raise SystemExit(f"decoding steps differ (bare {steps['bare']}, backend {steps['backend']}): not like for like")

    print(
        f"model: {params / 1e6:.2f} M params, vocab {len(backend.tokenizer)}, {dtype} on {backend.device}"
        f" ({torch.get_num_threads()} threads); {args.prompts} prompts x n={args.n}, max_new_tokens="
        f"{args.max_new_tokens}; tokens kept: bare {tokens['bare']}, backend {tokens['backend']}; decoding steps "
        f"{steps['backend']} on both sides ({len(rows) * args.max_new_tokens} row-steps); best of {args.repeats}"
    )
    print()
    print("| side | best s | all runs s | tokens kept/s |")
    print("|---|---|---|---|")
    for side in ("bare", "backend"):
        best = min(times[side])
        print(
            f"| {'bare model.generate' if side == 'bare' else 'HFBackend.generate (entropy, row seeds)'} | "
            f"{best:.3f} | {', '.join(f'{t:.3f}' for t in times[side])} | {tokens[side] / best:,.0f} |"
        )
    print()
    print(f"backend/bare decoding-step throughput: {min(times['bare']) / min(times['backend']):.3f}")


if __name__ == "__main__":
    main()
