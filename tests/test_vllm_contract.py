"""Contract with the installed vLLM (no engine, no GPU): the exact SamplingParams, prompts, engine arguments,
``vllm serve`` flags and completions payloads heal builds are accepted as meant, and the output fields heal
reads exist and translate. An API drift fails here, loudly, instead of inside a GPU job.

Runs only where vLLM is importable (the GPU-worker image, or a separate virtualenv: see README, GPU workers);
skipped with the reason printed elsewhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from typing import Any

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # vLLM's argument parsing asks for a platform; no engine is ever built here
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
pytest.importorskip("vllm", reason="vLLM is not installed here: the vLLM contract runs in the GPU-worker environment")

from vllm import LLM, SamplingParams
from vllm.engine.arg_utils import EngineArgs
from vllm.inputs import TokensPrompt
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput

from heal_core.backends.openai import next_token_payload, sample_payload, score_payload
from heal_core.backends.vllm import (
    completion_generation,
    engine_kwargs,
    next_token_kwargs,
    prompt_positions,
    sampling_kwargs,
    scoring_kwargs,
    serve_command,
)
from heal_core.config import SamplingConfig, parse_config


def first(name: str, *modules: str) -> Any:
    """``name`` from the first of ``modules`` that has it: vLLM moves its server modules between releases."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"{name} is in none of {modules}")


CompletionRequest = first(
    "CompletionRequest", "vllm.entrypoints.openai.completion.protocol", "vllm.entrypoints.openai.protocol"
)
SAMPLING = SamplingConfig(n=8, temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=512, seed=11)
TEACHER = parse_config(
    {
        "teacher": {
            "backend": "vllm",
            "model": "Qwen/Qwen3-32B",
            "dtype": "bfloat16",
            "top_logprobs": 20,
            "vllm": {"tensor_parallel_size": 2, "data_parallel_size": 2, "max_model_len": 32768},
        }
    }
).teacher
SHAPING = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logprobs",
    "prompt_logprobs",
    "skip_special_tokens",
    "include_stop_str_in_output",
)


def test_sampling_params_take_every_field_as_given():
    kwargs = sampling_kwargs(SAMPLING, 8, 27, [151645, 151643], 20)
    params = SamplingParams(**kwargs)
    for field, value in kwargs.items():
        assert getattr(params, field) == value, field
    scoring = SamplingParams(**scoring_kwargs())
    assert (scoring.prompt_logprobs, scoring.logprobs, scoring.max_tokens, scoring.temperature) == (0, None, 1, 1.0)
    probe = SamplingParams(**next_token_kwargs(42))  # an ordinary request: it reads the prefix cache
    assert (probe.allowed_token_ids, probe.logprobs, probe.prompt_logprobs, probe.max_tokens) == ([42], 0, None, 1)
    assert not probe.skip_reading_prefix_cache


def test_token_prompt_and_engine_arguments(tiny_model_dirs):
    assert TokensPrompt(prompt_token_ids=[1, 2, 3])["prompt_token_ids"] == [1, 2, 3]
    kwargs = engine_kwargs(TEACHER, str(tiny_model_dirs["qwen2"]), cpu=True)
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(kwargs) <= fields, set(kwargs) - fields  # LLM(**kwargs) hands them to EngineArgs
    args = EngineArgs(**kwargs)
    assert (args.max_logprobs, args.logprobs_mode, args.generation_config) == (20, "raw_logprobs", "vllm")
    generate = inspect.signature(LLM.generate).parameters  # called as generate(prompts, params, use_tqdm=False)
    assert list(generate)[1:3] == ["prompts", "sampling_params"] and "use_tqdm" in generate


def test_vllm_serve_flags_name_engine_arguments():
    command, _ = serve_command(TEACHER, "/models/qwen3", "Qwen/Qwen3-32B", "0.0.0.0", 8000, "python", cpu=True)
    flags = {arg.removeprefix("--").removeprefix("no-").replace("-", "_") for arg in command if arg.startswith("--")}
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert flags - {"host", "port"} <= fields, flags - {"host", "port"} - fields


def test_vllm_serve_parses_our_flags():
    from vllm.platforms import current_platform

    if not current_platform.device_type:  # vLLM < 0.33 on a machine without a GPU
        pytest.skip("vLLM finds no device platform here, and its argument parser needs one")
    make_arg_parser = first(
        "make_arg_parser",
        "vllm.entrypoints.launchers.cli_args",
        "vllm.entrypoints.common.cli_args",
        "vllm.entrypoints.openai.cli_args",
    )
    FlexibleArgumentParser = first("FlexibleArgumentParser", "vllm.utils.argparse_utils", "vllm.utils")
    command, _ = serve_command(TEACHER, "/models/qwen3", "Qwen/Qwen3-32B", "0.0.0.0", 8000, "python", cpu=False)
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(command[3:])
    assert args.model == "/models/qwen3" and args.served_model_name == ["Qwen/Qwen3-32B"]
    assert (args.max_logprobs, args.logprobs_mode, args.generation_config) == (20, "raw_logprobs", "vllm")
    assert (args.tensor_parallel_size, args.data_parallel_size, args.max_model_len) == (2, 2, 32768)
    assert args.enable_prefix_caching is True and args.port == 8000 and args.dtype == "bfloat16"


def test_server_turns_our_payloads_into_the_engine_params():
    """A served request samples exactly as the in-process engine would; echo scoring asks for prompt log-probs."""
    payload = sample_payload("teacher", [1, 2, 3], 8, SAMPLING, 27, [151645], 20)
    request = CompletionRequest.model_validate(payload)
    assert set(payload) <= set(CompletionRequest.model_fields), set(payload) - set(CompletionRequest.model_fields)
    assert request.return_tokens_as_token_ids is True
    served = request.to_sampling_params(payload["max_tokens"])
    engine = SamplingParams(**sampling_kwargs(SAMPLING, 8, 27, [151645], 20))
    for field in SHAPING:
        assert getattr(served, field) == getattr(engine, field), field
    scored = CompletionRequest.model_validate(score_payload("teacher", [4, 5])).to_sampling_params(1)
    assert scored.prompt_logprobs == 1 and scored.temperature == 1.0
    probe = CompletionRequest.model_validate(next_token_payload("teacher", [[4, 5], [4, 6]], 9)).to_sampling_params(1)
    assert (probe.allowed_token_ids, probe.logprobs, probe.prompt_logprobs) == ([9], 0, None)


def test_outputs_translate():
    def lp(value: float, rank: int) -> Logprob:
        return Logprob(logprob=value, rank=rank, decoded_token=None)

    completion = CompletionOutput(
        index=0,
        text="",
        token_ids=[5, 2, 9],
        cumulative_logprob=None,
        finish_reason="stop",
        logprobs=[{5: lp(-0.1, 1), 7: lp(-2.5, 2)}, {2: lp(-0.3, 1), 4: lp(-1.5, 2)}, {9: lp(-0.2, 1)}],
    )
    generation = completion_generation(completion, 27, 0.7, stop_ids=[2], k=2, vocab_size=32, decode=str)
    assert generation.token_ids == [5, 2] and generation.finish_reason == "stop" and generation.seed == 27
    assert generation.entropy.shape == (2,) and np.all(generation.entropy > 0)
    output = RequestOutput(
        request_id="r",
        prompt=None,
        prompt_token_ids=[3, 4],
        outputs=[completion],
        finished=True,
        prompt_logprobs=[None, {4: lp(-0.7, 3)}],
    )
    assert prompt_positions(output) == [None, {4: -0.7}]
