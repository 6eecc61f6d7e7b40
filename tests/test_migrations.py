"""Legacy keys and values (one table, with versions), TRL's own recipe format, and TRL's parsing conventions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from alignment.data.mixture import load_mixture
from alignment.errors import RecipeError
from alignment.migrations import LEGACY_KEYS, LEGACY_VALUES, legacy_table
from alignment.recipe import parse_recipe

from .conftest import REPO
from .test_recipe import BASE, write

pytestmark = pytest.mark.usefixtures("away_from_the_checkout")  # not the checkout's data/tiny


def test_every_legacy_key_and_value_has_a_version_and_is_documented():
    readme = (REPO / "README.md").read_text()
    for row in legacy_table():
        assert row["since"], row
        assert f"`{row['old']}`" in readme, f"README's legacy table misses {row['old']}"
    assert len(legacy_table()) == len(LEGACY_KEYS) + len(LEGACY_VALUES)


def test_handbook_style_recipe_migrates_without_future_warnings(tmp_path):
    """The legacy keys and values the Alignment Handbook's recipes use, all at once."""
    path = write(
        tmp_path,
        torch_dtype="bfloat16",
        max_seq_length=512,
        warmup_ratio=0.1,
        overwrite_output_dir=True,
        hub_model_revision="v1.0",
        packing=True,
        packing_strategy="ffd",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        preprocessing_num_workers=4,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = parse_recipe("sft", [path])
    ours = [w for w in caught if issubclass(w.category, FutureWarning)]
    assert ours == [], [str(w.message) for w in ours]
    t = recipe.training
    assert (t.max_length, t.warmup_steps, t.dataset_num_proc) == (512, 0.1, 4)
    assert t.hub_revision == "v1.0" and t.packing_strategy == "bfd"
    assert t.activation_checkpointing is True and t.activation_checkpointing_kwargs == {
        "use_reentrant": False
    }
    assert t.gradient_checkpointing is True  # transformers mirrors the new name onto the alias TRL reads
    assert recipe.model.dtype == "bfloat16"
    notes = "\n".join(recipe.notes)
    for old in ("torch_dtype", "max_seq_length", "hub_model_revision", "gradient_checkpointing`"):
        assert f"`{old}" in notes
    assert "packing_strategy: ffd` migrated to `bfd` (trl 0.20)" in notes
    assert recipe.args.overwrite_output_dir is True  # removed from transformers 5, ours again: start afresh


def test_default_checkpointing_raises_no_future_warning(tmp_path):
    """TRL's default sits on the deprecated alias; a recipe that sets neither name must stay quiet too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = parse_recipe("sft", [write(tmp_path)])
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    # TRL's default (on) moved to the new name; on a CPU the fast default then turns it off, and says so
    assert recipe.training.activation_checkpointing is False
    assert any("fast default: activation_checkpointing: False" in n for n in recipe.device_notes)


def test_legacy_values_on_the_command_line(tmp_path):
    recipe = parse_recipe("sft", [write(tmp_path), "--packing_strategy", "ffd", "--loss_type=chunked_nll"])
    assert recipe.training.packing_strategy == "bfd" and recipe.training.loss_type == "nll"
    assert any("option `packing_strategy: ffd`" in n for n in recipe.notes)


def test_chunked_nll_is_an_sft_value_only(tmp_path):
    with pytest.raises(RecipeError, match=r"`loss_type` 'chunked_nll' is not a DPO loss"):
        parse_recipe("dpo", [write(tmp_path, loss_type="chunked_nll")])


def test_alias_and_new_name_together_are_refused(tmp_path):
    with pytest.raises(
        RecipeError, match=r"both `gradient_checkpointing` \(legacy\) and `activation_checkpointing`"
    ):
        parse_recipe("sft", [write(tmp_path, gradient_checkpointing=True, activation_checkpointing=False)])


def test_none_on_the_command_line_sets_an_optional_field_to_none(tmp_path):
    """As `trl sft --max_length none` does (TRL's patched parser)."""
    assert (
        parse_recipe("sft", [write(tmp_path, max_length=64), "--max_length", "none"]).training.max_length
        is None
    )
    assert parse_recipe("sft", [write(tmp_path), "--max_length", "null"]).training.max_length is None


def test_dry_run_is_a_flag_not_a_recipe_key(tmp_path):
    with pytest.raises(RecipeError, match=r"`dry_run` is a command-line flag, not a recipe key"):
        parse_recipe("sft", [write(tmp_path, dry_run=True)])
    assert parse_recipe("sft", [write(tmp_path), "--dry_run"]).dry_run is True
    assert parse_recipe("sft", [write(tmp_path), "--dry_run", "false"]).dry_run is False
    assert parse_recipe("sft", [write(tmp_path)]).dry_run is False


def trl_recipe(tmp_path: Path, **extra) -> str:
    """A recipe as `trl sft --config` takes it: TRL's `datasets:` list instead of our `dataset_mixture`."""
    rows = tmp_path / "chat.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                        "source": "x"})
            for i in range(10)
        )
    )  # fmt: skip
    keys = {k: v for k, v in BASE.items() if k != "dataset_name"}
    keys["datasets"] = [{"path": "json", "data_files": str(rows), "split": "train", "columns": ["messages"]}]
    keys.update(extra)
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(keys))
    return str(path)


def test_trl_datasets_list_is_mapped_onto_a_mixture_that_loads(tmp_path):
    recipe = parse_recipe("sft", [trl_recipe(tmp_path, dataset_streaming=False, test_split_size=0.2)])
    [source] = recipe.mixture.datasets
    assert (source.id, source.split, source.columns) == ("json", "train", ["messages"])
    assert recipe.mixture.test_split_size == 0.2
    assert any("TRL's `datasets` list (1 sources) mapped onto `dataset_mixture`" in n for n in recipe.notes)
    data = load_mixture(recipe.mixture)
    assert (len(data["train"]), len(data["test"])) == (8, 2)
    assert data["train"].column_names == ["messages", "tools"]  # canonical SFT rows


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"dataset_streaming": True}, r"`dataset_streaming: true` is not supported"),
        ({"streaming": True}, r"`streaming: true` is not supported"),
        (
            {"dataset_name": "x"},
            r"set one of `datasets` \(TRL's list\), `dataset_mixture` and `dataset_name`",
        ),
    ],
)
def test_trl_recipe_options_we_cannot_honour_are_refused(tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe("sft", [trl_recipe(tmp_path, **extra)])


def test_trl_fraction_is_refused_naming_the_source(tmp_path):
    path = Path(trl_recipe(tmp_path))
    keys = yaml.safe_load(path.read_text())
    keys["datasets"][0]["fraction"] = 0.5
    path.write_text(yaml.safe_dump(keys))
    with pytest.raises(RecipeError, match=r"`datasets\[0\].fraction`.*use `dataset_mixture` with `weight`"):
        parse_recipe("sft", [str(path)])


def test_use_flash_attention_2_is_a_switch_in_the_recipe_and_on_the_command_line(tmp_path):
    assert parse_recipe("sft", [write(tmp_path, use_flash_attention_2=True)]).model.attn_implementation == (
        "flash_attention_2"
    )
    on_cli = parse_recipe("sft", [write(tmp_path), "--use_flash_attention_2", "true"])
    assert on_cli.model.attn_implementation == "flash_attention_2"
    off = parse_recipe("sft", [write(tmp_path), "--use_flash_attention_2", "false"])
    assert off.model.attn_implementation is None
    assert any("`--use_flash_attention_2` migrated to `--attn_implementation`" in n for n in off.notes)
