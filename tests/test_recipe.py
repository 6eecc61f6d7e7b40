"""Recipe parsing: YAML + command line, unknown keys, legacy keys, choices, device fallbacks, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignment.errors import RecipeError
from alignment.recipe import parse_recipe

from .conftest import REPO, TINY_SFT

pytestmark = pytest.mark.usefixtures("away_from_the_checkout")  # not the checkout's data/tiny

BASE = {
    "model_name_or_path": "data/tiny/model",
    "dataset_name": "data/tiny/sft",
    "output_dir": "runs/x",
    "learning_rate": 1.0e-3,
}


def write(tmp_path: Path, **keys) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**BASE, **keys}))
    return str(path)


def test_command_line_overrides_yaml(tmp_path):
    recipe = parse_recipe("sft", [write(tmp_path), "--learning_rate", "5e-4", "--num_train_epochs", "3"])
    assert recipe.training.learning_rate == 5e-4
    assert recipe.training.num_train_epochs == 3
    assert recipe.model.model_name_or_path == "data/tiny/model"


def test_config_flag_is_the_same_as_positional(tmp_path):
    path = write(tmp_path)
    by_flag = parse_recipe("sft", ["--config", path, "--seed", "7"])
    positional = parse_recipe("sft", [path, "--seed", "7"])
    assert by_flag.training.seed == positional.training.seed == 7
    assert by_flag.path == positional.path == path


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-6` as a string; the value must still arrive as a float.
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE).replace("learning_rate: 0.001", "learning_rate: 1e-6"))
    assert parse_recipe("sft", [str(path)]).training.learning_rate == pytest.approx(1e-6)


def test_unknown_yaml_key_names_key_and_suggestion(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key `learning_rat` .*did you mean `learning_rate`"):
        parse_recipe("sft", [write(tmp_path, learning_rat=1.0)])


def test_unknown_cli_option_names_option_and_suggestion(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown option `--num_train_epoch` .*`num_train_epochs`"):
        parse_recipe("sft", [write(tmp_path), "--num_train_epoch", "2"])


def test_dpo_key_in_sft_recipe_is_unknown(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key `beta` for stage sft"):
        parse_recipe("sft", [write(tmp_path, beta=0.1)])


@pytest.mark.parametrize(
    ("legacy", "value", "attribute", "expected"),
    [
        ("max_seq_length", 256, ("training", "max_length"), 256),
        ("torch_dtype", "float32", ("model", "dtype"), "float32"),
        ("warmup_ratio", 0.1, ("training", "warmup_steps"), 0.1),
        ("evaluation_strategy", "no", ("training", "eval_strategy"), "no"),
    ],
)
def test_legacy_keys_are_migrated_with_a_warning(tmp_path, caplog, legacy, value, attribute, expected):
    recipe = parse_recipe("sft", [write(tmp_path, **{legacy: value})])
    section, name = attribute
    got = getattr(getattr(recipe, section), name)
    assert getattr(got, "value", got) == expected
    assert any(f"`{legacy}` migrated" in note for note in recipe.notes)
    assert f"`{legacy}`" in caplog.text


def test_legacy_cli_option_is_migrated(tmp_path):
    recipe = parse_recipe("sft", [write(tmp_path), "--max_seq_length", "128"])
    assert recipe.training.max_length == 128


def test_removed_dpo_key_is_dropped_with_an_explanation(tmp_path):
    recipe = parse_recipe("dpo", [write(tmp_path, max_prompt_length=512, beta=0.1)])
    assert recipe.training.beta == 0.1
    [note] = [n for n in recipe.notes if "max_prompt_length" in n]
    assert "max_length" in note


def test_legacy_dataset_mixer_becomes_a_mixture(tmp_path):
    keys = {k: v for k, v in BASE.items() if k != "dataset_name"}
    path = tmp_path / "old.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **keys,
                "dataset_mixer": {"org/a": 0.5, "org/b": 1.0},
                "dataset_splits": ["train_sft", "test_sft"],
            }
        )
    )
    mixture = parse_recipe("sft", [str(path)]).mixture
    assert [(s.id, s.split, s.weight) for s in mixture.datasets] == [
        ("org/a", "train_sft", 0.5),
        ("org/b", "train_sft", 1.0),
    ]
    assert mixture.test_split == "test_sft"


def test_yaml_choice_is_checked_before_anything_loads(tmp_path):
    with pytest.raises(RecipeError, match=r"`lr_scheduler_type` is 'cosin'.*did you mean `cosine`"):
        parse_recipe("sft", [write(tmp_path, lr_scheduler_type="cosin")])


def test_cli_choice_is_checked(tmp_path):
    with pytest.raises(RecipeError, match=r"`lr_scheduler_type`"):
        parse_recipe("sft", [write(tmp_path), "--lr_scheduler_type", "nope"])


def test_unknown_dpo_loss_type(tmp_path):
    with pytest.raises(RecipeError, match=r"`loss_type` 'sigmod' .*did you mean `sigmoid`"):
        parse_recipe("dpo", [write(tmp_path, loss_type="sigmod")])


def test_dpo_loss_variants_are_accepted(tmp_path):
    recipe = parse_recipe(
        "dpo", [write(tmp_path, loss_type=["sigmoid", "sft"], beta=0.2), "--loss_type", "ipo"]
    )
    assert recipe.training.loss_type == ["ipo"]


def test_unknown_chat_template_name(tmp_path):
    with pytest.raises(RecipeError, match=r"`chat_template` 'chatlm'.*`chatml`"):
        parse_recipe("sft", [write(tmp_path, chat_template="chatlm")])


def test_bad_attention_implementation(tmp_path):
    with pytest.raises(RecipeError, match=r"`attn_implementation` 'flash_attention2'.*`flash_attention_2`"):
        parse_recipe("sft", [write(tmp_path, attn_implementation="flash_attention2")])


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"`num_train_epochs`.*'many'"):
        parse_recipe("sft", [write(tmp_path, num_train_epochs="many")])


@pytest.mark.parametrize(("extra", "remove", "message"), [
    ({"dataset_mixture": {"datasets": [{"id": "x"}]}}, None, "got both"),
    ({}, "dataset_name", "got neither"),
])  # fmt: skip
def test_exactly_one_data_source(tmp_path, extra, remove, message):
    keys = {**BASE, **extra}
    keys.pop(remove, None)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(keys))
    with pytest.raises(RecipeError, match=message):
        parse_recipe("sft", [str(path)])


def test_quantization_requires_peft(tmp_path):
    with pytest.raises(RecipeError, match=r"`load_in_4bit`.*use_peft"):
        parse_recipe("sft", [write(tmp_path, load_in_4bit=True)])


def test_bf16_recipe_falls_back_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "alignment.hardware.cpu_bf16_is_fast", lambda: False
    )  # bf16 emulated: slower than fp32
    recipe = parse_recipe("sft", [write(tmp_path, bf16=True)])
    assert recipe.training.bf16 is False
    assert recipe.training.use_cpu is True  # else DDP over gloo trains each rank alone
    assert any("bf16" in note for note in recipe.notes)


def test_bf16_recipe_keeps_autocast_on_a_cpu_with_native_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "alignment.hardware.cpu_bf16_is_fast", lambda: True
    )  # AMX / AVX512-BF16: faster than fp32
    recipe = parse_recipe("sft", [write(tmp_path, bf16=True)])
    assert recipe.training.bf16 is True and recipe.training.use_cpu is True
    assert any("bf16 autocast on this CPU" in note for note in recipe.device_notes)
    assert parse_recipe("sft", [write(tmp_path, bf16=False)]).training.bf16 is False  # fp32 when asked


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe file not found: .*nope.yaml"):
        parse_recipe("sft", [str(tmp_path / "nope.yaml")])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model_name_or_path: x\nlearning_rate: [1\n")
    with pytest.raises(RecipeError, match=r"broken.yaml:\d+: not valid YAML"):
        parse_recipe("sft", [str(path)])


def test_env_block_sets_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ALIGNMENT_TEST_VAR", raising=False)
    parse_recipe("sft", [write(tmp_path, env={"ALIGNMENT_TEST_VAR": "on"})])
    import os

    assert os.environ["ALIGNMENT_TEST_VAR"] == "on"


def test_mixture_from_command_line_json(tmp_path):
    keys = {k: v for k, v in BASE.items() if k != "dataset_name"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(keys))
    mixture = parse_recipe(
        "sft", [str(path), "--dataset_mixture", '{"datasets": [{"id": "a", "weight": 0.25}]}']
    ).mixture
    assert mixture.datasets[0].weight == 0.25


@pytest.mark.parametrize(
    "args",
    [["--learning_rat", "1"], ["--lr_scheduler_type", "cosin"]],
    ids=["unknown-option", "bad-choice"],
)
def test_script_prints_one_line_and_exits_2(args):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_sft.py"), str(TINY_SFT), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_tracker_that_is_not_installed_is_refused_before_loading(tmp_path, monkeypatch):
    from transformers import integrations

    monkeypatch.setattr(integrations, "is_wandb_available", lambda: False)
    with pytest.raises(
        RecipeError, match=r"report_to: `wandb` needs `wandb`.*pip install 'alignment\[wandb\]'"
    ):
        parse_recipe("sft", [write(tmp_path, report_to=["wandb"])])
    recipe = parse_recipe(
        "sft", [write(tmp_path, report_to=["wandb"]), "--dry_run"]
    )  # the target may have it
    assert any("`wandb` needs `wandb`" in n for n in recipe.device_notes)
    with pytest.raises(RecipeError, match=r"report_to: `wandbb` is not a tracker.*did you mean `wandb`"):
        parse_recipe("sft", [write(tmp_path, report_to=["wandbb"])])
