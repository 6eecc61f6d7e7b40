"""What this machine can run is asked of torch/transformers/TRL: attention names, bf16, flash-attn, DPO losses."""

from __future__ import annotations

import inspect
import re

import pytest

from alignment import hardware
from alignment.errors import RecipeError
from alignment.recipe import DPO_LOSS_TYPES, parse_recipe

from .test_recipe import write

pytestmark = pytest.mark.usefixtures("away_from_the_checkout")  # not the checkout's data/tiny


def test_attention_names_come_from_transformers_registry(tmp_path):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert set(hardware.attention_implementations()) == {"eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()}
    # flash_attention_4 is in transformers 5.23's registry; a hand-kept list refused it.
    assert parse_recipe("sft", [write(tmp_path, attn_implementation="flash_attention_4")])
    with pytest.raises(
        RecipeError, match=r"`attn_implementation` 'flash_attn_4' is unknown.*flash_attention_4"
    ):
        parse_recipe("sft", [write(tmp_path, attn_implementation="flash_attn_4")])


def test_flash_attention_is_kept_when_transformers_says_it_can_run(monkeypatch):
    from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX

    assert hardware.resolve_attn_implementation("flash_attention_3") == "sdpa"  # no CUDA, no kernels here
    monkeypatch.setitem(
        FLASH_ATTENTION_COMPATIBILITY_MATRIX[3], "general_availability_check", lambda **_: True
    )
    assert hardware.resolve_attn_implementation("flash_attention_3") == "flash_attention_3"
    assert (
        hardware.resolve_attn_implementation("kernels-community/flash-attn3")
        == "kernels-community/flash-attn3"
    )


def test_gpu_without_bf16_falls_back_with_a_note_and_is_not_a_cpu_run(tmp_path, monkeypatch):
    """A T4/V100 has CUDA but no bf16: fp32 with a note (the traceback we meant to prevent), and no use_cpu."""
    monkeypatch.setattr(hardware, "has_accelerator", lambda: True)
    monkeypatch.setattr(hardware, "bf16_supported", lambda: False)
    recipe = parse_recipe("sft", [write(tmp_path, bf16=True)])
    assert recipe.training.bf16 is False and recipe.training.use_cpu is False
    assert recipe.precision == "bf16"  # what the recipe asks, for the plan
    assert any("this GPU has no bf16" in n and "fp16: true" in n for n in recipe.device_notes)


def test_cpu_run_notes_the_fallback_apart_from_the_plan(tmp_path, monkeypatch):
    monkeypatch.setattr("alignment.hardware.cpu_bf16_is_fast", lambda: False)
    recipe = parse_recipe("sft", [write(tmp_path, bf16=True)])
    assert recipe.precision == "bf16" and recipe.training.bf16 is False and recipe.training.use_cpu is True
    assert recipe.device_notes[0] == "bf16 requested but this machine has no GPU: training in float32 here"
    assert all(n.startswith("fast default: ") for n in recipe.device_notes[1:])


def test_bf16_and_fp16_together_are_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"`bf16` and `fp16` are both true"):
        parse_recipe("sft", [write(tmp_path, bf16=True, fp16=True)])


def test_dpo_loss_list_matches_trl():
    """Our list makes a typo an error; this fails loudly when a TRL upgrade adds or drops a loss."""
    from trl import DPOConfig, DPOTrainer

    in_trainer = set(re.findall(r'loss_type == "(\w+)"', inspect.getsource(DPOTrainer)))
    help_text = next(f for f in DPOConfig.__dataclass_fields__.values() if f.name == "loss_type").metadata[
        "help"
    ]
    in_help = set(re.findall(r"`'(\w+)'`", help_text))
    assert in_trainer == in_help == set(DPO_LOSS_TYPES)
