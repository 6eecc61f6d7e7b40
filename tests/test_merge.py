"""`scripts/merge_lora.py` / `alignment merge`: an adapter merged into its base gives the adapter's outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignment.errors import RecipeError
from alignment.merge import merge_lora

from .conftest import REPO


def write_adapter(base: Path, folder: Path) -> torch.nn.Module:
    """A LoRA adapter on the tiny model as a stage saves one: random (non-zero) B, a grown vocabulary, the
    tokenizer and generation config beside it. Returns the adapted model, in eval mode."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(["<|tool|>"], special_tokens=True)  # as a chat template's tokens would
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    adapted = get_peft_model(model, config)
    adapted.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    return adapted.eval()


def test_the_merged_model_computes_what_the_adapter_does(tiny_data, tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    base = tiny_data / "data" / "tiny" / "model"
    adapted = write_adapter(base, tmp_path / "adapter")
    out = merge_lora(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert (out / "tokenizer.json").is_file() and not (tmp_path / "merged.partial").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(merged, "peft_config")
    ids = torch.tensor([[5, 9, 14, 3, 27, 8, merged.config.vocab_size - 1]])
    with torch.no_grad():
        expected, got = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base)(input_ids=ids[:, :-1]).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got[:, :-1, : plain.shape[-1]] - plain).abs().max() > 1e-2  # the adapter changed the model
    assert (
        GenerationConfig.from_pretrained(out).eos_token_id
        == GenerationConfig.from_pretrained(tmp_path / "adapter").eos_token_id
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "nowhere", "adapter: no folder at"),
        (lambda tmp: (tmp / "full").mkdir() or tmp / "full", "has no adapter_config.json"),
    ],
)
def test_a_bad_adapter_is_named_in_one_line(tmp_path, make, expected):
    with pytest.raises(RecipeError, match=expected):
        merge_lora(str(make(tmp_path)), str(tmp_path / "out"))


def test_the_script_refuses_in_one_line_with_exit_2(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "merge_lora.py"),
            str(tmp_path),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: adapter: {tmp_path} has no adapter_config.json "
                                                "(a full model needs no merge)"]  # fmt: skip
