"""HFBackend against direct forward passes of tiny random llama/qwen2 models (CPU, offline)."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from draw import draw

from heal_core.backends import hf, prefix_scoring
from heal_core.backends.base import PrefixQuery, Request, TeacherBackend, Trace
from heal_core.backends.hf import HFBackend
from heal_core.config import SamplingConfig, TeacherConfig

ARCHS = ["llama", "qwen2"]
PROMPTS = ["What is 2 + 3?", "Ann has 12 apples and buys 30 more. How many apples does she have now?", "x"]
EOS_BIAS = 0.5  # p(eos) ~ 10% per step after top-k 20 at T=0.7: both finish reasons show up
LEAD = "\n\nThe final answer is \\boxed{"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and with the 2 cores shared by other processes the
    thread pool's spin-waits made this file ~10x slower (87 s vs 6 s measured with 2 threads vs 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bias_eos(backend: HFBackend) -> HFBackend:
    """Swap in an lm_head with a bias towards EOS, so rows stop at different lengths (padding, trimming)."""
    old = backend.model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True).to(old.weight.device)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[backend.tokenizer.eos_token_id] = EOS_BIAS
    backend.model.lm_head = head
    return backend


@pytest.fixture(scope="module", params=ARCHS)
def backend(request, tiny_model_dirs) -> HFBackend:
    return _bias_eos(HFBackend(str(tiny_model_dirs[request.param]), max_batch_sequences=5))


def prompt_ids(backend: HFBackend, prompt: str) -> list[int]:
    tok = backend.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def forced_logits(backend: HFBackend, ids: list[int]) -> torch.Tensor:
    """Plain teacher-forced forward of one unpadded row, no cache: the reference for everything."""
    with torch.no_grad():
        return backend.model(torch.tensor([ids], device=backend.device)).logits[0].float().cpu()


def entropy(logits: torch.Tensor, temperature: float) -> np.ndarray:
    p = torch.softmax(logits / temperature, -1)
    return (-(p * torch.log(p)).nansum(-1)).numpy()


def logprobs(logits: torch.Tensor, targets: list[int]) -> np.ndarray:
    return logits.log_softmax(-1).gather(-1, torch.tensor(targets)[:, None]).squeeze(-1).numpy()


def spy_generate(backend: HFBackend, monkeypatch) -> list[dict]:
    """Record every generate() call's kwargs while still running it."""
    calls, real = [], backend.model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(backend.model, "generate", generate)
    return calls


def test_tiny_models_reload_with_the_same_tokenizer(tiny_model_dirs):
    """AutoTokenizer turns a qwen2 dir's tokenizer into Qwen2Tokenizer; it must still tokenise identically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    built = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"].parent / "tokenizer")
    text = "Ann has 123 apples.\n\nThe final answer is \\boxed{41.50}. Ünï 日本"
    for arch, path in tiny_model_dirs.items():
        tok = AutoTokenizer.from_pretrained(path)
        assert tok.encode(text) == built.encode(text) and tok.decode(tok.encode(text)) == text
        assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|im_end|>", "<|pad|>", "left")
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.model_type == arch and model.config.vocab_size == len(tok)


def test_satisfies_protocol(tiny_model_dirs):
    cfg = TeacherConfig(model="unused", max_batch_sequences=3, dtype="float32", device="cpu")
    backend = HFBackend.from_config(cfg, model=str(tiny_model_dirs["qwen2"]))
    assert isinstance(backend, TeacherBackend)
    assert backend.batch_rows == 3 and backend.model.dtype == torch.float32


def test_sample_shapes_grouping_and_entropy(backend, monkeypatch):
    """T=0.7 with top-k/top-p: the recorded entropy is of softmax(raw logits / T), i.e. before the warpers."""
    calls = spy_generate(backend, monkeypatch)
    sampling = SamplingConfig(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=12)
    result = draw(backend, PROMPTS, 4, sampling, seed=5)

    assert [len(row) for row in result] == [4, 4, 4]
    assert [c["input_ids"].shape[0] for c in calls] == [5, 5, 2]  # 12 rows, at most 5 per call
    eos, reasons = backend.tokenizer.eos_token_id, set()
    for i, (prompt, row) in enumerate(zip(PROMPTS, result, strict=True)):
        ids = prompt_ids(backend, prompt)
        for j, g in enumerate(row):
            reasons.add(g.finish_reason)
            assert g.seed == 5 + 1000 * i + j
            assert len(g.entropy) == len(g.token_ids) > 0 and g.entropy.dtype == np.float32
            assert all(0 <= t < len(backend.tokenizer) for t in g.token_ids)
            assert eos not in g.token_ids[:-1]
            if g.finish_reason == "stop":
                assert g.token_ids[-1] == eos
            else:
                assert g.finish_reason == "length" and len(g.token_ids) == 12
            assert g.text == backend.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            logits = forced_logits(backend, ids + g.token_ids)[len(ids) - 1 : -1]
            np.testing.assert_allclose(g.entropy, entropy(logits, 0.7), atol=1e-4, rtol=0)
    assert reasons == {"stop", "length"}
    # top-k 20 caps a post-warper entropy at ln 20; the recorded one is far above it
    assert max(g.entropy.max() for row in result for g in row) > math.log(20) + 1


def test_n_above_batch_limit_is_split(backend, monkeypatch):
    calls = spy_generate(backend, monkeypatch)
    result = draw(backend, PROMPTS[:2], 7, SamplingConfig(max_new_tokens=3))
    assert [len(row) for row in result] == [7, 7]
    assert [c["input_ids"].shape[0] for c in calls] == [5, 5, 4]
    assert [g.seed for g in result[1]] == [1000 + j for j in range(7)]


def test_seed_determinism(backend):
    def tokens(seed):
        result = draw(backend, PROMPTS, 3, SamplingConfig(max_new_tokens=8), seed=seed)
        return [g.token_ids for row in result for g in row]

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


def test_a_row_does_not_depend_on_its_batch(backend, monkeypatch):
    """Row j of a request is drawn from seed + j alone: the same tokens alone, in another order, in other calls."""
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12)
    requests = [Request(p, 4, 77 * i) for i, p in enumerate(PROMPTS)]
    together = backend.generate(requests, sampling)
    monkeypatch.setattr(backend, "batch_rows", 1)
    alone = [backend.generate([Request(r.prompt, 1, r.seed + j)], sampling)[0][0] for r in requests for j in range(4)]
    monkeypatch.setattr(backend, "batch_rows", 3)
    reversed_ = backend.generate(requests[::-1], sampling)[::-1]
    flat = [g for row in together for g in row]
    assert (
        [g.token_ids for g in flat] == [g.token_ids for g in alone] == [g.token_ids for row in reversed_ for g in row]
    )
    assert len({tuple(g.token_ids) for g in flat}) > 6  # rows differ from each other: seeds are not shared
    for g, h in zip(flat, alone, strict=True):
        np.testing.assert_allclose(g.entropy, h.entropy, atol=1e-5)


@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (0, 0.5)])
def test_top_k_and_top_p_bound_what_is_sampled(backend, top_k, top_p):
    """Every sampled token lies in the top-k, or in the smallest set of likeliest tokens reaching top_p (at T)."""
    sampling = SamplingConfig(temperature=0.7, top_k=top_k, top_p=top_p, max_new_tokens=10)
    ids = prompt_ids(backend, PROMPTS[1])
    for g in draw(backend, PROMPTS[1:2], 6, sampling)[0]:
        logits = forced_logits(backend, ids + g.token_ids)[len(ids) - 1 : -1] / 0.7
        chosen = logits.gather(-1, torch.tensor(g.token_ids)[:, None])
        if top_k:
            assert ((logits > chosen).sum(-1) < top_k).all()
        else:
            p = logits.softmax(-1)
            likelier = torch.where(p > p.gather(-1, torch.tensor(g.token_ids)[:, None]), p, 0.0).sum(-1)
            assert (likelier < top_p + 1e-6).all()


def test_top_k_zero_is_unrestricted(backend):
    """HF would default to top-k 50; with top_k=0 a near-uniform model must sample beyond rank 50."""
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12)
    ids = prompt_ids(backend, PROMPTS[0])
    ranks = []
    for g in draw(backend, PROMPTS[:1], 5, sampling)[0]:
        logits = forced_logits(backend, ids + g.token_ids)[len(ids) - 1 : -1]
        chosen = logits.gather(-1, torch.tensor(g.token_ids)[:, None])
        ranks += (logits > chosen).sum(-1).tolist()
    assert max(ranks) >= 50, ranks


def test_checkpoint_generation_config_is_ignored(tiny_model_dirs, tmp_path):
    """A generation_config.json with penalties and top-k must change neither sampling nor the entropy."""
    path = shutil.copytree(tiny_model_dirs["qwen2"], tmp_path / "hostile")
    gen_cfg = json.loads((path / "generation_config.json").read_text())
    gen_cfg.update(repetition_penalty=5.0, top_k=3, top_p=0.5, min_p=0.2, no_repeat_ngram_size=1, temperature=0.1)
    (path / "generation_config.json").write_text(json.dumps(gen_cfg))
    backend = HFBackend(str(path))
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16)
    ids = prompt_ids(backend, PROMPTS[0])
    ranks = []
    for g in draw(backend, PROMPTS[:1], 4, sampling)[0]:
        logits = forced_logits(backend, ids + g.token_ids)[len(ids) - 1 : -1]
        np.testing.assert_allclose(g.entropy, entropy(logits, 1.0), atol=1e-4, rtol=0)
        ranks += (logits > logits.gather(-1, torch.tensor(g.token_ids)[:, None])).sum(-1).tolist()
    assert max(ranks) >= 3


def test_continue_resumes_the_prefix(backend, monkeypatch):
    prompt, prefix = PROMPTS[1], "First, Ann has 12 + 30 = 42 apples."
    tok = backend.tokenizer
    prefix_ids = tok.encode(prefix, add_special_tokens=False)
    calls = spy_generate(backend, monkeypatch)
    sampling = SamplingConfig(temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=10)
    [gens] = backend.generate([Request(prompt, 3, 3, prefix)], sampling)

    full = calls[0]["input_ids"][0].tolist()
    open_turn = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": prefix}],
        tokenize=False,
        continue_final_message=True,
    )
    assert full == prompt_ids(backend, prompt) + prefix_ids == tok.encode(open_turn, add_special_tokens=False)
    assert [g.seed for g in gens] == [3, 4, 5]
    after_prefix = entropy(forced_logits(backend, full)[-1:], 0.7)[0]
    for g in gens:
        logits = forced_logits(backend, full + g.token_ids)[len(full) - 1 : -1]
        np.testing.assert_allclose(g.entropy, entropy(logits, 0.7), atol=1e-4, rtol=0)
        assert g.entropy[0] == pytest.approx(after_prefix, abs=1e-4)
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)
    # token-id prefixes are the same request
    [by_ids] = backend.generate([Request(prompt, 3, 3, tuple(prefix_ids))], sampling)
    assert [g.token_ids for g in by_ids] == [g.token_ids for g in gens]


def test_score_matches_forward(backend):
    continuation = "First, 2 + 3 = 5.\n\nThe final answer is \\boxed{5}."
    ids, cont = prompt_ids(backend, PROMPTS[0]), backend.tokenizer.encode(continuation, add_special_tokens=False)
    expected = logprobs(forced_logits(backend, ids + cont)[len(ids) - 1 : -1], cont)
    np.testing.assert_allclose(backend.score(PROMPTS[0], continuation), expected, atol=1e-4, rtol=0)


def _segments(k: int, words: int) -> list[str]:
    rng = np.random.default_rng(k)
    return [
        ("\n\n" if j else "") + " ".join(f"{rng.integers(2, 99)} + {rng.integers(2, 9)}" for _ in range(words))
        for j in range(k)
    ]


def naive_prefix_scores(backend, prompt, segments, lead, answer):
    """The O(K * L) reference, every string tokenised whole: one forward over the trajectory (a token counts for
    the segment its first character is in), then one per boundary over prefix + lead + answer, scoring the tokens
    that hold answer characters."""
    enc = lambda s: backend.tokenizer(s, add_special_tokens=False, return_offsets_mapping=True)  # noqa: E731
    ids, text = prompt_ids(backend, prompt), "".join(segments)
    whole = enc(text)
    flat, spans = whole["input_ids"], whole["offset_mapping"]
    lps = logprobs(forced_logits(backend, ids + flat)[len(ids) - 1 : -1], flat)
    starts = np.cumsum([0] + [len(seg) for seg in segments])
    cuts = [sum(begin < start for begin, _ in spans) for start in starts[:-1]] + [len(flat)]
    answers = []
    for start in starts:
        probe = enc(text[:start] + lead + answer)
        first = next(i for i, (_, end) in enumerate(probe["offset_mapping"]) if end > start + len(lead))
        row = ids + probe["input_ids"]
        answers.append(logprobs(forced_logits(backend, row)[len(ids) + first - 1 : -1], probe["input_ids"][first:]))
    return [lps[a:b] for a, b in itertools.pairwise(cuts)], answers


def assert_matches_naive(backend, segments, lead, answer="42}"):
    [scores] = backend.score_prefixes([PrefixQuery(PROMPTS[0], tuple(segments), lead, answer)])
    seg_lps, answers = naive_prefix_scores(backend, PROMPTS[0], segments, lead, answer)
    assert len(scores.segment_logprobs) == len(segments) and len(scores.answer_logprobs) == len(segments) + 1
    for got, want in zip(scores.segment_logprobs + scores.answer_logprobs, seg_lps + answers, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("pack", "scored"), [(4096, 4096), (30, 4096), (4096, 60)])
def test_score_prefixes_of_many_trajectories_is_each_ones(backend, pack, scored, monkeypatch):
    """Padded together in one group (or, with a small budget, in packed rounds and several groups), each
    trajectory gets the scores it gets alone, and the scores the naive reference gives."""
    queries = [PrefixQuery(p, tuple(_segments(3, k + 1)), LEAD, f"{k}}}") for k, p in enumerate(PROMPTS)]
    queries.append(PrefixQuery(PROMPTS[0], (), LEAD, "7}"))
    monkeypatch.setattr(prefix_scoring, "PACKED_QUERY_TOKENS", pack)
    monkeypatch.setattr(hf, "_SCORED_TOKENS", scored)
    together = backend.score_prefixes(queries)
    seg_lps, answers = naive_prefix_scores(backend, PROMPTS[1], list(queries[1].segments), LEAD, "1}")
    for got, want in zip(together[1].segment_logprobs + together[1].answer_logprobs, seg_lps + answers, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    for query, got in zip(queries, together, strict=True):
        [alone] = backend.score_prefixes([query])
        for a, b in zip(got.segment_logprobs + got.answer_logprobs, alone.segment_logprobs + alone.answer_logprobs):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("pack", [4096, 10])  # 10: a few boundaries per packed forward, cache cropped between
@pytest.mark.parametrize("lead", [LEAD, ""])
def test_score_prefixes_matches_naive(backend, lead, pack, monkeypatch):
    monkeypatch.setattr(prefix_scoring, "PACKED_QUERY_TOKENS", pack)
    assert_matches_naive(backend, _segments(8, 3), lead)
    assert_matches_naive(backend, ["", "Step one.", "", "\n\nStep two."], lead)  # empty segments: equal boundaries
    assert_matches_naive(backend, ["So 2 + 3 = 5.", "\n\n5 * 2 = 10.", "\n\nThe answer is 10."], lead)
    assert_matches_naive(backend, [], lead)


def test_score_prefixes_tokenises_like_the_whole_text_across_a_merged_boundary(backend):
    """Qwen2's pre-tokenizer keeps punctuation with the newlines after it: a step's closing "." and the blank line
    after it are one token. Scored step by step they would be two tokens the model never saw together."""
    segments = ["So 2 + 3 = 5.", "\n\n5 * 2 = 10."]
    merged = backend.tokenizer.encode(".\n\n", add_special_tokens=False)
    assert len(merged) == 1, "the test tokenizer no longer merges punctuation with newlines"
    whole = backend.tokenizer.encode("".join(segments), add_special_tokens=False)
    assert merged[0] in whole
    [scores] = backend.score_prefixes([PrefixQuery(PROMPTS[0], tuple(segments), LEAD, "10}")])
    assert sum(len(lp) for lp in scores.segment_logprobs) == len(whole)


def test_score_prefixes_eager_attention_and_unsupported(backend, monkeypatch):
    monkeypatch.setattr(backend.model.config, "_attn_implementation", "eager")
    assert_matches_naive(backend, _segments(4, 2), LEAD)
    monkeypatch.setattr(backend.model.config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(NotImplementedError, match="flash_attention_2"):
        backend.score_prefixes([PrefixQuery(PROMPTS[0], ("a",), LEAD, "1}")])


def test_missing_model_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        HFBackend(str(missing))


def test_decode_of_a_token_prefix_is_a_prefix_of_the_text(tiny_model_dirs):
    from heal_core.backends.hf import HFBackend
    from heal_core.config import SamplingConfig

    backend = HFBackend(str(tiny_model_dirs["qwen2"]), dtype="float32", device="cpu")
    [[gen]] = draw(backend, ["Compute 2 + 3."], 1, SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_new_tokens=24))
    assert backend.decode(gen.token_ids) == gen.text
    for t in range(len(gen.token_ids)):
        assert gen.text.startswith(backend.decode(gen.token_ids[:t]).rstrip("\ufffd"))


def test_teacher_forced_pass_reproduces_sampling_entropy_and_log_probs(backend):
    """What the vLLM backend's exact entropy and the HTTP server's log-probs rest on: one forward over prompt +
    sample gives the entropy recorded while sampling, each token's log-prob at T = 1 and a sorted top-k."""
    sampling = SamplingConfig(temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=10)
    [[gen]] = draw(backend, PROMPTS[:1], 1, sampling, seed=3)
    ids = prompt_ids(backend, PROMPTS[0])
    stats = backend.teacher_forced(ids + gen.token_ids, len(ids), temperature=0.7, top_k=5)
    np.testing.assert_allclose(stats.entropy, gen.entropy, atol=1e-4)
    logits = forced_logits(backend, ids + gen.token_ids)[len(ids) - 1 : -1]
    np.testing.assert_allclose(stats.logprobs, logprobs(logits, gen.token_ids), atol=1e-5)
    assert stats.top_ids.shape == (len(gen.token_ids), 5) and np.all(np.diff(stats.top_logprobs, axis=1) <= 0)
    np.testing.assert_array_equal(stats.top_ids[:, 0], logits.argmax(-1).numpy())
    [exact] = backend.exact_entropy([Trace(PROMPTS[0], tuple(gen.token_ids), gen.entropy)], 0.7)
    np.testing.assert_array_equal(exact, gen.entropy)
