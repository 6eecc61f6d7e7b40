"""Training methods beyond full fine-tuning and LoRA: prompt/prefix tuning and IA3 (`peft_type`), the last
layers only (`trainable_layers`), and early stopping. Each is checked while parsing, trains the tiny model,
and is saved, reloaded, merged (where that can be done) and served the way a LoRA adapter is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.errors import RecipeError
from alignment.recipe import parse_recipe
from alignment.smoke import run_script_here

from .conftest import QUICK, TINY_SFT

CHAT = [{"role": "user", "content": "reverse kipiq"}]


def parse(workdir: Path, monkeypatch, *overrides: str, stage: str = "sft"):
    monkeypatch.chdir(workdir)
    return parse_recipe(stage, [str(TINY_SFT), *overrides])


def refusal(workdir: Path, monkeypatch, *overrides: str) -> str:
    with pytest.raises(RecipeError) as err:
        parse(workdir, monkeypatch, *overrides)
    return str(err.value)


def train_sft(workdir: Path, monkeypatch, name: str, *overrides: str) -> Path:
    """The tiny SFT recipe in this process on its first 256 conversations; returns its output_dir."""
    monkeypatch.chdir(workdir)
    out = workdir / "runs" / name
    few = '{"datasets": [{"id": "data/tiny/sft", "split": "train", "samples": 256}], "test_split": "test"}'
    status = run_script_here("sft", [str(TINY_SFT), *QUICK, "--output_dir", str(out), "--save_strategy", "no",
                                     "--dataset_mixture", few, "--eval_generation_prompts", "none",
                                     "--eval_generation_steps", "none", *overrides])  # fmt: skip
    assert status == 0, f"sft exited {status}"
    return out


def losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


# ---- peft_type: what the recipe may say -------------------------------------------------------------


def test_a_key_of_another_peft_method_is_refused_naming_it(workdir, monkeypatch):
    message = refusal(workdir, monkeypatch, "--peft_type", "prompt_tuning", "--lora_r", "8")
    assert "`lora_r`" in message and "peft_type: lora" in message
    message = refusal(workdir, monkeypatch, "--use_peft", "true", "--num_virtual_tokens", "8")
    assert "`num_virtual_tokens`" in message and "prompt_tuning" in message
    assert "`num_virtual_tokens` is 0" in refusal(workdir, monkeypatch, "--peft_type", "prefix_tuning",
                                                  "--num_virtual_tokens", "0")  # fmt: skip
    assert "`use_peft` is false" in refusal(workdir, monkeypatch, "--peft_type", "ia3", "--use_peft", "false")
    assert "`peft_type`" in refusal(workdir, monkeypatch, "--peft_type", "adapters")


def test_a_non_lora_peft_type_turns_use_peft_on_and_says_so(workdir, monkeypatch):
    recipe = parse(workdir, monkeypatch, "--peft_type", "prompt_tuning")
    assert recipe.model.use_peft and any("use_peft turned on" in note for note in recipe.notes)


@pytest.mark.parametrize(
    ("kind", "head", "expected"),
    [("prompt_tuning", "causal", ("PROMPT_TUNING", "CAUSAL_LM")), ("prefix_tuning", "causal", ("PREFIX_TUNING", "CAUSAL_LM")),
     ("ia3", "causal", ("IA3", "CAUSAL_LM")), ("prompt_tuning", "reward", ("PROMPT_TUNING", "SEQ_CLS")),
     ("lora", "reward", ("LORA", "SEQ_CLS"))],
)  # fmt: skip
def test_each_peft_type_builds_peft_s_own_config_for_the_stage_s_head(
    workdir, monkeypatch, kind, head, expected
):
    from alignment.adapters import build_peft_config

    recipe = parse(workdir, monkeypatch, "--peft_type", kind, "--use_peft", "true")
    config = build_peft_config(recipe, None, head)
    assert (config.peft_type.value, config.task_type) == expected  # SEQ_CLS: PEFT saves the score head too


# ---- peft_type: trains, saves, reloads ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning", "ia3"])
def test_each_peft_type_trains_only_its_adapter_and_reloads(workdir, monkeypatch, kind):
    from alignment.evaluation import generate_answers, load_for_eval

    out = train_sft(
        workdir, monkeypatch, kind, "--peft_type", kind, "--max_steps", "16", "--learning_rate", "3e-2"
    )
    curve = losses(out)
    assert curve[-1] < curve[0]  # the adapter learns (token frequencies at least, on a random-init base)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == kind.upper() and not (out / "model.safetensors").exists()
    metrics = json.loads((out / "all_results.json").read_text())
    assert 0 < metrics["trainable_parameters"] < 0.01 * metrics["total_parameters"]
    assert f"| trainable_parameters | {metrics['trainable_parameters']} |" in (out / "README.md").read_text()
    model, tokenizer = load_for_eval(out)  # prefix tuning through PEFT, the others merged into the base
    assert len(generate_answers(model, tokenizer, [CHAT], max_new_tokens=4)) == 1


def make_prompt_tuned(folder: Path, kind: str = "prompt_tuning") -> tuple[torch.nn.Module, object]:
    """A prompt- or prefix-tuning adapter on the tiny base, with random (non-zero) virtual tokens, saved as a stage saves it."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.chat_templates import apply_chat_template

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained("data/tiny/model")
    apply_chat_template(tokenizer, "chatml")
    config_class = PromptTuningConfig if kind == "prompt_tuning" else PrefixTuningConfig
    model = get_peft_model(AutoModelForCausalLM.from_pretrained("data/tiny/model"),
                           config_class(task_type="CAUSAL_LM", num_virtual_tokens=6))  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


def test_a_merged_prompt_tuning_adapter_computes_what_the_adapter_computes(workdir, monkeypatch):
    """PEFT cannot merge prompt tuning; `soft_prompt` makes its virtual tokens real ones at the chat's start."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.evaluation import generate_answers
    from alignment.merge import merge_lora

    monkeypatch.chdir(workdir)
    adapter, tokenizer = make_prompt_tuned(workdir / "pt")
    merged_dir = merge_lora(str(workdir / "pt"), str(workdir / "pt-merged"))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)

    ids = tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    merged_ids = merged_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)  # fmt: skip
    assert merged_ids["input_ids"].shape[1] == ids["input_ids"].shape[1] + 6  # the soft prompt, in front
    with torch.no_grad():
        expected = adapter(**ids).logits[0, -ids["input_ids"].shape[1] :]
        got = merged(**merged_ids).logits[0, 6:, : expected.shape[-1]]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    prompts = [CHAT, [{"role": "user", "content": "sort dcba"}]]
    replies = generate_answers(adapter, tokenizer, prompts, max_new_tokens=12)  # step by step: evaluation.py
    assert generate_answers(merged, merged_tokenizer, prompts, max_new_tokens=12) == replies
    # the merged model in a left-padded batch with the KV cache, the adapter one whole forward pass a token;
    # the soft tokens themselves are never generated (suppressed in the generation config)
    assert replies == [greedy_by_forward_passes(adapter, tokenizer, p, 12) for p in prompts]


def greedy_by_forward_passes(model: torch.nn.Module, tokenizer, prompt: list[dict], tokens: int) -> str:
    """The reference: each token the argmax of a forward pass over everything before it (what training saw)."""
    ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ids = ids["input_ids"]
    start = ids.shape[1]
    for _ in range(tokens):
        with torch.no_grad():
            token = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
        if token.item() == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()


def test_a_prefix_tuning_adapter_is_refused_by_merge_and_serve_and_runs_through_peft(workdir, monkeypatch):
    from alignment.evaluation import generate_answers, load_for_eval
    from alignment.merge import merge_lora
    from alignment.serve import prepare_models

    monkeypatch.chdir(workdir)
    adapter, tokenizer = make_prompt_tuned(workdir / "prefix", "prefix_tuning")
    with pytest.raises(RecipeError, match="prefix-tuning adapter, which cannot be merged"):
        merge_lora(str(workdir / "prefix"), str(workdir / "prefix-merged"))
    with pytest.raises(RecipeError, match="prefix-tuning adapter"):
        prepare_models([str(workdir / "prefix")])
    loaded, loaded_tokenizer = load_for_eval(workdir / "prefix")
    prompts = [CHAT, [{"role": "user", "content": "sort dcba"}]]
    assert generate_answers(loaded, loaded_tokenizer, prompts, max_new_tokens=12) == [
        greedy_by_forward_passes(adapter, tokenizer, p, 12) for p in prompts
    ]


# ---- trainable_layers -----------------------------------------------------------------------------------


def test_trainable_layers_trains_the_last_blocks_the_final_norm_and_a_new_head_only(workdir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignment.partial_tuning import freeze_all_but_last_layers

    monkeypatch.chdir(workdir)
    model = AutoModelForCausalLM.from_pretrained("data/tiny/model")
    trainable, total = freeze_all_but_last_layers(model, 1)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in names)
    assert "model.norm.weight" in names and not any(
        n.startswith(("model.layers.0.", "model.embed")) for n in names
    )
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert total == sum(p.numel() for p in model.parameters())
    scorer = AutoModelForSequenceClassification.from_pretrained("data/tiny/model", num_labels=2)
    freeze_all_but_last_layers(scorer, 1)
    assert (
        scorer.score.weight.requires_grad and not scorer.model.layers[0].self_attn.q_proj.weight.requires_grad
    )


def test_trainable_layers_is_checked_while_parsing(workdir, monkeypatch):
    assert "has 2 transformer blocks" in refusal(workdir, monkeypatch, "--trainable_layers", "3")
    assert "`trainable_layers` is 0" in refusal(workdir, monkeypatch, "--trainable_layers", "0")
    assert "with `use_peft`" in refusal(workdir, monkeypatch, "--trainable_layers", "1", "--use_peft", "true")


@pytest.mark.slow
def test_trainable_layers_leaves_the_frozen_weights_bitwise_unchanged(workdir, monkeypatch):
    out = train_sft(workdir, monkeypatch, "last", "--trainable_layers", "1", "--max_steps", "12")
    before, after = (
        load_file(workdir / "data" / "tiny" / "model" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in changed)
    assert losses(out)[-1] < losses(out)[0]
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["trainable_parameters"] == sum(after[n].numel() for n in after if n.startswith("model.layers.1.")
                                                  or n == "model.norm.weight")  # fmt: skip


# ---- early stopping --------------------------------------------------------------------------------------


def test_early_stopping_sets_what_the_callback_needs(workdir, monkeypatch):
    recipe = parse(workdir, monkeypatch, "--early_stopping_patience", "2", "--eval_strategy", "steps",
                   "--eval_steps", "10")  # fmt: skip
    t = recipe.training
    assert t.load_best_model_at_end and t.metric_for_best_model == "eval_loss" and not t.greater_is_better
    assert (t.save_strategy.value, t.save_steps) == ("steps", 10)  # the recipe's save_steps 100, noted
    assert any("save_steps 100 -> 10" in note for note in recipe.notes)


def test_early_stopping_without_what_it_needs_is_refused_before_loading(workdir, monkeypatch):
    no_eval = '{"datasets": [{"id": "data/tiny/sft", "split": "train"}]}'
    message = refusal(workdir, monkeypatch, "--early_stopping_patience", "2", "--eval_strategy", "steps",
                      "--dataset_mixture", no_eval)  # fmt: skip
    assert "`early_stopping_patience`" in message and "no eval data" in message
    assert "`eval_strategy` is 'no'" in refusal(workdir, monkeypatch, "--early_stopping_patience", "2")
    assert "`early_stopping_patience` is 0" in refusal(workdir, monkeypatch, "--early_stopping_patience", "0")
    assert "read only with `early_stopping_patience`" in refusal(workdir, monkeypatch,
                                                                 "--early_stopping_threshold", "0.1")  # fmt: skip
    message = refusal(workdir, monkeypatch, "--early_stopping_patience", "2", "--eval_strategy", "epoch",
                      "--save_strategy", "steps")  # fmt: skip
    assert "`save_strategy`" in message and "must match" in message


@pytest.mark.slow
def test_early_stopping_stops_a_run_that_overfits_and_keeps_its_best_checkpoint(workdir, monkeypatch):
    """48 conversations for 60 epochs: the held-out loss falls, then rises as the model memorises them."""
    monkeypatch.chdir(workdir)
    out = workdir / "runs" / "es"
    few = '{"datasets": [{"id": "data/tiny/sft", "split": "train", "samples": 48}], "test_split": "test"}'
    status = run_script_here("sft", [str(TINY_SFT), *QUICK, "--output_dir", str(out), "--dataset_mixture", few,
                                     "--num_train_epochs", "60", "--per_device_train_batch_size", "16",
                                     "--learning_rate", "3e-3", "--eval_strategy", "steps", "--eval_steps", "10",
                                     "--early_stopping_patience", "2", "--eval_generation_prompts", "none",
                                     "--eval_generation_steps", "none"])  # fmt: skip
    assert status == 0
    metrics = json.loads((out / "all_results.json").read_text())
    evals = [e["eval_loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
             if "eval_loss" in e]  # fmt: skip  # saved before finish_training's evaluation of the best model
    assert metrics["early_stopped"] == 1 and metrics["stopped_at_step"] < 180  # 60 epochs x 3 steps
    assert evals[-1] > min(evals) and evals[-2] > min(evals)  # two evaluations without improvement
    assert metrics["best_metric"] == pytest.approx(min(evals))
    assert metrics["eval_loss"] == pytest.approx(min(evals), rel=1e-4)  # the saved model is the best one
    assert "| early_stopped | 1 |" in (out / "README.md").read_text()
