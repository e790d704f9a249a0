"""Pure translation for the vLLM and OpenAI backends: top-k entropy bounds against exact entropy on synthetic
distributions, log-prob structures -> arrays, request payloads and engine settings (no vLLM, no server)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from heal_core.backends import logprobs, openai, vllm
from heal_core.config import ConfigError, SamplingConfig, TeacherConfig, parse_config

V = 4096


def distributions(kind: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Logits [rows, V]: Gaussian at three peakednesses, a Zipf tail (real LMs), a few-way fork in a flat sea."""
    if kind.startswith("gauss"):
        return rng.standard_normal((rows, V)) * float(kind[5:])
    if kind == "zipf":
        ranks = np.argsort(rng.random((rows, V)), axis=1) + 1
        return -1.1 * np.log(ranks)
    logits = rng.standard_normal((rows, V)) * 0.5
    logits[:, :3] += 9.0  # a fork between three likely tokens: the breakpoint shape
    return logits


def log_softmax(z: np.ndarray) -> np.ndarray:
    return z - np.logaddexp.reduce(z, axis=1, keepdims=True)


def exact_entropy(z: np.ndarray, temperature: float) -> np.ndarray:
    lp = log_softmax(z / temperature)
    return -(np.exp(lp) * lp).sum(1)


@pytest.mark.parametrize("kind", ["gauss1", "gauss3", "gauss5", "zipf", "fork"])
@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.4])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_topk_bounds_hold_on_synthetic_distributions(kind, temperature, k):
    """Bounds from the top-k log-probs at T = 1 bracket the exact entropy of softmax(z / T), at every position."""
    z = distributions(kind, 64, np.random.default_rng(k))
    top = -np.sort(-log_softmax(z), axis=1)[:, :k]
    lower, upper = logprobs.topk_entropy_bounds(top, temperature, V)
    truth = exact_entropy(z, temperature)
    assert np.all(lower <= truth + 1e-9), float(np.max(lower - truth))
    assert np.all(truth <= upper + 1e-9), float(np.max(truth - upper))


def test_bound_is_tight_where_the_teacher_is_confident():
    """The stored value (the lower bound) is within 0.01 nats where the top-20 hold >= 98 % of the mass, and the
    gap to the upper bound shrinks with the tail mass."""
    z = distributions("gauss5", 256, np.random.default_rng(0))
    top = -np.sort(-log_softmax(z), axis=1)[:, :20]
    lower, upper = logprobs.topk_entropy_bounds(top, 0.7, V)
    truth = exact_entropy(z, 0.7)
    confident = 1 - np.exp(top).sum(1) < 0.02
    assert confident.sum() >= 20
    assert np.max(truth[confident] - lower[confident]) < 0.01
    assert np.mean((upper - lower)[confident]) < np.mean(upper - lower) / 10


def test_bounds_are_exact_without_a_tail_and_classic_at_t1():
    z = distributions("gauss1", 8, np.random.default_rng(1))[:, :30]
    full = -np.sort(-log_softmax(z), axis=1)  # all 30 tokens: nothing left in the tail
    for temperature in (0.5, 1.0, 1.7):
        lower, upper = logprobs.topk_entropy_bounds(full, temperature, 30)
        np.testing.assert_allclose(lower, exact_entropy(z, temperature), atol=1e-9)
        np.testing.assert_allclose(upper, exact_entropy(z, temperature), atol=1e-9)
    top = full[:, :5]
    p = np.exp(top)
    classic = -(p * top).sum(1) + (1 - p.sum(1)) * -top[:, -1]  # H_trunc + r * (-log p_k)
    np.testing.assert_allclose(logprobs.topk_entropy_bounds(top, 1.0, 30)[0], classic, atol=1e-12)


def test_stored_entropy_drops_the_sampled_extra_token():
    """vLLM returns the top-k plus the sampled token when it is outside them; only the top-k may enter the bound."""
    z = log_softmax(distributions("gauss3", 1, np.random.default_rng(2)))[0]
    order = np.argsort(-z)
    position = {int(t): float(z[t]) for t in order[:5]}
    with_extra = {**position, int(order[900]): float(z[order[900]])}
    expected = logprobs.topk_entropy_bounds(np.sort(z)[::-1][None, :5], 0.8, V)[0]
    np.testing.assert_allclose(logprobs.topk_entropy([with_extra], 5, 0.8, V), expected, rtol=1e-6)
    np.testing.assert_allclose(logprobs.topk_entropy([position], 5, 0.8, V), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="position 1 has no log-probs"):
        logprobs.topk_entropy([position, None], 5, 0.8, V)


def test_target_logprobs_reads_the_asked_token_or_fails():
    positions = [None, {7: -0.5, 3: -1.5}, {2: -0.1}]
    np.testing.assert_array_equal(logprobs.target_logprobs(positions[1:], [3, 2]), np.float32([-1.5, -0.1]))
    with pytest.raises(ValueError, match="no log-prob for token 9"):
        logprobs.target_logprobs(positions[1:], [3, 9])
    with pytest.raises(ValueError, match="2 log-prob positions for 1"):
        logprobs.target_logprobs(positions[1:], [3])


def test_sampled_generation_trims_at_the_first_stop_like_hf():
    positions = [{i: -0.1} for i in range(6)]
    gen = logprobs.sampled_generation(
        [5, 6, 2, 8, 9],
        positions,
        stopped_by_server=False,
        stop_ids=[2],
        k=20,
        temperature=0.7,
        vocab_size=10,
        seed=4,
        decode=lambda ids: str(list(ids)),
    )
    assert (gen.token_ids, gen.text, gen.finish_reason, gen.seed, len(gen.entropy)) == (
        [5, 6, 2],
        "[5, 6, 2]",
        "stop",
        4,
        3,
    )
    ran_out = logprobs.sampled_generation(
        [5, 6],
        positions,
        stopped_by_server=False,
        stop_ids=[2],
        k=20,
        temperature=0.7,
        vocab_size=10,
        seed=4,
        decode=str,
    )
    assert ran_out.finish_reason == "length"
    with pytest.raises(ValueError, match="log-probs for 1 of 2"):
        logprobs.sampled_generation(
            [5, 6],
            positions[:1],
            stopped_by_server=True,
            stop_ids=[2],
            k=20,
            temperature=0.7,
            vocab_size=10,
            seed=4,
            decode=str,
        )


SAMPLING = SamplingConfig(n=8, temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=512, seed=11)


def test_vllm_sampling_params_set_every_output_shaping_field():
    kwargs = vllm.sampling_kwargs(SAMPLING, 8, 27, [151645, 151643], 20)
    assert kwargs == {
        "n": 8,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": -1,
        "min_p": 0.0,
        "seed": 27,
        "max_tokens": 512,
        "stop": [],
        "stop_token_ids": [151645, 151643],
        "ignore_eos": False,
        "include_stop_str_in_output": False,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "logprobs": 20,
        "prompt_logprobs": None,
        "skip_special_tokens": True,
        "detokenize": False,
    }
    assert vllm.sampling_kwargs(SAMPLING.model_copy(update={"top_k": 40}), 1, 0, [], 5)["top_k"] == 40
    scoring = vllm.scoring_kwargs()
    assert (scoring["prompt_logprobs"], scoring["logprobs"], scoring["temperature"], scoring["max_tokens"]) == (
        0,
        None,
        1.0,
        1,
    )


def test_vllm_engine_and_server_settings_come_from_the_config():
    cfg = parse_config(
        {
            "teacher": {
                "backend": "vllm",
                "model": "Qwen/Qwen3-32B",
                "dtype": "bfloat16",
                "top_logprobs": 10,
                "vllm": {
                    "tensor_parallel_size": 4,
                    "data_parallel_size": 2,
                    "max_model_len": 32768,
                    "enable_prefix_caching": False,
                },
            }
        }
    ).teacher
    engine = vllm.engine_kwargs(cfg, "/models/qwen3", cpu=False)
    assert engine == {
        "model": "/models/qwen3",
        "tokenizer": "/models/qwen3",
        "dtype": "bfloat16",
        "tensor_parallel_size": 4,
        "gpu_memory_utilization": 0.9,
        "max_model_len": 32768,
        "enable_prefix_caching": False,
        "max_logprobs": 10,
        "logprobs_mode": "raw_logprobs",
        "generation_config": "vllm",
    }
    on_cpu = vllm.engine_kwargs(cfg, "/models/qwen3", cpu=True)
    assert on_cpu["enable_chunked_prefill"] is False and on_cpu["kv_cache_memory_bytes"] == 4 * 2**30
    assert on_cpu["block_size"] == 32
    command, env = vllm.serve_command(
        cfg, "/models/qwen3", "Qwen/Qwen3-32B", "0.0.0.0", 8000, "/opt/vllm/bin/python", cpu=False
    )
    assert command[:5] == [
        "/opt/vllm/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/qwen3",
    ]
    flags = dict(zip(command[5::2], command[6::2]))
    assert flags["--max-logprobs"] == "10" and flags["--tensor-parallel-size"] == "4"
    assert flags["--data-parallel-size"] == "2" and flags["--generation-config"] == "vllm"
    assert flags["--logprobs-mode"] == "raw_logprobs" and flags["--served-model-name"] == "Qwen/Qwen3-32B"
    assert flags["--dtype"] == "bfloat16" and flags["--gpu-memory-utilization"] == "0.9"
    assert "--no-enable-prefix-caching" in command and env == {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    assert "--no-enable-chunked-prefill" not in command
    on_cpu, _ = vllm.serve_command(cfg, "/models/qwen3", "Qwen/Qwen3-32B", "0.0.0.0", 8000, "python", cpu=True)
    assert "--no-enable-chunked-prefill" in on_cpu and on_cpu[on_cpu.index("--kv-cache-memory-bytes") + 1] == str(
        4 * 2**30
    )
    assert "--kv-cache-memory-bytes" not in command  # a GPU engine is sized by gpu_memory_utilization
    assert vllm.engine_kwargs(TeacherConfig(backend="vllm", dtype="float32"), "m", cpu=False)["max_model_len"] is None


def test_dtype_auto_is_the_checkpoints_own_for_vllm(tiny_model_dirs):
    """vLLM's own ``auto`` would run a float32 checkpoint in 16 bits; heal's ``auto`` means the checkpoint's dtype."""
    model = str(tiny_model_dirs["qwen2"])
    assert vllm.checkpoint_dtype("auto", model) == "float32"
    assert vllm.checkpoint_dtype("bfloat16", model) == "bfloat16"
    assert vllm.engine_kwargs(TeacherConfig(backend="vllm"), model, cpu=True)["dtype"] == "float32"


def test_openai_payloads():
    sample = openai.sample_payload("teacher", [1, 2, 3], 8, SAMPLING, 27, [9], 20)
    assert sample == {
        "model": "teacher",
        "prompt": [1, 2, 3],
        "n": 8,
        "max_tokens": 512,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": -1,
        "min_p": 0.0,
        "seed": 27,
        "stop": [],
        "stop_token_ids": [9],
        "ignore_eos": False,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "logprobs": 20,
        "echo": False,
        "skip_special_tokens": True,
        "return_tokens_as_token_ids": True,
        "stream": False,
    }
    score = openai.score_payload("teacher", [4, 5])
    assert (score["echo"], score["logprobs"], score["temperature"], score["max_tokens"], score["prompt"]) == (
        True,
        1,
        1.0,
        1,
        [4, 5],
    )
    probe = openai.next_token_payload("teacher", [(4, 5), (4, 6, 7)], 9)  # many contexts, one allowed token
    assert (probe["prompt"], probe["allowed_token_ids"], probe["logprobs"], probe["echo"], probe["max_tokens"]) == (
        [[4, 5], [4, 6, 7]],
        [9],
        0,
        False,
        1,
    )


def test_openai_choice_parsing():
    choice = {
        "logprobs": {
            "tokens": ["token_id:4", "token_id:7"],
            "token_logprobs": [None, -0.25],
            "top_logprobs": [None, {"token_id:3": -0.2, "token_id:7": -0.25}],
        }
    }
    ids, positions = openai.choice_tokens(choice)
    assert ids == [4, 7] and positions == [None, {3: -0.2, 7: -0.25}]
    with pytest.raises(openai.LogprobsUnsupported, match="without per-token log-probs"):
        openai.choice_tokens({"text": "hi", "logprobs": None})
    with pytest.raises(openai.LogprobsUnsupported, match="return_tokens_as_token_ids"):
        openai.choice_tokens({"logprobs": {"tokens": ["hi"], "token_logprobs": [-1.0], "top_logprobs": [{"hi": -1.0}]}})


@pytest.mark.parametrize(
    "teacher, needle",
    [
        ({"backend": "hf", "entropy": "topk"}, "entropy: the hf backend computes exact entropy"),
        ({"backend": "openai", "server": {"url": "http://h:8000/v1"}}, "set teacher.entropy: topk"),
        ({"backend": "openai", "entropy": "topk"}, "server.url"),
        ({"backend": "sglang"}, "teacher.backend"),
    ],
)
def test_backend_settings_are_validated(teacher, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_config({"teacher": teacher})


def test_server_address_is_not_part_of_the_config_hash():
    base = parse_config({"teacher": {"backend": "openai", "entropy": "topk", "server": {"url": "http://a:8000/v1"}}})
    moved = parse_config(
        {
            "teacher": {
                "backend": "openai",
                "entropy": "topk",
                "server": {"url": "http://b:9000/v1", "max_concurrency": 4},
            }
        }
    )
    assert moved.config_hash() == base.config_hash()
    assert parse_config({"teacher": {"backend": "vllm"}}).config_hash() != parse_config({}).config_hash()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed: the engine would load")
def test_vllm_backend_imports_without_vllm_and_fails_with_an_install_hint_when_used():
    from heal_core.backends.factory import build_backend

    with pytest.raises(ImportError, match=r"pip install 'heal\[vllm\]'.*heal serve-teacher --backend vllm"):
        build_backend(TeacherConfig(backend="vllm", model="Qwen/Qwen3-32B"))


def test_shipped_configs_validate():
    from pathlib import Path

    from heal_core.config import load_config

    paths = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"cpu-smoke", "qwen3-8b-vllm", "r1-distill-32b-server"}
    backends = {p.stem: load_config(p).teacher.backend for p in paths}
    assert backends["cpu-smoke"] == "hf" and backends["qwen3-8b-vllm"] == "vllm"
    assert backends["r1-distill-32b-server"] == "openai"
