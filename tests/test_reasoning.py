"""Thinking traces end to end: where the answer is read, where GEAR cuts and PURE probes, and a student's chat
template that would strip the reasoning refused before training, on tiny local models with templates written here."""

from __future__ import annotations

import math
import shutil

import pytest
from rows import trajectory
from transformers import AutoTokenizer

from heal_core import gear, pure
from heal_core.backends.base import PrefixQuery
from heal_core.backends.hf import HFBackend
from heal_core.config import PaceConfig, parse_config
from heal_core.demo import demo_defaults
from heal_core.problems import Problem
from heal_core.reasoning import check_template
from heal_core.testing import CHAT_TEMPLATE
from heal_core.train import MARKER, TemplateDropsText, check_targets, train_stage, trained_text
from heal_core.verify import check_many, extract_answer
from tasks.models import check_chat_templates

THINKS = "<think>\nStart with 5.\n\n5 + 3 = 8, so \\boxed{8}?\n\n8 * 2 = 16.\n</think>\n\nThe result is \\boxed{16}."
SETTINGS = [
    "teacher.sampling.max_new_tokens=40",
    "teacher.sampling.temperature=1.0",
    "teacher.sampling.top_p=1.0",
    "gear.continuations=3",
    "gear.surge_window=4",
]
CFG = parse_config({}, [*SETTINGS, "teacher.reasoning_format=think_tags"])
PROBLEM = Problem("p1", "Start with 5, then apply in order: + 3, * 2. What is the result?", "16")
# DeepSeek-R1-Distill's rule for assistant messages (its template keeps only what follows the thinking)
STRIPPING = CHAT_TEMPLATE.replace("message['content']", "message['content'].split('</think>')[-1]", 1)


def test_the_answer_is_read_after_the_thinking_and_an_unclosed_block_has_none():
    assert extract_answer(THINKS, "think_tags") == "16" and extract_answer(THINKS) == "16"
    drafted = THINKS.replace("\\boxed{16}", "16")  # the only box is a draft written while thinking
    assert extract_answer(drafted, "none") == "8" and extract_answer(drafted, "think_tags") is None
    unclosed = "Start with 5.\n\n5 + 3 = 8.\n\n8 * 2 = 16, so \\boxed{16}"  # R1 style: no opening tag, never closed
    verdicts = check_many(
        [(unclosed, "16"), (unclosed, "16"), (THINKS, "16")],
        truncated=[False, True, False],
        reasoning_format="think_tags",
    )
    assert [v.status for v in verdicts] == ["no_answer", "truncated", "correct"]
    assert check_many([(unclosed, "16")])[0].correct  # read whole, the draft would count


def test_a_reasoning_format_that_contradicts_the_chat_template_is_refused():
    check_template("think_tags", STRIPPING, "teacher.reasoning_format", "m")
    check_template("none", CHAT_TEMPLATE, "teacher.reasoning_format", "m")
    check_template("think_tags", None, "teacher.reasoning_format", "m")  # a bare tokenizer: nothing to check
    with pytest.raises(ValueError, match="teacher.reasoning_format is 'none', but m's chat template handles <think>"):
        check_template("none", STRIPPING, "teacher.reasoning_format", "m")
    with pytest.raises(ValueError, match="is 'think_tags', but m's chat template never mentions <think>"):
        check_template("think_tags", CHAT_TEMPLATE, "teacher.reasoning_format", "m")


@pytest.fixture(scope="module")
def backend(tiny_model_dirs):
    return HFBackend(str(tiny_model_dirs["llama"]), dtype="float32", device="cpu")


def test_gear_searches_the_thinking_not_the_whole_trace(backend):
    thinking = (
        "<think>\nStart with 5.\n\n5 + 3 = 8.\n\n8 * 2 = 17.\n\nThat is odd, as it should be.\n\nSo I keep 17."
        "\n\nNothing else to do.\n</think>"
    )
    answer = "\n\nSo the result is 17." + "\n\n5 + 3 = 8 and 8 * 2 = 17." * 12 + "\n\nThe result is \\boxed{17}."
    text = thinking + answer
    ids = backend.tokenizer.encode(text, add_special_tokens=False)
    in_thinking = len(backend.tokenizer.encode(text[: text.index("5 + 3") + 2], add_special_tokens=False))
    after = len(backend.tokenizer.encode(text[: text.index("So the result") + 3], add_special_tokens=False))
    thought = len(backend.tokenizer.encode(thinking, add_special_tokens=False))
    assert in_thinking < math.ceil(thought / 3) and thought < after < math.ceil(len(ids) / 3)  # the test's premise
    entropy = [0.5] * len(ids)
    entropy[in_thinking], entropy[after] = 3.0, 6.0  # the larger surge lies after </think>
    row = trajectory(
        "p1|s1|0",
        1,
        "p1",
        text=text,
        token_ids=ids,
        entropy=entropy,
        verified=False,
        prompt=CFG.teacher.prompt_template.format(problem=PROBLEM.problem),
    )

    [whole] = gear.plan_repairs([row], backend, parse_config({}, SETTINGS))
    assert whole.repair.breakpoint_token == after  # read whole, the trace is cut in its answer
    [plan] = gear.plan_repairs([row], backend, CFG)
    assert plan.repair.breakpoint_token == in_thinking and plan.prefix == "<think>\nStart with 5.\n\n"
    rows, _ = gear.repair(backend, [(PROBLEM, [row])], CFG)
    assert rows and all(r.text.startswith(plan.prefix) and "16" in r.hint.hint for r in rows)
    assert all(r.verified == (extract_answer(r.text, "think_tags") == "16") for r in rows)


def test_pure_probes_the_answer_after_closing_the_thinking(backend):
    segments, lead = pure.steps(THINKS, CFG.pure, "think_tags")
    assert "".join(segments) == THINKS and len(segments) == 4 and segments[-1].startswith("</think>")
    assert lead == "\n</think>" + CFG.pure.answer_lead
    assert pure.steps(THINKS, CFG.pure) == (pure.split_steps(THINKS), CFG.pure.answer_lead)
    [result] = pure.score(backend, [("q", THINKS, "16")], CFG.pure, "think_tags")
    [direct] = backend.score_prefixes([PrefixQuery("q", tuple(segments), lead, "16")])
    assert len(result.answer_nll) == len(result.step_ppl) == 4
    assert result.answer_nll == pytest.approx([float(-lp.mean()) for lp in direct.answer_logprobs[:4]])


def _thinking_examples(count: int) -> list[dict]:
    return [
        {
            "sample_id": f"s{i}",
            "prompt": [{"role": "user", "content": f"What is {i} + 2?"}],
            "completion": [
                {
                    "role": "assistant",
                    "content": f"{i} and two.\n\nThat makes {i + 2}.\n</think>\n\nSo \\boxed{{{i + 2}}}.",
                }
            ],
        }
        for i in range(count)
    ]


def _student(tiny_model_dirs, tmp_path, template: str) -> str:
    path = shutil.copytree(tiny_model_dirs["qwen2"], tmp_path / "student")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(path)
    return str(path)


def test_a_template_that_keeps_the_thinking_trains_on_all_of_it(tiny_model_dirs, tmp_path):
    student = _student(tiny_model_dirs, tmp_path, CHAT_TEMPLATE)
    examples = _thinking_examples(4)
    check_targets(AutoTokenizer.from_pretrained(student), examples, "stage stage1")
    assert "That makes 2.\n</think>" in trained_text(AutoTokenizer.from_pretrained(student), examples[0])


def test_a_stripping_template_is_refused_before_training_and_the_override_trains_on_the_whole_trace(
    tiny_model_dirs, tmp_path
):
    student = _student(tiny_model_dirs, tmp_path, STRIPPING)
    examples = _thinking_examples(8)
    assert "That makes" not in trained_text(AutoTokenizer.from_pretrained(student), examples[0])
    cfg = PaceConfig(epochs=1, batch_size=4, learning_rate=1e-3, max_length=128)
    with pytest.raises(
        TemplateDropsText,
        match=r"stage stage1: the student's chat template removes the thinking "
        r"from assistant messages .*example 0 \(s0\).*pace.chat_template",
    ):
        train_stage("stage1", student, examples, tmp_path / "refused", cfg, seed=0, max_steps=1)
    assert not (tmp_path / "refused").exists()  # refused before any step: nothing was written

    override = tmp_path / "keep.jinja"
    override.write_text(CHAT_TEMPLATE)
    result = train_stage(
        "stage1",
        student,
        examples,
        tmp_path / "trained",
        cfg.model_copy(update={"chat_template": str(override)}),
        seed=0,
        max_steps=1,
    )
    assert result.steps == 1 and (tmp_path / "trained" / MARKER).exists()
    saved = AutoTokenizer.from_pretrained(result.model_dir)  # the student carries the template it was trained with
    assert saved.chat_template == CHAT_TEMPLATE
    assert "That makes 2.\n</think>" in trained_text(saved, examples[0])


def test_startup_refuses_a_format_its_templates_contradict(tiny_model_dirs, tmp_path):
    teacher = _student(tiny_model_dirs, tmp_path / "t", STRIPPING)  # a template that handles <think>
    student = _student(tiny_model_dirs, tmp_path / "s", STRIPPING)
    plain = str(tiny_model_dirs["llama"])
    thinking = parse_config(demo_defaults(), ["teacher.reasoning_format=think_tags"])
    with pytest.raises(ValueError, match="teacher.reasoning_format is 'think_tags', but .* never mentions <think>"):
        check_chat_templates(thinking, plain, plain)
    with pytest.raises(ValueError, match="teacher.reasoning_format is 'none', but .* handles <think> blocks"):
        check_chat_templates(parse_config(demo_defaults(), []), teacher, plain)
    with pytest.raises(ValueError, match="student.reasoning_format is 'none'"):  # R1-Distill as the student
        check_chat_templates(thinking, teacher, student)
    stripped = parse_config(
        demo_defaults(), ["teacher.reasoning_format=think_tags", "student.reasoning_format=think_tags"]
    )
    with pytest.raises(
        TemplateDropsText, match="a thinking trace, checked at startup: the student's chat template removes"
    ):
        check_chat_templates(stripped, teacher, student)
    override = tmp_path / "keep.jinja"
    override.write_text(CHAT_TEMPLATE)
    check_chat_templates(
        parse_config(
            demo_defaults(),
            [
                "teacher.reasoning_format=think_tags",
                "student.reasoning_format=think_tags",
                f"pace.chat_template={override}",
            ],
        ),
        teacher,
        student,
    )


def test_a_run_whose_teacher_format_contradicts_its_template_stops_before_any_work(prefect_api, tmp_path):
    from flows.pipeline import heal_pipeline

    cfg = parse_config(demo_defaults(), [f"storage.uri={tmp_path}", "teacher.reasoning_format=think_tags"])
    with pytest.raises(ValueError, match="teacher.reasoning_format is 'think_tags', but .* never mentions <think>"):
        heal_pipeline(cfg, "contradicted")
    assert not (tmp_path / "runs" / "contradicted").exists()  # no pin, no problems, no shard
