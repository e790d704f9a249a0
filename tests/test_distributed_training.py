"""One training stage over several processes, for real: accelerate's launcher, torchrun's rendezvous, gloo on
127.0.0.1, TRL's trainer in each process (pace.distributed); and a stage SIGKILLed mid-way that resumes from its
checkpoint in storage (pace.save_steps).

Tolerances: the processes train in float32 on CPU, so the only differences from one process are the order in
which gradients are summed (gloo's all-reduce against one backward over the whole batch): measured 3e-6 at most
per weight after 4 steps that moved weights by 2.5e-3. The test allows 2e-5, and checks the weights moved by
more than 50 times that, so that "equal" cannot pass by training nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from rows import built_datasets, trajectory
from safetensors.torch import load_file

from heal_core import checkpoints, launch, progress
from heal_core.config import DistributedConfig, HealConfig, PaceConfig
from heal_core.demo.arithmetic import make_problems
from heal_core.launch import LaunchError, batch_layout
from heal_core.testing import build_tiny_model
from heal_core.train import train_stage

TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("student"), arch="qwen2"))


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[dict]:
    rows = [
        trajectory(
            f"{w.problem.problem_id}|1", 1, w.problem.problem_id, prompt=w.problem.problem, text=w.solution, kept=True
        )
        for w in make_problems(16, seed=1)
    ]
    return built_datasets(rows, HealConfig(), tmp_path_factory.mktemp("data"))["stage1"]


CFG = PaceConfig(epochs=1, batch_size=4, learning_rate=1e-3, max_length=256, warmup_ratio=0.0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_process(student, examples, tmp_path_factory) -> Path:
    """The reference: the stage in this process, as every laptop run trains."""
    out = tmp_path_factory.mktemp("one") / "stage1"
    train_stage("stage1", student, examples, out, CFG, seed=0, max_steps=4)
    return out


@pytest.mark.slow
def test_two_processes_train_the_one_process_weights(student, examples, one_process, tmp_path):
    cfg = CFG.model_copy(update={"distributed": DistributedConfig(processes_per_node=2, main_port=_free_port())})
    assert batch_layout(cfg, 2).micro == 2  # each process takes half of the global batch of 4
    seen: list[tuple[int, float | None]] = []
    with progress.listen(lambda snap: seen.append((snap.done, snap.loss))):
        result = train_stage("stage1", student, examples, tmp_path / "stage1", cfg, seed=0, max_steps=4)
    assert result.steps == 4 and not result.resumed and len(result.losses) == 4
    assert seen[-1] == (4, result.losses[-1][1])  # the launched processes' steps and loss reach this process
    ours, theirs = _weights(tmp_path / "stage1"), _weights(one_process)
    assert _max_diff(ours, _weights(student)) > 50 * TOLERANCE
    assert _max_diff(ours, theirs) < TOLERANCE
    assert not (tmp_path / "stage1.trainer" / "data").exists()  # the examples' Arrow copy is gone once trained


@pytest.mark.slow
def test_two_nodes_over_loopback_train_the_one_process_weights(student, examples, one_process, tmp_path):
    """Two launches of accelerate's multi-machine mode on 127.0.0.1: node 0 from ``train_stage`` (as the
    heal-train task runs it), node 1 from ``heal train-stage --follow`` (as the other nodes of a cluster run it:
    it finds the stage node 0 launched under the shared folder)."""
    dist = DistributedConfig(processes_per_node=1, nodes=2, main_port=_free_port())
    cfg = CFG.model_copy(update={"distributed": dist})
    node1: list[subprocess.CompletedProcess] = []

    def second_node() -> None:
        node1.append(
            subprocess.run(
                [
                    str(Path(sys.executable).parent / "heal"),
                    "train-stage",
                    "--follow",
                    str(tmp_path),
                    "--machine-rank",
                    "1",
                    "--stages",
                    "1",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        )

    thread = threading.Thread(target=second_node)
    thread.start()
    try:
        train_stage("stage1", student, examples, tmp_path / "stage1", cfg, seed=0, max_steps=4)
    finally:
        thread.join(timeout=300)
    assert node1 and node1[0].returncode == 0, node1[0].stdout + node1[0].stderr if node1 else "node 1 never ran"
    assert _max_diff(_weights(tmp_path / "stage1"), _weights(one_process)) < TOLERANCE


_VICTIM = """
import sys
from heal_core.config import PaceConfig
from heal_core.train import train_stage
import json
student, out, uri, cfg = sys.argv[1], sys.argv[3], sys.argv[4], sys.argv[5]
examples = json.loads(open(sys.argv[2]).read())
train_stage("stage1", student, examples, out, PaceConfig.model_validate_json(cfg), 0, 12, uri)
"""


@pytest.mark.slow
def test_a_killed_stage_resumes_from_its_checkpoint(student, examples, tmp_path):
    """SIGKILL after the second checkpoint reached storage; the retry trains only the steps after it and ends
    with the uninterrupted stage's weights. With the resume taken out the retry trains all 12 steps again."""
    import json

    cfg = CFG.model_copy(update={"save_steps": 2, "save_total_limit": 2})
    whole = train_stage("stage1", student, examples, tmp_path / "whole", cfg, 0, 12)
    assert whole.started_at == 0

    uri = str(tmp_path / "storage" / "stage1.checkpoints")
    data = tmp_path / "examples.json"
    data.write_text(json.dumps(examples))
    victim = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, student, str(data), str(tmp_path / "killed"), uri, cfg.model_dump_json()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and victim.poll() is None and len(checkpoints.complete(uri, {})) < 2:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    kept = checkpoints.complete(uri, {})
    assert victim.returncode == -signal.SIGKILL and kept[-1] >= 4, (victim.returncode, kept)
    assert not (tmp_path / "killed" / "heal_stage.json").exists()

    steps: list[int] = []
    with progress.listen(lambda snap: steps.append(snap.done)):
        resumed = train_stage("stage1", student, examples, tmp_path / "killed", cfg, 0, 12, uri)
    assert resumed.started_at == kept[-1]
    assert max(steps) == 12 - kept[-1]  # only the steps after the checkpoint were trained
    assert _max_diff(_weights(tmp_path / "killed"), _weights(tmp_path / "whole")) < TOLERANCE
    assert [s for s, _ in resumed.losses][-1] == 12


def test_refused_before_training(student, examples, tmp_path):
    """What a worker cannot run is refused before any process starts, saying what to change or install."""
    too_many = CFG.model_copy(update={"batch_size": 4, "distributed": DistributedConfig(processes_per_node=3)})
    with pytest.raises(LaunchError, match="does not divide over 3"):
        train_stage("stage1", student, examples, tmp_path / "a", too_many, 0, 2)
    zero3 = CFG.model_copy(update={"distributed": DistributedConfig(strategy="deepspeed_zero3")})
    if not _installed("deepspeed"):
        with pytest.raises(LaunchError, match=r"pip install 'heal\[deepspeed\]'"):
            train_stage("stage1", student, examples, tmp_path / "b", zero3, 0, 2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(LaunchError, match=r"more GPUs than this worker has \(4.*heal worker --gpus 0-3"):
        launch.check(DistributedConfig(processes_per_node=8), gpus=4)
    launch.check(DistributedConfig(processes_per_node=0), gpus=4)  # one per GPU: always fits


def test_a_failed_launch_says_why_each_process_died(tmp_path):
    """torchrun's own report (exit codes, signals) fills the end of a failed launch's log; the error quotes the
    processes' last words before it, here the spec each of them could not read, and the report's root cause."""
    missing = tmp_path / "absent" / "spec.json"
    dist = DistributedConfig(processes_per_node=2, main_port=_free_port())
    with pytest.raises(RuntimeError) as failed:
        launch.run(dist, 0, 0, [str(missing)], tmp_path / "launch.log", bf16=False)
    message = str(failed.value)
    assert "FileNotFoundError" in message and str(missing) in message
    assert "[torchrun's report]" in message and "exitcode  : 1" in message


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_accelerate_accepts_the_shipped_config_files(strategy):
    """accelerate's own launch validation reads each shipped file as the strategy it is named for; FSDP's plugin
    is built from the environment the launcher would give the processes. (FSDP does not run on CPUs: accelerate
    turns it on for GPU process groups only, so heal refuses it on a CPU worker, tested above.)"""
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )
    from accelerate.utils.launch import prepare_multi_gpu_env

    path = launch.config_file(DistributedConfig(strategy=strategy))
    args, _, _ = _validate_launch_command(
        launch_command_parser().parse_args(["--config_file", str(path), "--num_processes", "8", "train.py"])
    )
    assert (args.use_fsdp, args.use_deepspeed) == (strategy == "fsdp", strategy.startswith("deepspeed"))
    if strategy.startswith("deepspeed"):
        assert int(args.zero_stage) == int(strategy[-1])
    if strategy == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        env = prepare_multi_gpu_env(args)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


def test_sharding_is_refused_on_a_cpu_worker():
    with pytest.raises(LaunchError, match="strategy fsdp shards over GPUs"):
        launch.check(DistributedConfig(strategy="fsdp", processes_per_node=2), gpus=0)


def test_liger_on_without_the_package_is_refused():
    from heal_core.train import liger

    if _installed("liger_kernel"):
        pytest.skip("liger-kernel is installed here")
    with pytest.raises(LaunchError, match="pip install liger-kernel"):
        liger(CFG.model_copy(update={"liger_kernel": "on"}), on_gpu=False)
    assert liger(CFG, on_gpu=True) is False  # auto: not without the package


def test_worker_gpus():
    from flows.deploy import gpu_list, worker_command

    assert gpu_list("0-3") == [0, 1, 2, 3] and gpu_list("0,2,4-5") == [0, 2, 4, 5] and gpu_list("7") == [7]
    for bad in ("a", "3-1", "0,0", "1-"):
        with pytest.raises(ValueError, match="--gpus"):
            gpu_list(bad)
    command, env = worker_command("gpu", "0-7", None, None)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7" and command[command.index("--limit") + 1] == "1"


def test_the_global_batch_is_the_configured_one_whatever_the_world():
    for batch, accumulation in ((8, 1), (8, 4), (8, 8), (16, 2), (6, 3)):
        cfg = PaceConfig(batch_size=batch, gradient_accumulation_steps=accumulation)
        for world in (w for w in (1, 2, 3, 4, 8) if batch % w == 0):
            layout = batch_layout(cfg, world)
            assert layout.global_batch == batch and layout.micro <= max(1, batch // accumulation), (batch, world)
    assert batch_layout(PaceConfig(batch_size=8, gradient_accumulation_steps=8), 8).micro == 1
