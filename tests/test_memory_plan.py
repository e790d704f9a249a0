"""The training memory plan (heal_core/memory_plan.py): parameter counts against the published ones and
transformers' own models, byte counts worked by hand for the shipped 1.5B and 7B configs, the activation count
against the tensors autograd saves in a small Qwen2, the refusal and its suggestion, and the CLI entry points."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from heal_core import memory_plan as mp
from heal_core.config import DistributedConfig, PaceConfig, load_config, parse_config
from heal_core.launch import LaunchError

runner = CliRunner()
GB80 = 80 * 10**9
SMALL = "configs/qwen3-8b-vllm.yaml"  # Qwen2.5-1.5B-Instruct student, pace.max_length 20480, batch 8
LARGE = "configs/r1-distill-32b-server.yaml"  # Qwen2.5-7B-Instruct student, the same pace
# The shipped configs' pace as it was before they were set to fit (one process, no checkpointing, Liger where
# installed): the worked examples below start from it; test_the_shipped_configs_fit_one_node plans them as shipped.
BEFORE = (
    "pace.distributed.strategy=ddp",
    "pace.distributed.processes_per_node=1",
    "pace.gradient_checkpointing=false",
    "pace.liger_kernel=auto",
)
BEFORE_SETS = [arg for assignment in BEFORE for arg in ("--set", assignment)]

# Ψ of each student, from its config.json (Qwen2: q/k/v biases; 0.5B and 1.5B tie lm_head to the embeddings)
PSI_05B = 151936 * 896 + 24 * (896 * 896 + 896 + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896) + 896
LAYER_15B = 1536 * 1536 + 1536 + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
PSI_15B = 151936 * 1536 + 28 * LAYER_15B + 1536
LAYER_7B = 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
PSI_7B = 2 * 152064 * 3584 + 28 * LAYER_7B + 3584


@pytest.fixture(autouse=True)
def no_liger(monkeypatch):
    """liger-kernel absent (pace.liger_kernel auto = off) unless a test says otherwise: plans must not depend on
    what this machine happens to have installed."""
    monkeypatch.setattr(mp, "liger_installed", lambda: False)


def _plan(path: str, overrides: tuple[str, ...] = (), gpus: int = 1, memory: int = GB80) -> mp.MemoryPlan:
    cfg = load_config(path, [*BEFORE, *overrides])
    return mp.plan(mp.shape_of(cfg.student.model), cfg.pace, gpus, memory, cfg.student.model)


def test_parameter_counts_are_the_published_ones():
    shapes = {
        name: mp.shape_of(name)
        for name in ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct")
    }
    assert [s.parameters for s in shapes.values()] == [PSI_05B, PSI_15B, PSI_7B]
    assert (PSI_05B, PSI_15B, PSI_7B) == (494_032_768, 1_543_714_304, 7_615_616_512)
    assert [round(s.parameters / 1e9, 2) for s in shapes.values()] == [0.49, 1.54, 7.62]  # the model cards'
    assert mp.shape_of("Qwen/Qwen2.5-7B") == shapes["Qwen/Qwen2.5-7B-Instruct"]  # base and -Instruct: one shape


def test_parameter_count_is_transformers_own():
    """The formula against the modules transformers builds from the same config (on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    for name in ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct"):
        fields = mp._bundled()[name]
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(Qwen2Config(**fields))
        assert sum(p.numel() for p in model.parameters()) == mp.shape_of(name).parameters


def test_shape_of_a_local_directory_and_an_unknown_model(tmp_path):
    from heal_core.demo import bundled_model

    demo = mp.shape_of(str(bundled_model("student")))
    assert (demo.hidden, demo.layers, demo.heads, demo.kv_heads, demo.vocab, demo.tied_embeddings) == (
        96,
        4,
        4,
        2,
        340,
        True,
    )
    with pytest.raises(ValueError, match="pass a local path"):
        mp.shape_of("nobody/no-such-model")
    with pytest.raises(ValueError, match="pass a local path"):
        mp.shape_of(str(tmp_path / "missing"))


def test_ddp_on_one_gpu_by_hand():
    """fp32 weights, grads, AdamW's two moments; autocast's bf16 copies of the matmul weights; no DDP buckets for
    one process (it trains without DDP)."""
    small, large = _plan(SMALL), _plan(LARGE)
    assert (small.world, small.micro_batch) == (1, 8)
    assert (small.parameters, small.gradients, small.optimizer, small.grad_buckets) == (
        4 * 1_543_714_304,
        4 * 1_543_714_304,
        8 * 1_543_714_304,
        0,
    )
    assert small.weight_copies == 2 * (1_543_714_304 - (2 * 28 + 1) * 1536)  # tied: all but the norms
    assert (large.parameters, large.gradients, large.optimizer, large.grad_buckets) == (
        4 * 7_615_616_512,
        4 * 7_615_616_512,
        8 * 7_615_616_512,
        0,
    )
    assert large.weight_copies == 2 * (7_615_616_512 - 152064 * 3584 - (2 * 28 + 1) * 3584)  # not the input embedding
    two = _plan(LARGE, ("pace.distributed.processes_per_node=2",), gpus=2)
    assert two.grad_buckets == 4 * 7_615_616_512


def test_sharded_strategies_over_four_gpus_by_hand():
    """ZeRO (the paper's 2Ψ + 2Ψ + 12Ψ): ZeRO-3 shards all three over 4, ZeRO-2 all but the bf16 parameters;
    FSDP shards fp32 parameters, gradients and moments. ZeRO-3 and FSDP hold two decoder layers and the embeddings
    gathered in bf16."""
    zero3 = _plan(LARGE, ("pace.distributed.strategy=deepspeed_zero3", "pace.distributed.processes_per_node=4"), 4)
    assert (zero3.world, zero3.micro_batch) == (4, 2)
    assert (zero3.parameters, zero3.gradients, zero3.optimizer) == (
        2 * 7_615_616_512 // 4,
        2 * 7_615_616_512 // 4,
        12 * 7_615_616_512 // 4,
    )
    assert zero3.weight_copies == 2 * (2 * 233_057_792 + 2 * 152064 * 3584) and LAYER_7B == 233_057_792
    zero2 = _plan(LARGE, ("pace.distributed.strategy=deepspeed_zero2", "pace.distributed.processes_per_node=4"), 4)
    assert (zero2.parameters, zero2.gradients, zero2.optimizer, zero2.weight_copies) == (
        2 * 7_615_616_512,
        2 * 7_615_616_512 // 4,
        12 * 7_615_616_512 // 4,
        0,
    )
    fsdp = _plan(LARGE, ("pace.distributed.strategy=fsdp", "pace.distributed.processes_per_node=4"), 4)
    assert (fsdp.parameters, fsdp.gradients, fsdp.optimizer) == (
        4 * 7_615_616_512 // 4,
        4 * 7_615_616_512 // 4,
        8 * 7_615_616_512 // 4,
    )


def test_logits_at_20480_tokens_by_hand():
    """bf16 logits + their fp32 upcast + the fp32 gradient, 10 bytes per token and vocabulary entry; the issue's
    figure: one 20,480-token sequence x 151,936 entries is 12.4 GB in fp32."""
    assert round(20480 * 151936 * 4 / 1e9, 1) == 12.4
    assert _plan(SMALL).logits == 8 * 20480 * 151936 * (2 + 4 + 4)  # micro-batch 8 on one GPU
    assert _plan(LARGE).logits == 8 * 20480 * 152064 * (2 + 4 + 4)
    one = _plan(SMALL, ("pace.gradient_accumulation_steps=8",))
    assert one.micro_batch == 1 and one.logits == 1 * 20480 * 151936 * (2 + 4 + 4)
    # Liger's fused loss: one fp32 chunk of next_pow2(ceil(20480 / ceil(151936 / 1536))) = 256 tokens, and the
    # hidden states' bf16 gradient
    fused = _plan(SMALL, ("pace.gradient_accumulation_steps=8", "pace.liger_kernel=on"))
    assert fused.liger and fused.logits == 256 * 151936 * 4 + 20480 * 1536 * 2


def test_small_config_plan_by_hand():
    """The 1.5B config as shipped (one GPU, micro-batch 8) does not fit 80 GB; with checkpointing and one sequence
    per micro-batch it does, every term written out."""
    shipped = _plan(SMALL)
    assert not shipped.fits and shipped.total > 800 * 2**30
    plan = _plan(SMALL, ("pace.gradient_checkpointing=true", "pace.gradient_accumulation_steps=8"))
    # per token and layer under autocast: 26h + 4q + 4k + 8i + 4 heads + 8; the final norm 10h + 4
    layer = 26 * 1536 + 4 * 1536 + 4 * 256 + 8 * 8960 + 4 * 12 + 8
    head = 10 * 1536 + 4
    assert plan.activations == 20480 * (28 * 4 * 1536 + layer + head)  # each layer's fp32 input + one recomputed
    assert plan.activations_other == 20480 * (28 * layer + head)
    assert (
        plan.total
        == (4 + 4 + 8) * 1_543_714_304
        + 2 * (1_543_714_304 - 57 * 1536)
        + plan.activations
        + 20480 * 151936 * 10
        + 2 * 2**30
    )
    assert plan.fits and plan.total <= 0.9 * GB80


def test_checkpointing_reduces_activations():
    for path in (SMALL, LARGE):
        off = _plan(path)
        on = _plan(path, ("pace.gradient_checkpointing=true",))
        assert on.activations < off.activations / 5
        assert (on.activations_other, off.activations_other) == (off.activations, on.activations)


def test_the_activation_count_is_what_autograd_saves():
    """Every floating-point tensor autograd keeps for the backward of a small Qwen2 (transformers' own modeling,
    sdpa), counted once per storage, against the plan: in fp32 (a CPU), under bf16 autocast over fp32 weights (ddp on
    a GPU; CPU autocast casts the same ops) and in bf16 weights (ZeRO), with and without a padded micro-batch. The
    measurement also holds the loss's fp32 log-softmax (the plan's logits term) and RoPE's cos/sin, and not the
    boolean mask transformers builds, which the plan counts once; autocast's weight casts are the plan's copies."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        hidden_size=64,
        intermediate_size=160,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=100,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    shape = mp.ModelShape.from_config(config.to_dict())
    length = 32
    for dtype, strategy, gpus in (("fp32", "ddp", 0), ("autocast", "ddp", 1), ("bf16", "deepspeed_zero3", 1)):
        for batch in (1, 2):
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(config)
            if dtype == "bf16":
                model = model.to(torch.bfloat16)
            ids = torch.randint(0, 100, (batch, length))
            mask = torch.ones(batch, length, dtype=torch.long)
            mask[0, : length // 4] = 0
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "autocast"):
                loss = model(input_ids=ids, attention_mask=mask if batch > 1 else None, labels=ids).loss
            activations, casts = _saved_bytes(loss, {p.untyped_storage().data_ptr() for p in model.parameters()})
            pace = PaceConfig(
                batch_size=batch,
                max_length=length,
                liger_kernel="off",
                distributed=DistributedConfig(strategy=strategy),
            )
            plan = mp.plan(shape, pace, gpus, GB80)
            boolean_mask = batch * length * length if batch > 1 else 0
            rope = 2 * length * shape.head_dim * (2 if dtype == "bf16" else 4)
            log_softmax = batch * length * shape.vocab * 4
            # the 4 bytes left: the loss's fp32 scalar weight
            assert activations - 4 == plan.activations - boolean_mask + rope + log_softmax, (dtype, batch)
            if dtype == "autocast":  # the bf16 weights the matmuls keep; the plan also counts the biases' casts
                assert casts == plan.weight_copies - 2 * shape.layers * (64 + 2 * 32)


def _saved_bytes(loss, params: set[int]) -> tuple[int, int]:
    """(bytes of the floating-point tensors autograd saved for ``loss``'s backward, those of them that are casts of
    weights for a matmul), each storage once, the parameters themselves left out."""
    import torch

    saved: dict[int, int] = {}
    weights: dict[int, int] = {}
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attribute in dir(node):
            tensor = getattr(node, attribute) if attribute.startswith("_saved_") else None
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in params:
                    (weights if attribute == "_saved_mat2" else saved)[storage.data_ptr()] = storage.nbytes()
        stack += [child for child, _ in node.next_functions]
    return sum(saved.values()), sum(weights.values())


def test_large_config_is_refused_on_one_80gb_gpu_and_the_suggestion_fits():
    cfg = load_config(LARGE, list(BEFORE))
    shape = mp.shape_of(cfg.student.model)
    plan = mp.plan(shape, cfg.pace, 1, GB80, cfg.student.model)
    assert not plan.fits
    suggestion = mp.suggest(shape, cfg.pace, 1, GB80)
    assert suggestion == (
        "pace.distributed.strategy=deepspeed_zero3 pace.distributed.processes_per_node=4 "
        "pace.gradient_checkpointing=true pace.liger_kernel=on"
    )
    with pytest.raises(mp.MemoryPlanError) as refused:
        mp.check(plan, suggestion)
    message = str(refused.value)
    assert f"{plan.total / 2**30:.1f} GiB per GPU" in message and "74.5 GiB (80.0 GB)" in message
    assert "--set pace.distributed.strategy=deepspeed_zero3 --set pace.distributed.processes_per_node=4" in message
    assert "liger-kernel" in message  # not installed here: the message says the workers need it
    fixed = load_config(LARGE, [*BEFORE, *suggestion.split()])
    replanned = mp.plan(shape, fixed.pace, 1, GB80, fixed.student.model)
    assert replanned.fits and replanned.world == 4 and replanned.liger
    mp.check(replanned, None)


def test_suggestions_with_liger_installed_and_when_nothing_fits(monkeypatch):
    monkeypatch.setattr(mp, "liger_installed", lambda: True)  # auto = on: a suggestion does not repeat it
    cfg = load_config(LARGE, list(BEFORE))
    shape = mp.shape_of(cfg.student.model)
    suggestion = mp.suggest(shape, cfg.pace, 1, GB80)
    assert suggestion is not None and "liger" not in suggestion
    assert mp.plan(shape, load_config(LARGE, [*BEFORE, *suggestion.split()]).pace, 1, GB80).fits
    small = 8 * 10**9
    assert mp.suggest(shape, cfg.pace, 1, small) is None
    with pytest.raises(mp.MemoryPlanError, match="nothing heal can set fits on up to 8 GPUs per node"):
        mp.check(mp.plan(shape, cfg.pace, 1, small), None)
    small_cfg = load_config(SMALL, list(BEFORE)).pace
    assert mp.suggest(shape, small_cfg, 1, GB80) is not None  # small fits with a change, not as is


def test_a_batch_that_does_not_divide_is_refused_by_the_launcher_rule():
    cfg = load_config(LARGE, ["pace.distributed.processes_per_node=3"])
    with pytest.raises(LaunchError, match="does not divide over 3"):
        mp.plan(mp.shape_of(cfg.student.model), cfg.pace, 3, GB80)


def test_format_plan_shows_both_activation_options():
    text = mp.format_plan(_plan(LARGE))
    assert "GiB per GPU" in text and "activations (checkpointing off)" in text
    assert "activations with checkpointing on: not counted" in text and "does NOT fit" in text


def test_parse_size():
    assert mp.parse_size("80GB") == 80 * 10**9
    assert mp.parse_size("80GiB") == 80 * 2**30
    assert mp.parse_size(" 80 gib ") == 80 * 2**30
    assert mp.parse_size("1.5TB") == 1_500_000_000_000
    assert mp.parse_size("141000000000") == 141 * 10**9
    for bad in ("", "GB", "80XB", "-1GB", "0", "eighty", "80 G B"):
        with pytest.raises(ValueError, match="is not a memory size: write e.g. 80GB"):
            mp.parse_size(bad)


def test_config_check_refuses_the_large_config_on_one_gpu_and_takes_the_suggestion():
    refused = runner.invoke(app, ["config", "check", LARGE, *BEFORE_SETS, "--gpus", "1", "--gpu-memory", "80GB"])
    assert refused.exit_code == 2, refused.output
    assert "does NOT fit" in refused.output and "GiB per GPU" in refused.output
    assert "--set pace.distributed.strategy=deepspeed_zero3" in refused.output
    cfg = load_config(LARGE, list(BEFORE))
    suggestion = mp.suggest(mp.shape_of(cfg.student.model), cfg.pace, 1, GB80)
    sets = [arg for assignment in suggestion.split() for arg in ("--set", assignment)]
    fits = runner.invoke(app, ["config", "check", LARGE, *BEFORE_SETS, *sets, "--gpus", "1", "--gpu-memory", "80GB"])
    assert fits.exit_code == 0, fits.output
    assert "valid" in fits.output and ": fits" in fits.output


def test_config_check_without_gpus_only_validates_and_plans_a_cpu_or_the_demo_student(tmp_path):
    plain = runner.invoke(app, ["config", "check", SMALL])
    assert plain.exit_code == 0 and "memory plan" not in plain.output
    cpu = runner.invoke(app, ["config", "check", "configs/cpu-smoke.yaml", "--gpus", "0"])
    assert cpu.exit_code == 0 and "no GPU" in cpu.output and "fp32 (CPU)" in cpu.output
    demo = tmp_path / "demo.yaml"
    demo.write_text("pace: {epochs: 1}\n")
    result = runner.invoke(app, ["config", "check", str(demo), "--gpus", "1", "--gpu-memory", "24GB"])
    assert result.exit_code == 0 and "bundled demo student" in result.output and ": fits" in result.output
    bad = runner.invoke(app, ["config", "check", SMALL, "--gpus", "1", "--gpu-memory", "80XB"])
    assert bad.exit_code == 2 and "is not a memory size" in bad.output


def test_train_plan_prints_the_stored_config_plan_without_training(tmp_path):
    from heal_core.run import Run

    for run_id, extra in (
        ("big", []),
        (
            "sharded",
            mp.suggest(mp.shape_of("Qwen/Qwen2.5-7B-Instruct"), load_config(LARGE, list(BEFORE)).pace, 1, GB80).split(),
        ),
    ):
        cfg = load_config(LARGE, [f"storage.uri={tmp_path}", *BEFORE, *extra])
        Run.of(cfg, run_id).pin(cfg)
    refused = runner.invoke(
        app, ["train", "big", "--storage", str(tmp_path), "--plan", "--gpus", "1", "--gpu-memory", "80GB"]
    )
    assert refused.exit_code == 2 and "--set pace.distributed.strategy=deepspeed_zero3" in refused.output
    fits = runner.invoke(
        app, ["train", "sharded", "--storage", str(tmp_path), "--plan", "--gpus", "1", "--gpu-memory", "80GB"]
    )
    assert fits.exit_code == 0 and ": fits" in fits.output
    shorter = runner.invoke(
        app,
        [
            "train",
            "sharded",
            "--storage",
            str(tmp_path),
            "--plan",
            "--gpus",
            "1",
            "--gpu-memory",
            "80GB",
            "--set",
            "pace.max_length=4096",
        ],
    )
    assert shorter.exit_code == 0 and "x 4096 tokens" in shorter.output
    assert not (tmp_path / "runs" / "sharded.train").exists() and len(list((tmp_path / "runs").iterdir())) == 2
    stray = runner.invoke(app, ["train", "big", "--storage", str(tmp_path), "--gpus", "1"])
    assert stray.exit_code == 2 and "--plan" in stray.output


def test_parse_config_reads_the_suggested_liger_value_as_a_string():
    """YAML 1.1 reads a bare on as true: the setting takes it as the word written, so the suggestion pastes as it is."""
    assert parse_config({}, ["pace.liger_kernel=on"]).pace.liger_kernel == "on"


def test_the_shipped_configs_fit_one_node_of_eight_80gb_gpus():
    """As shipped: the 1.5B student with DDP over 8 GPUs, checkpointing and Liger, the 7B with ZeRO-3 over 8 and
    checkpointing (the figures the configs' comments and the README quote); either on one GPU is refused."""
    small = mp.plan(mp.shape_of("Qwen/Qwen2.5-1.5B-Instruct"), load_config(SMALL).pace, 8, GB80)
    large = mp.plan(mp.shape_of("Qwen/Qwen2.5-7B-Instruct"), load_config(LARGE).pace, 8, GB80)
    assert (small.world, small.micro_batch, small.liger, small.gradient_checkpointing) == (8, 1, True, True)
    assert (large.world, large.strategy, large.gradient_checkpointing) == (8, "deepspeed_zero3", True)
    assert small.fits and large.fits
    assert (f"{small.total / 2**30:.1f}", f"{large.total / 2**30:.1f}") == ("39.7", "56.8")
    for path, model in ((SMALL, "Qwen/Qwen2.5-1.5B-Instruct"), (LARGE, "Qwen/Qwen2.5-7B-Instruct")):
        assert not mp.plan(mp.shape_of(model), load_config(path).pace, 1, GB80).fits
