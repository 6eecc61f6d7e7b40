"""The memory estimate: model states against DeepSpeed's own estimators, activations against what autograd
really saves on CPU, parameter counts against transformers' models, and `alignment check --gpu_memory`."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess

import pytest
import torch
import yaml

from alignment.memory import (
    GiB,
    ModelShape,
    TrainingShape,
    estimate,
    model_shape,
    model_state_bytes,
    saved_activation_bytes,
)
from alignment.target import LaunchTarget, read_accelerate_config

from .conftest import REPO

# A Mistral-7B-v0.1 config.json, written out so that no test needs the Hub.
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
}  # fmt: skip
QWEN25_05B = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
}  # fmt: skip


def full_ft(**changes) -> TrainingShape:
    return dataclasses.replace(TrainingShape(batch_size=1, max_length=1024), **changes)


# --- 1. Model states: DeepSpeed's estimators ----------------------------------------------------------------


@pytest.fixture(scope="module")
def deepspeed_estimators():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs,
        estimate_zero3_model_states_mem_needs_all_cold,
    )
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    return (estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs,
            estimate_zero2_model_states_mem_needs_all_cold, estimate_zero3_model_states_mem_needs_all_cold)  # fmt: skip


def gpu_states(shape: ModelShape, target: LaunchTarget) -> tuple[float, float]:
    states = model_state_bytes(shape, full_ft(), target)
    return states.weights + states.gradients + states.optimizer_states, states.host


@pytest.mark.parametrize("config", [MISTRAL_7B, QWEN25_05B], ids=["mistral-7b", "qwen2.5-0.5b"])
@pytest.mark.parametrize("nodes,per_node", [(1, 8), (2, 8), (1, 4)])
def test_model_states_equal_deepspeeds_estimators(config, nodes, per_node, deepspeed_estimators, capsys):
    zero2, zero3, zero2_table, zero3_table = deepspeed_estimators
    shape = model_shape(config)
    params, largest = shape.parameters, shape.largest_module_params
    launch = LaunchTarget(processes=nodes * per_node, machines=nodes)
    for offload in (False, True):
        target = dataclasses.replace(launch, zero_stage=2, offload_optimizer=offload)
        cpu, gpu = zero2(params, per_node, nodes, cpu_offload=offload)
        ours, host = gpu_states(shape, target)
        assert ours == pytest.approx(gpu, abs=1)
        if offload:
            assert host == pytest.approx(cpu, rel=1e-9)
        for offload_params in (False, True) if offload else (False,):
            target = dataclasses.replace(
                launch, zero_stage=3, offload_optimizer=offload, offload_params=offload_params
            )
            cpu, gpu, _ = zero3(params, largest, per_node, nodes, offload, offload_params, zero_init=True)
            ours, host = gpu_states(shape, target)
            assert ours == pytest.approx(gpu, abs=1)
            if offload:
                assert host == pytest.approx(cpu, rel=1e-9)
    # the printed tables agree too (the functions the DeepSpeed docs tell you to call)
    zero3_table(params, largest, per_node, nodes)
    rows = re.findall(r"\|\s+([\d.]+)GB \| (offload_param=\S+), (offload_optimizer=\S+), zero_init=1",
                      capsys.readouterr().out)  # fmt: skip
    assert len(rows) == 3
    for gpu_gb, param, optimizer in rows:
        target = dataclasses.replace(launch, zero_stage=3, offload_params="cpu" in param,
                                     offload_optimizer="cpu" in optimizer)  # fmt: skip
        assert f"{gpu_states(shape, target)[0] / GiB:.2f}" == gpu_gb
    zero2_table(params, per_node, nodes)
    rows = re.findall(r"\|\s+([\d.]+)GB \| offload_optimizer=(\S+)", capsys.readouterr().out)
    assert len(rows) == 2
    for gpu_gb, device in rows:
        target = dataclasses.replace(launch, zero_stage=2, offload_optimizer="cpu" in device)
        assert f"{gpu_states(shape, target)[0] / GiB:.2f}" == gpu_gb


def test_plain_ddp_keeps_no_master_copy_and_fp32_weights_cost_double():
    """HF Trainer on one GPU: bf16 weights give 2 + 2 + 4 bytes per parameter; fp32 weights under bf16 autocast
    4 + 4 + 8 (plus the bf16 copies autocast keeps); DDP adds its gradient buckets."""
    shape = model_shape(QWEN25_05B)
    one = LaunchTarget(processes=1)
    bf16 = model_state_bytes(shape, full_ft(), one)
    assert (bf16.weights, bf16.gradients, bf16.optimizer_states) == (2 * shape.parameters, 2 * shape.parameters,
                                                                    4 * shape.parameters)  # fmt: skip
    fp32 = model_state_bytes(shape, full_ft(weight_dtype="float32", activation_checkpointing=False), one)
    assert fp32.gradients == 4 * shape.parameters and fp32.optimizer_states == 8 * shape.parameters
    assert (
        fp32.weights == 4 * shape.parameters + 2 * shape.linear_params
    )  # autocast's copies, kept for backward
    eight_bit = model_state_bytes(shape, full_ft(optimizer="paged_adamw_8bit"), one)
    assert eight_bit.optimizer_states == 2 * shape.parameters
    assert model_state_bytes(shape, full_ft(optimizer="sgd"), one).optimizer_states == 0
    ddp = model_state_bytes(shape, full_ft(), LaunchTarget(processes=8, distributed="ddp"))
    assert ddp.gradients == 2 * bf16.gradients


# --- 2. Activations: measured on CPU ------------------------------------------------------------------------


def measured_saved_bytes(model, batch: int, length: int, fused_head: bool = False) -> int:
    """Bytes autograd saves for backward in one forward + loss: the unique storages the saved-tensor hooks see,
    parameters left out. One row is left-padded, as padded batches are."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, : length // 4] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        if fused_head:
            out = model(input_ids=ids, attention_mask=mask, labels=ids, fused_lm_head=True)
        else:
            out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
    del out
    return sum(storages.values())


LLAMAS = {
    "tiny": dict(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "30M": dict(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                num_attention_heads=8, num_key_value_heads=4),
}  # fmt: skip


@pytest.mark.parametrize("size", list(LLAMAS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_saved_activations_match_what_autograd_saves(size, attn):
    """Within 3% (measured: 0.991-0.9996 of the real bytes; the formula leaves out per-token scalars, rotary
    tables and token ids), at two (batch, length) points, fp32 and bf16 weights, with and without (reentrant)
    checkpointing."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMAS[size], max_position_embeddings=1024)
    shape = model_shape(config.to_dict())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    points = [(2, 128), (1, 384)] if size == "tiny" else [(2, 64), (1, 256)]
    for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
        model = model.to(dtype).train()
        for checkpointing in (False, True):
            # reentrant: the layer inputs pass through the hooks (non-reentrant keeps them aside)
            if checkpointing:
                model.activation_checkpointing_enable({"use_reentrant": True})
            for batch, length in points:
                t = TrainingShape(batch_size=batch, max_length=length, weight_dtype=name,
                                  precision="bf16" if name == "bfloat16" else "fp32", attn_implementation=attn,
                                  activation_checkpointing=checkpointing, logits="full")  # fmt: skip
                measured = measured_saved_bytes(model, batch, length)
                predicted = saved_activation_bytes(shape, t)
                assert predicted == pytest.approx(measured, rel=0.03), (name, checkpointing, batch, length)
            model.activation_checkpointing_disable()


def test_saved_activations_with_trls_fused_lm_head():
    """TRL 1.16's trainers never build the (tokens x vocab) logits: the head's input and two numbers a token."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    from trl.trainer.utils import add_fused_lm_head

    config = LlamaConfig(**LLAMAS["30M"], max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    add_fused_lm_head(model)
    t = TrainingShape(batch_size=2, max_length=128, weight_dtype="float32", precision="fp32",
                      activation_checkpointing=False, logits="fused")  # fmt: skip
    measured = measured_saved_bytes(model, 2, 128, fused_head=True)
    assert saved_activation_bytes(model_shape(config.to_dict()), t) == pytest.approx(measured, rel=0.03)
    full = saved_activation_bytes(model_shape(config.to_dict()), dataclasses.replace(t, logits="full"))
    assert full > measured * 1.05  # the vocab-sized log-softmax is what the fused head saves


def test_fp32_weights_under_bf16_autocast_keep_bf16_copies_of_the_weights():
    """TRL's default `dtype` is float32: with `bf16: true` autocast casts each linear's input and weight to bf16,
    and backward keeps both; the estimate puts the weight copies with the weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMAS["30M"], max_position_embeddings=1024)
    shape = model_shape(config.to_dict())
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    t = TrainingShape(batch_size=2, max_length=64, weight_dtype="float32", precision="bf16",
                      activation_checkpointing=False, logits="full")  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        measured = measured_saved_bytes(model, 2, 64)
    copies = model_state_bytes(shape, t, LaunchTarget(processes=1)).weights - 4 * shape.parameters
    assert saved_activation_bytes(shape, t) + copies == pytest.approx(measured, rel=0.03)


@pytest.mark.parametrize("targets", ["all-linear", ("q_proj", "v_proj"), ("o_proj", "down_proj")])
def test_saved_activations_with_lora(targets):
    """A frozen linear saves no input; an adapter saves its input and its rank-r middle. Without dropout: on CPU
    dropout keeps its mask in the input's dtype where CUDA keeps a bool, so the estimate (made for CUDA) is
    measured here with dropout off."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMAS["30M"], max_position_embeddings=1024)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, target_modules=list(targets) if isinstance(targets, tuple) else targets,
                                            lora_dropout=0.0), autocast_adapter_dtype=False).train()  # fmt: skip
    model.enable_input_require_grads()  # as TRL does with checkpointing; here it makes the first layer's input count
    t = TrainingShape(batch_size=2, max_length=128, precision="bf16", activation_checkpointing=False, logits="full",
                      peft="lora", lora_r=8, lora_targets=targets, lora_dropout=0.0)  # fmt: skip
    measured = measured_saved_bytes(model, 2, 128)
    assert saved_activation_bytes(model_shape(config.to_dict()), t) == pytest.approx(measured, rel=0.03)


# --- 3. Parameter counts ---------------------------------------------------------------------------------


TINY = dict(vocab_size=500, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)  # fmt: skip


@pytest.mark.parametrize(
    "model_type,extra",
    [
        ("llama", {"tie_word_embeddings": False}),
        ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
        ("qwen2", {"tie_word_embeddings": False}),
        ("qwen2", {"tie_word_embeddings": True}),
        ("mistral", {"tie_word_embeddings": False, "head_dim": 16}),
        ("gemma", {}),  # tied by default
        ("gemma", {"tie_word_embeddings": False, "head_dim": 32}),
        ("qwen3", {"tie_word_embeddings": False, "head_dim": 16}),
    ],
)
def test_parameter_count_equals_the_models(model_type, extra):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **TINY, **extra)
    model = AutoModelForCausalLM.from_config(config)
    shape = model_shape(config.to_dict())
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert (shape.parameters, shape.largest_module_params) == model_to_params(model)  # DeepSpeed's own count
    assert not shape.guessed


def test_an_unknown_model_type_is_counted_as_a_llama_with_a_note():
    shape = model_shape({"model_type": "mystery", "hidden_size": 64, "num_attention_heads": 4,
                         "num_hidden_layers": 2, "vocab_size": 100})  # fmt: skip
    assert shape.guessed and shape.intermediate_size == 256 and shape.parameters > 0


# --- 4. `alignment check --gpu_memory` ---------------------------------------------------------------------


def check(*args: str) -> subprocess.CompletedProcess:
    """`alignment check ARGS` in this process, from the repository root: stdout, stderr, exit status."""
    from alignment.cli import main

    out, err, status = io.StringIO(), io.StringIO(), 0
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["check", *args])
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


@pytest.fixture
def mistral_folder(tmp_path):
    """A folder with Mistral-7B's config.json (and a stub tokenizer file, which the dry run looks for)."""
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_7B))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    return str(tmp_path)


ZEPHYR_FULL = "recipes/zephyr-7b-beta/sft/config_full.yaml"
ZERO3 = ("--accelerate_config", "accelerate_configs/zero3.yaml", "--num_processes", "8")


def memory_of(*args: str) -> dict:
    done = check(*args)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["memory"]


def test_check_prints_the_estimate_and_a_verdict(mistral_folder):
    memory = memory_of(ZEPHYR_FULL, *ZERO3, "--gpu_memory", "80", "--model_name_or_path", mistral_folder)
    parts = memory["breakdown_gib"]
    assert set(parts) >= {
        "weights",
        "gradients",
        "optimizer_states",
        "activations",
        "logits_and_loss",
        "overhead",
    }
    assert memory["per_gpu_gib"] == pytest.approx(sum(parts.values()), abs=0.1)
    # ZeRO-3 over 8: 18 bytes per parameter split 8 ways plus the gathered embedding (DeepSpeed's 4L)
    states = parts["weights"] + parts["gradients"] + parts["optimizer_states"]
    assert states == pytest.approx((18 * 7.2418e9 / 8 + 4 * 32000 * 4096) / GiB, rel=0.01)
    assert memory["fits"] is True and memory["verdict"].startswith("fits in 80 GiB")
    assert "7.24B parameters" in memory["assumptions"][0]
    # without --gpu_memory: the estimate only
    plain = memory_of(ZEPHYR_FULL, *ZERO3, "--model_name_or_path", mistral_folder)
    assert plain["per_gpu_gib"] == memory["per_gpu_gib"] and "fits" not in plain


def test_too_little_memory_gives_fixes_and_the_first_one_fits(mistral_folder):
    memory = memory_of(ZEPHYR_FULL, *ZERO3, "--gpu_memory", "24", "--model_name_or_path", mistral_folder)
    assert memory["fits"] is False and "does not fit in 24 GiB" in memory["verdict"]
    first = memory["fixes"][0]
    assert first["fits"] and "same global batch" in first["change"]
    # applied for real: the recipe with the first fix's overrides, estimated again, fits
    again = memory_of(ZEPHYR_FULL, *ZERO3, "--gpu_memory", "24", "--model_name_or_path", mistral_folder,
                      *first["overrides"].split())  # fmt: skip
    assert again["fits"] is True and again["per_gpu_gib"] == first["per_gpu_gib"]
    plan = yaml.safe_load(check(ZEPHYR_FULL, *ZERO3, "--model_name_or_path", mistral_folder,
                                *first["overrides"].split()).stdout)  # fmt: skip
    assert plan["global_batch_size"] == 128  # the global batch did not change
    # a run that needs a launch change: the fix names the accelerate config, which, used, fits
    memory = memory_of(ZEPHYR_FULL, "--accelerate_config", "accelerate_configs/ddp.yaml", "--gpu_memory", "60",
                       "--model_name_or_path", mistral_folder)  # fmt: skip
    launch = next(f for f in memory["fixes"] if "accelerate_config" in f)
    again = memory_of(ZEPHYR_FULL, "--accelerate_config", launch["accelerate_config"], "--gpu_memory", "60",
                      "--model_name_or_path", mistral_folder)  # fmt: skip
    assert again["fits"] is True


def test_an_unreachable_hub_model_is_a_one_line_note(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    memory = memory_of(ZEPHYR_FULL, *ZERO3, "--gpu_memory", "80")
    assert isinstance(memory, str) and "\n" not in memory
    assert memory.startswith("not estimated") and "mistralai/Mistral-7B-v0.1" in memory


@pytest.mark.parametrize("bad", ["0", "-8", "lots", "nan"])
def test_a_bad_gpu_memory_is_a_one_line_error(bad):
    done = check(ZEPHYR_FULL, "--gpu_memory", bad)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error:") and "--gpu_memory" in line and "positive number of GiB" in line


# --- 5. QLoRA --------------------------------------------------------------------------------------------


def test_qlora_is_far_below_the_full_fine_tune(mistral_folder):
    one_gpu = ("--accelerate_config", "accelerate_configs/ddp.yaml", "--num_processes", "1")
    full = memory_of(ZEPHYR_FULL, *one_gpu, "--model_name_or_path", mistral_folder)
    qlora = memory_of(
        "recipes/zephyr-7b-beta/sft/config_qlora.yaml", *one_gpu, "--model_name_or_path", mistral_folder
    )
    assert qlora["per_gpu_gib"] * 5 < full["per_gpu_gib"]
    # 4-bit linears (~0.56 bytes each with their absmax) and 16-bit embeddings and head
    assert qlora["breakdown_gib"]["weights"] == pytest.approx(
        (6.98e9 * 0.5625 + 2 * 32000 * 4096 * 2) / GiB, rel=0.01
    )
    assert "gradients" not in qlora["breakdown_gib"] and qlora["breakdown_gib"]["lora_adapters"] < 1


# --- The launch's sharding, read from accelerate configs ---------------------------------------------------


def test_launch_target_reads_sharding_from_accelerate_configs():
    folder = REPO / "accelerate_configs"
    zero3 = read_accelerate_config(str(folder / "zero3_offload.yaml"))
    assert (zero3.zero_stage, zero3.offload_optimizer, zero3.offload_params) == (3, True, True)
    assert zero3.describe() == "deepspeed zero-3 (offload optimizer, param)"
    zero2 = read_accelerate_config(str(folder / "zero2.yaml"))
    assert (zero2.zero_stage, zero2.offload_optimizer, zero2.fsdp_version) == (2, False, None)
    fsdp = read_accelerate_config(str(folder / "fsdp.yaml"))
    assert (fsdp.fsdp_version, fsdp.fsdp_sharding, fsdp.zero_stage, fsdp.describe()) == (
        2,
        "FULL_SHARD",
        None,
        "fsdp2",
    )
    ddp = read_accelerate_config(str(folder / "ddp.yaml"))
    assert (ddp.zero_stage, ddp.fsdp_version, ddp.describe()) == (None, None, "ddp")


def test_dpo_counts_pairs_and_the_reference_unless_precomputed():
    shape = model_shape(MISTRAL_7B)
    target = LaunchTarget(processes=8, zero_stage=3)
    sft = estimate(shape, full_ft(), target)
    dpo = estimate(shape, full_ft(sequences_per_example=2, reference_model=True), target)
    assert dpo.activations > 1.9 * sft.activations
    assert dpo.reference_model == pytest.approx(2 * shape.parameters / 8 + 2 * shape.largest_module_params)
    lora = estimate(shape, full_ft(peft="lora", sequences_per_example=2, reference_model=True), target)
    assert lora.reference_model == 0  # PEFT: the base with the adapter disabled
