"""Tokenisation rules every backend shares, so a prompt is the same token ids whichever backend samples it.

The vLLM engine and an OpenAI-compatible server receive token ids built here, never text: then chat templating,
continuation of a partial answer (prompt ids + prefix ids) and scoring boundaries are exact and identical to
the HF backend's, and no server-side template can differ from the local one.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Text inside an answer: no BOS or other special tokens added."""
    return tokenizer.encode(text, add_special_tokens=False)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Chat-templated user turn opening the assistant's; raw text (with the tokenizer's BOS) without a template."""
    if not tokenizer.chat_template:
        return tokenizer.encode(prompt)
    messages = [{"role": "user", "content": prompt}]
    return encode(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def decode(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    return tokenizer.decode(list(token_ids), skip_special_tokens=True)


def stop_token_ids(model: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The checkpoint's stop tokens (chat models often list end-of-turn and end-of-text) plus the tokenizer's.

    Read from the checkpoint's generation config as transformers would fill ``model.generation_config`` (from
    generation_config.json, else from config.json), because vLLM with ``generation_config="vllm"`` and a
    remote server know only the tokenizer's EOS: without these ids a Qwen teacher would run past <|im_end|>.
    """
    try:
        config = GenerationConfig.from_pretrained(model)
    except OSError:
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model))
    configured = config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in [*ids, tokenizer.eos_token_id] if i is not None))


def vocab_size(model: str) -> int:
    """Rows of the model's output layer (can exceed the tokenizer's length): the V of the top-k entropy bounds."""
    return int(AutoConfig.from_pretrained(model).get_text_config().vocab_size)


def trim_at_stop(token_ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token, and whether there was one (finish reason stop)."""
    stop = next((t for t, tok in enumerate(token_ids) if tok in stop_ids), None)
    return (list(token_ids), False) if stop is None else (list(token_ids[: stop + 1]), True)
