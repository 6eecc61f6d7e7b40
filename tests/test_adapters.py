"""Continuing from a LoRA stage: the previous adapter is merged and the recipe's own adapter is trained on top."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from alignment.errors import RecipeError
from alignment.model import MERGED_BASE, load_model, load_reference_model, load_tokenizer, peft_config_for
from alignment.recipe import parse_recipe

from .conftest import TINY_DPO, TINY_SFT, run_script

LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def make_adapter(workdir: Path, name: str = "lora", seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A rank-4 LoRA on the tiny base with non-zero B (a fresh one is a no-op), saved as a LoRA stage saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained("data/tiny/model"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    generator = torch.Generator().manual_seed(seed)
    for param_name, param in model.named_parameters():
        if "lora_B" in param_name:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
    out = workdir / "runs" / name
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained("data/tiny/model").save_pretrained(out)
    return out, model.eval()


def dpo_recipe(workdir: Path, model: Path | str, *overrides: str):
    output = ["--output_dir", str(workdir / "runs" / "dpo"), "--report_to", "none"]
    return parse_recipe("dpo", [str(TINY_DPO), "--model_name_or_path", str(model), *output, *overrides])


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer.encode("reverse abc")])).logits


def adapter_ranks(named_tensors) -> set[int]:
    """Every LoRA rank in a state dict: lora_A is (r, in), lora_B is (out, r)."""
    return {t.shape[0] if "lora_A" in n else t.shape[1] for n, t in named_tensors if "lora_" in n}


def test_an_adapter_stage_is_merged_and_the_recipe_trains_a_fresh_adapter_at_its_rank(
    workdir, monkeypatch, caplog
):
    from peft import get_peft_model

    monkeypatch.chdir(workdir)
    adapter, previous = make_adapter(workdir)
    recipe = dpo_recipe(workdir, adapter, "--use_peft", "true", "--lora_r", "12", "--lora_alpha", "24",
                        "--lora_target_modules", "all-linear")  # fmt: skip
    tokenizer = load_tokenizer(recipe)
    model = load_model(recipe, tokenizer)
    assert not hasattr(model, "peft_config") and not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(
        logits(model, tokenizer), logits(previous, tokenizer)
    )  # the previous stage, merged

    with caplog.at_level(logging.INFO, logger="alignment"):
        config = peft_config_for(recipe, model)
    assert (config.r, config.lora_alpha, config.target_modules) == (12, 24, "all-linear")
    wrapped = get_peft_model(model, config)  # what the trainer does with it
    assert adapter_ranks(wrapped.named_parameters()) == {12}
    trainable, total = wrapped.get_nb_trainable_parameters()
    assert (
        f"r=12, alpha=24, targets all-linear; {trainable:,} trainable of {total:,} parameters" in caplog.text
    )
    assert load_reference_model(recipe, tokenizer) is None  # TRL disables the new adapter: the merged stage


def test_a_quantized_recipe_merges_in_full_precision_once_and_loads_the_merge_in_4bit(
    workdir, monkeypatch, caplog
):
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(workdir)
    adapter, previous = make_adapter(workdir)
    recipe = dpo_recipe(workdir, adapter, "--load_in_4bit", "true", "--use_peft", "true", "--lora_r", "16")
    tokenizer = load_tokenizer(recipe)
    merged = workdir / "runs" / "dpo" / MERGED_BASE
    with caplog.at_level(logging.INFO, logger="alignment"):
        model = load_model(recipe, tokenizer)
    assert "cannot absorb the adapter" in caplog.text
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert not hasattr(model, "peft_config") and model.name_or_path == str(merged)
    full = AutoModelForCausalLM.from_pretrained(merged)
    torch.testing.assert_close(logits(full, tokenizer), logits(previous, tokenizer))  # the merge is exact
    assert peft_config_for(recipe, model).r == 16

    # A rerun reuses the merge; a different adapter in the same place is merged again.
    weights = merged / "model.safetensors"
    built = weights.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alignment"):
        load_model(recipe, tokenizer)
    assert "reusing" in caplog.text and weights.stat().st_mtime_ns == built
    _, other = make_adapter(workdir, seed=1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alignment"):
        load_model(recipe, tokenizer)
    assert "reusing" not in caplog.text
    remerged = AutoModelForCausalLM.from_pretrained(merged)
    torch.testing.assert_close(logits(remerged, tokenizer), logits(other, tokenizer))
    assert not (merged.parent / f"{MERGED_BASE}.partial").exists()


def test_what_cannot_be_honoured_is_refused_naming_the_key(workdir, monkeypatch):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(workdir)
    prompt = workdir / "runs" / "prompt"  # prefix tuning: keys and values at every layer, nothing to merge
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    get_peft_model(AutoModelForCausalLM.from_pretrained("data/tiny/model"), config).save_pretrained(prompt)
    AutoTokenizer.from_pretrained("data/tiny/model").save_pretrained(prompt)
    for quantized in ((), ("--load_in_4bit", "true")):
        recipe = dpo_recipe(workdir, prompt, "--use_peft", "true", *quantized)
        with pytest.raises(RecipeError, match=r"`model_name_or_path`: .*PREFIX_TUNING adapter"):
            load_model(recipe, load_tokenizer(recipe))
    assert not (workdir / "runs" / "dpo" / MERGED_BASE).exists()

    recipe = dpo_recipe(
        workdir, "data/tiny/model", "--use_peft", "true", "--lora_target_modules", "nope_proj"
    )
    model = load_model(recipe, load_tokenizer(recipe))
    with pytest.raises(RecipeError, match=r"`lora_target_modules`: .*nope_proj"):
        peft_config_for(recipe, model)


def small_eval(workdir: Path, recipe: Path) -> Path:
    """The tiny recipe with 16 held-out training rows as its eval set: its 200-row test split in 4-bit costs ~10 s."""
    config = yaml.safe_load(recipe.read_text())
    config["dataset_mixture"].pop("test_split")
    config["dataset_mixture"]["test_split_size"] = 16
    path = workdir / f"{recipe.parent.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_qlora_dpo_after_qlora_sft_trains_its_own_rank_against_the_sft_model(workdir):
    """QLoRA SFT at r=8, then QLoRA DPO at r=16 from its adapter folder: the DPO output is a rank-16 adapter, and
    step 1's sigmoid loss is ln 2 (the reference, the policy with the new adapter off, is the starting policy)."""
    from peft import AutoPeftModelForCausalLM
    from safetensors import safe_open

    sft_recipe, dpo_recipe_path = (small_eval(workdir, recipe) for recipe in (TINY_SFT, TINY_DPO))
    qlora = ("--use_peft", "true", "--load_in_4bit", "true", "--lora_target_modules", "all-linear",
             "--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "no")  # fmt: skip
    sft = workdir / "runs" / "qlora-sft"
    run_script("sft", sft_recipe, *qlora, "--lora_r", "8", "--lora_alpha", "16", "--max_steps", "4",
               "--per_device_train_batch_size", "16", "--learning_rate", "5e-3", "--output_dir", str(sft),
               cwd=workdir)  # fmt: skip
    assert json.loads((sft / "adapter_config.json").read_text())["r"] == 8

    out = workdir / "runs" / "qlora-dpo"
    done = run_script("dpo", dpo_recipe_path, *qlora, "--model_name_or_path", str(sft), "--lora_r", "16",
                      "--lora_alpha", "32", "--max_steps", "2", "--per_device_train_batch_size", "8",
                      "--logging_steps", "1", "--loss_type", "sigmoid", "--output_dir", str(out),
                      cwd=workdir)  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32)
    assert config["base_model_name_or_path"] == str(out / MERGED_BASE)
    assert json.loads((out / MERGED_BASE / "merged_from.json").read_text())["adapter"] == str(sft.resolve())
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        tensors = [(name, f.get_tensor(name)) for name in f.keys()]
    assert adapter_ranks(tensors) == {16}
    assert {name.split(".")[-3] for name, _ in tensors} == LINEAR  # all-linear, two layers
    assert any(t.abs().sum() > 0 for name, t in tensors if "lora_B" in name)  # trained, not the zero init
    assert "training a new LoRA adapter: r=16" in done.stdout

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    first = next(e for e in history if "loss" in e)
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)

    reloaded = AutoPeftModelForCausalLM.from_pretrained(out)
    assert reloaded.peft_config["default"].r == 16
    with torch.no_grad():
        assert torch.isfinite(reloaded(torch.tensor([[1, 2, 3]])).logits).all()
