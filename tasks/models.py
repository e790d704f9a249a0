"""Resolve model references before any work starts, so a typo fails in a second, not after sampling."""

from __future__ import annotations

import os
from pathlib import Path

from heal_core.config import HealConfig
from heal_core.demo import bundled_model
from heal_core.fingerprints import model_identity


def resolve_model(reference: str, role: str) -> str:
    """A configured path or hub name, or the bundled demo model for ``role`` when none is configured.

    A reference that looks like a path (absolute, ``./``, ``~``) must exist; so must any reference when the
    hub is offline (``HF_HUB_OFFLINE=1``), since nothing could be downloaded.
    """
    if not reference:
        return str(bundled_model(role))
    path = Path(reference).expanduser()
    looks_local = reference.startswith((".", "/", "~")) or path.exists()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if (looks_local or offline) and not (path / "config.json").is_file():
        where = "does not exist" if not path.exists() else "has no config.json"
        raise FileNotFoundError(f"{role} model path {reference} {where} (config key {role}.model)")
    return str(path) if looks_local else reference


def teacher_identity(cfg: HealConfig, model: str) -> str:
    """What names the teacher in the generation store's key and the evaluation store's: its files, or its hub name
    and commit (``fingerprints.model_identity``); for ``teacher.backend: openai``, what the server says it serves
    (``backends.openai.served_identity``), since ``model`` is then only where the tokenizer comes from."""
    if cfg.teacher.backend == "openai":
        from heal_core.backends.openai import server_identity

        return server_identity(cfg.teacher, model)
    return model_identity(model)


# A thinking trace as R1's chat template has it sampled (the template opens the block in the generation prompt, so
# the text holds only the closing tag), for holding the student's training template against before any work.
_THINKING = {
    "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
    "completion": [
        {"role": "assistant", "content": "Two and two.\n\nThat makes 4.\n</think>\n\nThe answer is \\boxed{4}."}
    ],
}


def check_chat_templates(cfg: HealConfig, teacher: str, student: str) -> None:
    """Before any work: each reasoning format against its model's chat template (``heal_core.reasoning``), and for
    a teacher that thinks, the student's training template against a thinking trace (``heal_core.train``), so a
    template that would strip the reasoning fails now, not after the teacher has sampled everything."""
    from transformers import AutoTokenizer

    from heal_core.reasoning import check_template
    from heal_core.train import check_targets, training_tokenizer

    check_template(
        cfg.teacher.reasoning_format,
        AutoTokenizer.from_pretrained(teacher).chat_template,
        "teacher.reasoning_format",
        teacher,
    )
    check_template(
        cfg.student.reasoning_format,
        AutoTokenizer.from_pretrained(student).chat_template,
        "student.reasoning_format",
        student,
    )
    if cfg.teacher.reasoning_format == "think_tags":
        check_targets(training_tokenizer(student, cfg.pace), [_THINKING], "a thinking trace, checked at startup")
