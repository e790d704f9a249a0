"""Checkpoints inside a training stage, kept in storage so that a stage preempted, killed or retried on another
worker resumes from its last one instead of its first step.

The trainer writes its own checkpoints (``checkpoint-<step>/``: weights, optimizer, scheduler, trainer state, each
process's RNG) into its local folder; transformers' resume restores all of it and skips the batches already seen,
so the data order is the uninterrupted one. What heal adds is where they live: after each save every node copies
its files of the checkpoint into ``<stage>.checkpoints/checkpoint-<step>/`` in the run's storage, and once every
node has, the main process writes ``heal_checkpoint.json`` there, last. A checkpoint without it (a worker killed
half way through an upload) is never resumed from: resuming picks the newest one that has it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from heal_core import storage

DONE = "heal_checkpoint.json"
PREFIX = "checkpoint-"


def complete(uri: str, options: Mapping[str, Any]) -> list[int]:
    """The steps of the complete checkpoints under ``uri``, oldest first."""
    steps = [
        int(name[len(PREFIX) :])
        for name in storage.list_dirs(uri, dict(options))
        if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit()
    ]
    return sorted(s for s in steps if storage.exists(storage.join(uri, f"{PREFIX}{s}", DONE), dict(options)))


def restore(uri: str, options: Mapping[str, Any], trainer_dir: Path) -> tuple[int, Path] | None:
    """(step, local folder) of the newest complete checkpoint under ``uri``, fetched by each node's first process
    (the others wait for it) into a folder of its node's own (``GROUP_RANK``, torchrun's node rank): nodes that
    share ``trainer_dir`` (one volume) must not replace each other's copy mid-read. None when there is none. The
    copy is always fetched again: a process killed while saving leaves a folder the trainer would resume from."""
    from accelerate import PartialState

    steps = complete(uri, options) if uri else []
    if not steps:
        return None
    local = trainer_dir / f"resume-node{os.environ.get('GROUP_RANK', '0')}" / f"{PREFIX}{steps[-1]}"
    state = PartialState()
    if state.is_local_main_process:
        shutil.rmtree(local, ignore_errors=True)
        storage.get_dir(storage.join(uri, f"{PREFIX}{steps[-1]}"), local, dict(options), last=DONE)
    state.wait_for_everyone()
    return steps[-1], local


def discard(uri: str, options: Mapping[str, Any]) -> None:
    """Remove a stage's checkpoints: once its model is stored, nothing resumes from them."""
    storage.remove(uri, dict(options), recursive=True)


def keeper(uri: str, options: Mapping[str, Any], keep: int) -> Any:
    """A trainer callback that copies each checkpoint the trainer saves into ``uri`` and prunes all but the newest
    ``keep`` there. Every process reaches ``on_save``: each node's first process uploads what its node wrote
    (every process writes its own RNG state, and ZeRO-3 its own shards); the main one marks it complete."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class Keeper(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            name = f"{PREFIX}{state.global_step}"
            shared = PartialState()
            shared.wait_for_everyone()  # every process has written its files of the checkpoint
            if shared.is_local_main_process:
                storage.put_dir(Path(args.output_dir) / name, storage.join(uri, name), dict(options))
            shared.wait_for_everyone()
            if shared.is_main_process:
                storage.write_json({"step": state.global_step}, storage.join(uri, name, DONE), dict(options))
                for old in complete(uri, options)[:-keep]:
                    storage.remove(storage.join(uri, f"{PREFIX}{old}"), dict(options), recursive=True)

    return Keeper()
