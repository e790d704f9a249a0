"""How one training stage is spread over processes: the world size, the batch each process takes, and the
``accelerate launch`` command that starts them.

heal starts no process group of its own: accelerate's launcher (torchrun underneath) starts the processes and
its config files (``heal_core/accelerate/<strategy>.yaml``, DeepSpeed's inside them) say how they share the
model; TRL's trainer, inside each process, does the rest. What heal adds is what accelerate cannot know: how
many processes the worker's GPUs allow, which optional package a strategy needs, and the global batch, which
stays ``pace.batch_size`` (the paper's 8) whatever the number of processes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from heal_core.config import DistributedConfig, PaceConfig

CONFIGS = Path(__file__).resolve().parent / "accelerate"
"""The shipped accelerate config files, one per ``pace.distributed.strategy`` (DeepSpeed's settings inside
theirs, as accelerate writes them). Package data, so that an installed heal has them too."""

NEEDS = {"deepspeed_zero2": "deepspeed", "deepspeed_zero3": "deepspeed"}
"""Strategies whose package is an optional extra: the module they import."""


class LaunchError(ValueError):
    """A distributed setting this worker cannot run; the message says what to install or change."""


@dataclass(frozen=True)
class BatchLayout:
    """One optimizer step's batch: ``micro`` sequences per process and forward pass, ``accumulation`` passes
    per step, over ``world`` processes; ``micro * accumulation * world`` is always the configured global batch."""

    micro: int
    accumulation: int
    world: int

    @property
    def global_batch(self) -> int:
        return self.micro * self.accumulation * self.world


def visible_gpus() -> int:
    """GPUs this worker may use: torch's count, which honours ``CUDA_VISIBLE_DEVICES`` (heal worker --gpus)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def processes_per_node(dist: DistributedConfig, gpus: int) -> int:
    """``dist.processes_per_node``, with 0 meaning one per GPU (one process where there is none)."""
    return dist.processes_per_node or max(1, gpus)


def world_size(dist: DistributedConfig, gpus: int) -> int:
    """Training processes over all nodes."""
    return processes_per_node(dist, gpus) * dist.nodes


def batch_layout(cfg: PaceConfig, world: int) -> BatchLayout:
    """Split ``cfg.batch_size`` over ``world`` processes. Each process takes ``batch_size / world`` sequences per
    step, in micro-batches no larger than the configured one (``batch_size / gradient_accumulation_steps``): the
    largest divisor of the per-process share that is, so the global batch is exact. A global batch that does not
    divide over the processes is refused: silently training on another batch size is another experiment."""
    if cfg.batch_size % world:
        raise LaunchError(
            f"pace.batch_size {cfg.batch_size} does not divide over {world} training processes: set "
            f"pace.batch_size to a multiple of {world}, or pace.distributed.processes_per_node / nodes to a "
            f"divisor of {cfg.batch_size}"
        )
    share = cfg.batch_size // world
    micro = math.gcd(share, max(1, cfg.batch_size // cfg.gradient_accumulation_steps))
    return BatchLayout(micro, share // micro, world)


def launched(dist: DistributedConfig, gpus: int) -> bool:
    """Whether a stage needs accelerate's launcher: more than one process, or a sharding strategy (ZeRO and FSDP
    run through their engines even on one GPU). One DDP process trains in the calling process."""
    return world_size(dist, gpus) > 1 or dist.strategy != "ddp"


def check(dist: DistributedConfig, gpus: int) -> None:
    """Refuse, before any training, what this worker cannot run: more processes per node than its GPUs, or a
    strategy whose package is missing. A CPU-only worker runs any number of DDP processes (gloo: tests, laptops);
    the sharding strategies are for GPUs."""
    module = NEEDS.get(dist.strategy)
    if module and importlib.util.find_spec(module) is None:
        raise LaunchError(
            f"pace.distributed.strategy {dist.strategy} needs {module}, which is not installed: "
            f"pip install 'heal[{module}]', or set pace.distributed.strategy to ddp or fsdp"
        )
    if dist.strategy != "ddp" and gpus == 0:
        raise LaunchError(
            f"pace.distributed.strategy {dist.strategy} shards over GPUs and this worker has none "
            "(accelerate turns FSDP and DeepSpeed on for GPU process groups only, and would train "
            "plain data-parallel on CPUs): set pace.distributed.strategy to ddp to train on CPUs"
        )
    if gpus and dist.processes_per_node > gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise LaunchError(
            f"pace.distributed.processes_per_node {dist.processes_per_node} asks for more GPUs than this worker "
            f"has ({gpus}{f', CUDA_VISIBLE_DEVICES={visible}' if visible else ''}): set it to {gpus} or 0 (one "
            f"per GPU), or start the worker with more (heal worker --gpus 0-{gpus - 1} names those it has now)"
        )
    if dist.config_file and not Path(dist.config_file).is_file():
        raise LaunchError(f"pace.distributed.config_file: {dist.config_file} does not exist")


def config_file(dist: DistributedConfig) -> Path:
    """The accelerate config a launch reads: the user's own, or the strategy's shipped one."""
    return Path(dist.config_file) if dist.config_file else CONFIGS / f"{dist.strategy}.yaml"


def command(dist: DistributedConfig, gpus: int, machine_rank: int, args: list[str], bf16: bool) -> list[str]:
    """``accelerate launch`` of ``python -m heal_core.stage_process ARGS`` on this node. Processes, machines,
    rank, rendezvous and precision (``bf16``: the trainer's, on a GPU that has it) are given as flags, which take
    precedence over the config file's, so one shipped file serves every size and machine. ``ddp.yaml``'s
    ``MULTI_GPU`` type starts torchrun even on a CPU: there the trainer's processes join over gloo (``use_cpu``).
    ``--cpu`` would not: accelerate then starts one process, expecting MPI to start the others."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file(dist)),
        "--num_processes",
        str(world_size(dist, gpus)),
        "--num_machines",
        str(dist.nodes),
        "--machine_rank",
        str(machine_rank),
        "--main_process_ip",
        dist.main_address,
        "--main_process_port",
        str(dist.main_port),
        "--mixed_precision",
        "bf16" if bf16 else "no",
        "-m",
        "heal_core.stage_process",
        *args,
    ]


def run(
    dist: DistributedConfig,
    gpus: int,
    machine_rank: int,
    args: list[str],
    log: Path,
    bf16: bool,
    watch: Callable[[], None] = lambda: None,
) -> None:
    """Run this node's share of a launched stage to its end, calling ``watch`` every second meanwhile (the
    caller passes the processes' progress on); their output goes to ``log``, and its tail into the error of a
    failed launch, so the task's log says why. Interrupted (Ctrl-C, a cancelled flow run), the processes are
    stopped with it: torchrun passes the signal on."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            command(dist, gpus, machine_rank, args, bf16), stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            while process.poll() is None:
                watch()
                time.sleep(1)
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()
    watch()
    if process.returncode:
        excerpt = failure_excerpt(log.read_text(errors="replace"))
        raise RuntimeError(f"training processes exited with {process.returncode} (log: {log}):\n{excerpt}")


def failure_excerpt(log: str, lines: int = 25) -> str:
    """What a failed launch's error quotes from its log. torchrun ends a failed launch with its own report
    (its traceback, then each rank's exit code and signal), which says which process died but not why: a rank
    killed by a signal (gloo's aborts on a broken connection, a native crash) leaves its reason just before.
    So the excerpt is the processes' last ``lines`` lines before that report, then the report's root cause."""
    text = log.splitlines()
    starts = [i for i, line in enumerate(text) if line.startswith("Traceback (most recent call last)")]
    report = starts[-1] if starts and any("ChildFailedError" in line for line in text[starts[-1] :]) else None
    if report is None:
        return "\n".join(text[-lines:])
    root = next((i for i in range(report, len(text)) if text[i].startswith("Root Cause")), len(text))
    cause = [line for line in text[root:] if line.strip() and not set(line.strip()) <= set("=-")]
    return "\n".join([*text[max(0, report - lines) : report], "[torchrun's report]", *cause])
