"""Tokenisation rules every backend shares, so a prompt is the same token ids whichever backend samples it.

The vLLM engine and an OpenAI-compatible server receive token ids built here, never text: then chat templating,
continuation of a partial answer (prompt ids + prefix ids) and scoring boundaries are exact and identical to
the HF backend's, and no server-side template can differ from the local one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def request_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, prefix: str | Sequence[int]) -> list[int]:
    """A generation request's input: the prompt's ids, then the partial answer's (GEAR), given as text or ids."""
    return prompt_ids(tokenizer, prompt) + (encode(tokenizer, prefix) if isinstance(prefix, str) else list(prefix))


@dataclass(frozen=True)
class PrefixPlan:
    """Token ids for PURE's scoring of one trajectory (``TeacherBackend.score_prefixes``), every string tokenised
    whole, as the model saw such text in training.

    Why not tokenise step by step: tokenizers merge across a step boundary. Qwen2's pre-tokenizer keeps
    punctuation with the newlines after it, so "=21.\n\n22-3" holds the one token ".\n\n"; scored as separate
    segments it becomes "." and "\n\n", a pair the model has never seen, and every step and answer probe
    scores as nonsense (measured on the demo teacher: genuine steps at perplexity 100 to 2000, PURE rejecting 96 %
    of verified samples, issue G). So the trajectory is tokenised once, a token belongs to the segment its first
    character is in, and each answer probe (lead + answer after segments < k) is tokenised with whatever part of
    a straddling token belongs to the prefix (usually the step's closing "."). This assumes a cut before a token
    does not change the tokens before it, which holds at the pre-token boundaries where steps end.
    """

    ids: list[int]  # the trajectory
    segment_bounds: list[int]  # K + 1 indices: segment j is ids[bounds[j]:bounds[j + 1]]
    cuts: list[int]  # per boundary k = 0..K: trajectory tokens kept before probe k
    probes: list[list[int]]  # per boundary: the rest of the prefix, the lead and the answer, tokenised as one string
    answer_starts: list[int]  # per boundary: index of the probe's first token holding answer characters


def prefix_plan(
    tokenizer: PreTrainedTokenizerBase, segments: Sequence[str], answer_lead: str, answer: str
) -> PrefixPlan:
    text = "".join(segments)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]
    starts = [0]
    for segment in segments:
        starts.append(starts[-1] + len(segment))
    segment_bounds = [sum(begin < start for begin, _ in spans) for start in starts[:-1]] + [len(ids)]
    cuts, probes, answer_starts = [], [], []
    for boundary in starts:
        cut = _cut(tokenizer, spans, text[:boundary] + answer_lead + answer, boundary)
        rest = text[spans[cut - 1][1] if cut else 0 : boundary] + answer_lead
        probe = tokenizer(rest + answer, add_special_tokens=False, return_offsets_mapping=True)
        cuts.append(cut)
        probes.append(list(probe["input_ids"]))
        answer_starts.append(next(i for i, (_, end) in enumerate(probe["offset_mapping"]) if end > len(rest)))
    return PrefixPlan(ids, segment_bounds, cuts, probes, answer_starts)


def _cut(tokenizer: PreTrainedTokenizerBase, spans: Sequence[tuple[int, int]], probed: str, boundary: int) -> int:
    """How many trajectory tokens to keep before the probe at ``boundary``: those that end before the pre-token
    of ``probed`` (prefix + lead + answer) holding the prefix's last character. Merges never cross a pre-token,
    so the tokens kept are the ones the whole probed string starts with, and the rest is tokenised with the
    probe (a closing "." joins the lead's blank line, as it would in the trajectory)."""
    edge = boundary
    pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer if hasattr(tokenizer, "backend_tokenizer") else None
    if boundary and pre_tokenizer is not None:
        edge = next(begin for _, (begin, end) in pre_tokenizer.pre_tokenize_str(probed) if end >= boundary)
    return sum(end <= edge for _, end in spans)


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
