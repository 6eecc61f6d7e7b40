"""Model and tokenizer loading, and what TRL builds from them: fallbacks, EOS/pad wiring, the loss mask."""

from __future__ import annotations

import logging

from alignment.hardware import resolve_attn_implementation
from alignment.model import load_model, load_tokenizer
from alignment.recipe import parse_recipe

from .conftest import TINY_SFT


def tiny_recipe(workdir, *overrides):
    return parse_recipe("sft", [str(TINY_SFT), "--output_dir", str(workdir / "runs" / "m"), *overrides])


def test_flash_attention_falls_back_to_sdpa_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="alignment"):
        assert resolve_attn_implementation("flash_attention_2") == "sdpa"
    assert "flash_attention_2 requested" in caplog.text
    assert resolve_attn_implementation("eager") == "eager"
    assert resolve_attn_implementation(None) is None


def test_template_tokens_grow_embeddings_and_become_the_stop_token(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = tiny_recipe(workdir, "--chat_template", "llama-3", "--attn_implementation", "flash_attention_2")
    tokenizer = load_tokenizer(recipe)
    model = load_model(recipe, tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.pad_token == "<|pad|>"  # the tiny tokenizer's own pad, kept
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    stop = model.generation_config.eos_token_id
    assert eot == stop or eot in stop
    assert model.config._attn_implementation == "sdpa"


def test_recipe_dtype_is_applied(workdir, monkeypatch):
    import torch

    monkeypatch.chdir(workdir)
    recipe = tiny_recipe(workdir, "--dtype", "bfloat16")
    model = load_model(recipe, load_tokenizer(recipe))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_assistant_only_loss_trains_on_exactly_the_assistant_tokens(workdir, monkeypatch):
    """The labels TRL builds from our template: the answer and its end of turn, nothing of the prompt."""
    from datasets import Dataset
    from trl import SFTTrainer

    monkeypatch.chdir(workdir)
    recipe = tiny_recipe(workdir, "--report_to", "none")
    tokenizer = load_tokenizer(recipe)
    model = load_model(recipe, tokenizer)
    rows = [
        [{"role": "user", "content": "reverse abc"}, {"role": "assistant", "content": "cba"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "upper xy"},
         {"role": "assistant", "content": "XY"}, {"role": "user", "content": "count hello"},
         {"role": "assistant", "content": "5"}],
    ]  # fmt: skip
    trainer = SFTTrainer(model=model, args=recipe.training, train_dataset=Dataset.from_dict({"messages": rows}),
                         processing_class=tokenizer)  # fmt: skip
    expected = ["cba<|im_end|>\n", "XY<|im_end|>\n5<|im_end|>\n"]
    for example, want in zip(trainer.train_dataset, expected, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
        assert tokenizer.decode(trained) == want
        assert tokenizer.eos_token_id in trained  # the model learns to stop
        assert tokenizer.pad_token_id not in trained
