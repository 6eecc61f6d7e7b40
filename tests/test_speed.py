"""Fast defaults: chosen per hardware for unset keys only, and the fast batch layouts train on the same loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.recipe import parse_recipe
from alignment.speed import apply_fast_defaults
from tests.conftest import RECIPES, TINY_SFT


def test_cpu_defaults_fill_only_unset_keys():
    values = {"activation_checkpointing": True, "packing": False, "padding_free": False}
    notes = apply_fast_defaults(values, "sft", explicit=set(), accelerator=False)
    assert values["activation_checkpointing"] is False
    assert values["train_sampling_strategy"] == "group_by_length"
    assert len(notes) == 2 and all(n.startswith("fast default: ") for n in notes)

    written = {"activation_checkpointing": True, "train_sampling_strategy": "random"}
    assert apply_fast_defaults(dict(written), "sft", explicit=set(written), accelerator=False) == []


def test_cpu_defaults_group_pairs_but_not_packed_rows():
    packed = {"activation_checkpointing": False, "packing": True}
    apply_fast_defaults(packed, "sft", explicit={"packing"}, accelerator=False)
    assert "train_sampling_strategy" not in packed  # a packed batch has no padding to group away
    dpo = {"activation_checkpointing": True}
    apply_fast_defaults(dpo, "dpo", explicit=set(), accelerator=False)
    assert dpo == {"activation_checkpointing": False, "train_sampling_strategy": "group_by_length"}
    kto = {"activation_checkpointing": False}
    apply_fast_defaults(kto, "kto", explicit=set(), accelerator=False)
    assert "train_sampling_strategy" not in kto  # KTO's KL term needs its own (sequential) order


def test_gpu_without_flash_attention_does_not_pack():
    values = {"attn_implementation": "sdpa", "activation_checkpointing": True}
    notes = apply_fast_defaults(values, "sft", explicit=set(), accelerator=True)
    assert "packing" not in values and values["activation_checkpointing"] is True  # memory matters on a GPU
    assert values["train_sampling_strategy"] == "group_by_length"
    assert any("group_by_length" in n for n in notes)


def test_recipe_logs_each_fast_default(away_from_the_checkout):
    recipe = parse_recipe("sft", [str(TINY_SFT), "--dry_run"])
    assert recipe.training.train_sampling_strategy == "group_by_length"
    assert any("fast default: train_sampling_strategy" in n for n in recipe.device_notes)
    said = parse_recipe("sft", [str(TINY_SFT), "--dry_run", "--train_sampling_strategy", "random"])
    assert said.training.train_sampling_strategy == "random"
    assert not any("train_sampling_strategy" in n for n in said.device_notes)


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
            use_cpu=True,
            bf16=False,
            activation_checkpointing=False,
            report_to="none",
            assistant_only_loss=True,
            dataset_num_proc=1,
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
            use_cpu=True,
            bf16=False,
            activation_checkpointing=False,
            report_to="none",
            dataset_num_proc=1,
            max_length=128,
            train_sampling_strategy=strategy,
            seed=0,
        )
        trainer = with_pair_length_grouping(DPOTrainer)(
            model=str(model_dir),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == 2 * 64  # every pair once, chosen and rejected
        padding[strategy] = sum(float((b["attention_mask"] == 0).float().mean()) for b in batches) / len(
            batches
        )
    assert padding["group_by_length"] < 0.6 * padding["random"]
