"""Fast defaults: chosen per hardware for unset keys only, and the fast batch layouts train on the same loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.recipe import parse_recipe
from alignment.speed import apply_fast_defaults
from tests.conftest import RECIPES, TINY_SFT

# A TRL config on this CPU, fp32, in one process, writing nothing but its output folder.
CPU_RUN = {
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "report_to": "none",
    "dataset_num_proc": 1,
}


def test_cpu_defaults_fill_only_unset_keys():
    values = {"activation_checkpointing": True, "packing": False, "padding_free": False}
    notes = apply_fast_defaults(values, "dpo", explicit=set(), accelerator=False)
    assert values == {"activation_checkpointing": False, "packing": False, "padding_free": False}
    assert notes == ["fast default: activation_checkpointing: False (recomputing activations costs ~10% on a CPU; "
                     "RAM is not short)"]  # fmt: skip
    written = {"activation_checkpointing": True}
    assert apply_fast_defaults(dict(written), "sft", explicit=set(written), accelerator=False) == []


def test_batches_keep_their_order_by_default():
    """Length-grouped batches are faster, but they turned the tiny SFT's batches single-skill (69.5% -> 13%)."""
    for accelerator in (False, True):
        for stage in ("sft", "dpo"):
            values = {"attn_implementation": "sdpa"}
            apply_fast_defaults(values, stage, explicit=set(), accelerator=accelerator)
            assert "train_sampling_strategy" not in values and "packing" not in values


def test_gpu_without_flash_attention_keeps_checkpointing_and_padded_batches():
    values = {"attn_implementation": "sdpa", "activation_checkpointing": True}
    apply_fast_defaults(values, "sft", explicit=set(), accelerator=True)
    assert values["activation_checkpointing"] is True  # memory is what a GPU is short of


def test_recipe_logs_each_fast_default(away_from_the_checkout):
    recipe = parse_recipe("sft", [str(TINY_SFT), "--dry_run", "--activation_checkpointing", "true"])
    assert recipe.training.activation_checkpointing is True  # said on the command line: kept
    assert not any("fast default" in n for n in recipe.device_notes)
    dpo = RECIPES / "qwen2.5-0.5b" / "dpo" / "config_full.yaml"
    text = dpo.read_text().replace("activation_checkpointing: true", "")
    unset = away_from_the_checkout / "dpo.yaml"
    unset.write_text(text)
    recipe = parse_recipe("dpo", [str(unset), "--dry_run"])
    assert recipe.training.activation_checkpointing is False
    assert any("fast default: activation_checkpointing: False" in n for n in recipe.device_notes)


def test_handbook_recipe_keeps_its_precision_choice_visible(away_from_the_checkout):
    recipe = parse_recipe("sft", [str(RECIPES / "zephyr-7b-beta" / "sft" / "config_full.yaml"), "--dry_run"])
    assert recipe.precision == "bf16"  # the plan shows the target's precision whatever this CPU does
    assert any("bf16" in n or "float32" in n for n in recipe.device_notes)


def _summed_loss(trainer) -> tuple[float, int]:
    """Sum of token losses and the number of trained tokens over every batch of the trainer's data."""
    import torch

    model = trainer.model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in trainer.get_train_dataloader():
            n = int((batch["labels"][:, 1:] != -100).sum())
            inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            total += float(model(**inputs, use_cache=False).loss) * n
            tokens += n
    return total, tokens


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_and_padding_free_batches_train_on_the_same_loss(
    tiny_data: Path, tmp_path: Path, attention: str
):
    """Packing (bfd) and padding-free batches must isolate each conversation: same loss as padded batches."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir = tiny_data / "data" / "tiny" / "model"
    with (tiny_data / "data" / "tiny" / "sft" / "train.jsonl").open() as f:
        rows = [json.loads(f.readline()) for _ in range(24)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention)
    layouts = {
        "padded": {},
        "padding_free": {"padding_free": True, "max_length": None},
        "packed": {"packing": True, "packing_strategy": "bfd"},
    }
    sums = {}
    for name, layout in layouts.items():
        args = SFTConfig(
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=4,
            **CPU_RUN,
            assistant_only_loss=True,
            train_sampling_strategy="sequential",
            **{"max_length": 64, **layout},
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
        sums[name] = _summed_loss(trainer)
    (padded, n), *others = sums.values()
    assert n > 24 * 3  # the answers of all 24 conversations, not a handful of tokens
    for total, tokens in others:
        assert tokens == n
        assert total == pytest.approx(padded, rel=1e-4)


def test_dpo_pairs_are_grouped_by_their_padded_length(tiny_data: Path, tmp_path: Path):
    """transformers' sampler cannot read DPO's tokenised pairs; ours groups them, so batches carry less padding."""
    import random

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from alignment.speed import with_pair_length_grouping

    model_dir = tiny_data / "data" / "tiny" / "model"
    rng = random.Random(0)

    def pair() -> dict:  # answers of 1 to 30 words, the two answers of a pair about as long
        n = rng.choice([1, 2, 3, 20, 25, 30])
        return {
            "prompt": [{"role": "user", "content": "say ab"}],
            "chosen": [{"role": "assistant", "content": "ab " * n}],
            "rejected": [{"role": "assistant", "content": "ba " * n + "b"}],
        }

    rows = [pair() for _ in range(64)]
    padding = {}
    for strategy in ("random", "group_by_length"):
        args = DPOConfig(
            output_dir=str(tmp_path / strategy),
            per_device_train_batch_size=8,
            **CPU_RUN,
            max_length=128,
            train_sampling_strategy=strategy,
            seed=0,
        )
        trainer = with_pair_length_grouping(DPOTrainer)(
            model=str(model_dir),
            args=args,
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(rows[:16]),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == 2 * 64  # every pair once, chosen and rejected
        # transformers groups the evaluation batches by length too: it must read the pairs there as well
        assert sum(len(b["input_ids"]) for b in trainer.get_eval_dataloader()) == 2 * 16
        padding[strategy] = sum(float((b["attention_mask"] == 0).float().mean()) for b in batches) / len(
            batches
        )
    assert padding["group_by_length"] < 0.6 * padding["random"]
