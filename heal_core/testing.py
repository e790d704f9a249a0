"""Tiny random-weight models and a locally trained tokenizer, built offline in well under a second.

Tests and the demo need a real causal LM with a chat template, but no hub access: this builds a byte-level
BPE tokenizer on a synthetic math corpus and a randomly initialised Llama or Qwen2 on top of it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML. Assistant content sits in {% generation %} so TRL's assistant_only_loss can mask it, and a final
# assistant message left open by continue_final_message gets no <|im_end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages %}{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}{%- generation %}{{- message['content'] }}"
    "{%- if not (loop.last and continue_final_message) %}{{- '<|im_end|>' }}{%- endif %}{%- endgeneration %}"
    "{%- if not (loop.last and continue_final_message) %}{{- '\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Qwen2's pre-tokenizer split (one digit per piece). AutoTokenizer rebuilds a qwen2 model's tokenizer as
# Qwen2Tokenizer with this split whatever tokenizer.json says, so using it here keeps every reload identical.
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

_ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def math_corpus(n_problems: int = 1500, seed: int = 0) -> Iterator[str]:
    """Deterministic arithmetic word problems with blank-line separated steps and a boxed answer."""
    rng = random.Random(seed)
    names, items = ["Ann", "Ben", "Cara", "Dev", "Eli"], ["apples", "books", "coins", "marbles", "pens"]
    for _ in range(n_problems):
        who, what = rng.choice(names), rng.choice(items)
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        yield f"{who} has {a} {what} and buys {b} more, then gives away a {c}th of them. How many are left?"
        total, given = a + b, (a + b) / c
        yield f"First, {who} has {a} + {b} = {total} {what}.\n\nNext, {total} / {c} = {given:.2f} are given away."
        yield f"So {total} - {given:.2f} = {total - given:.2f}.\n\nThe final answer is \\boxed{{{total - given:.2f}}}."
        product = a * c
        yield f"Compute {a} \\times {c} - {b}.\n\n{a} \\times {c} = {product}, and {product} - {b} = {product - b}."
        yield f"\\boxed{{{product - b}}}"


def build_tokenizer(
    out_dir: str | Path, corpus: Iterable[str] | None = None, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (no UNK: every string is encodable) with ChatML specials and save it to ``out_dir``."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else math_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        model_max_length=2048,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(
    out_dir: str | Path,
    arch: Literal["llama", "qwen2"] = "qwen2",
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """Save a random-init causal LM (weights fixed by ``seed``) and its tokenizer to ``out_dir``; return the path."""
    out = Path(out_dir)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(out)
    config_cls, model_cls = _ARCHS[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(str(out))
    return out
