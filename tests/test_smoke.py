"""`alignment check RECIPE --smoke`: every recipe's own trainer for a few steps on CPU, tiny model, first rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.data.formats import canonical_features, convert_batch
from alignment.data.validation import validate_row
from alignment.pipeline import is_pipeline_file
from alignment.recipe import drop_options
from alignment.smoke import generate_rows, model_config, prepare_smoke, shrunk_config

from .conftest import RECIPES, TINY_SFT

# Every stage recipe under recipes/, the tiny ones included (several of them, the training-method
# variants, are otherwise only dry-run by the suite); pipeline files are lists of recipes, not recipes.
EVERY_RECIPE = sorted(p for p in RECIPES.rglob("*.yaml") if not is_pipeline_file(p))

# A Qwen2 config.json as the Hub serves it (the fields that matter here), for a model we cannot download.
QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "vocab_size": 151936,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "sliding_window": 32768,
    "max_window_layers": 21,
    "use_sliding_window": False,
    "layer_types": ["full_attention"] * 24,
    "torch_dtype": "bfloat16",
}


def check(recipe: Path | str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignment.cli", "check", str(recipe), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_family_config_is_shrunk_keeping_its_architecture(tmp_path):
    from transformers import AutoModelForCausalLM

    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps(QWEN2_CONFIG))
    notes: list[str] = []
    raw, source = model_config(str(tmp_path / "qwen"), notes)
    config = shrunk_config(raw, source, vocab=300, positions=64, notes=notes)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("qwen2", 2, 64)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 2, 300)
    assert config.layer_types == ["full_attention"] * 2
    assert (
        config.max_position_embeddings == 32768
    )  # never below the model's: max_length is checked against it
    model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert notes == [f"model: a random qwen2 shrunk to 2 layers of 64 from {tmp_path / 'qwen'}'s config.json"]


@pytest.mark.parametrize(
    ("fmt", "stage", "columns"),
    [
        ("messages", "sft", None),
        ("sharegpt", "sft", None),
        ("alpaca", "sft", None),
        ("prompt_completion", "sft", None),
        ("preference", "dpo", None),
        ("preference", "dpo", ["chosen", "rejected"]),  # UltraFeedback: whole conversations
        ("hh", "dpo", None),
        ("alpaca", "dpo", None),
        ("messages", "sft", {"messages": "dialogue"}),  # the file's column name, mapped back by the recipe
    ],
)
def test_generated_rows_are_valid_rows_of_their_format(fmt, stage, columns):
    rows = generate_rows(fmt, stage, columns, None, count=8, start=3)
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == 8  # no duplicates to be dropped
    if isinstance(columns, dict):
        assert all(set(r) == {"dialogue"} for r in rows)
        rows = [{"messages": r["dialogue"]} for r in rows]
    elif columns:
        assert all(set(r) == set(columns) for r in rows)
    batch = {key: [r.get(key) for r in rows] for key in rows[0]}
    out = convert_batch(batch, fmt=fmt, stage=stage, tags=None)
    assert out["invalid"] == [""] * 8
    features = canonical_features(stage, tool_calls=False, json_messages=False)
    converted = [{k: out[k][i] for k in features} for i in range(8)]
    assert all(validate_row(row, stage) == "" for row in converted)


def test_sharegpt_rows_follow_the_sources_tags():
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent"}
    (row,) = generate_rows("sharegpt", "sft", None, tags, count=1)
    assert [turn["speaker"] for turn in row["conversations"]] == ["customer", "agent"]


def test_local_sources_give_their_first_rows_and_hub_ones_generated_rows(workdir, monkeypatch, tmp_path):
    from alignment.recipe import parse_recipe

    monkeypatch.chdir(workdir)
    mixture = json.dumps(
        {
            "datasets": [
                {"id": "data/tiny/sft", "split": "train"},
                {"id": "someorg/chats", "split": "train_sft"},
            ],
            "test_split": "test",
        }
    )
    recipe = parse_recipe("sft", [str(TINY_SFT), "--dataset_mixture", mixture])
    setup = prepare_smoke(recipe, tmp_path / "smoke")
    local = (tmp_path / "smoke" / "data" / "source0" / "train.jsonl").read_text().splitlines()
    first = (workdir / "data" / "tiny" / "sft" / "train.jsonl").read_text().splitlines()[:16]
    assert [json.loads(x)["messages"] for x in local] == [json.loads(x)["messages"] for x in first]
    assert setup.mixture["datasets"][1]["split"] == "train_sft"
    assert (tmp_path / "smoke" / "data" / "source1" / "train_sft.jsonl").is_file()
    assert any("someorg/chats [train_sft]: on the Hub and not reachable" in n for n in setup.notes)
    assert (tmp_path / "smoke" / "model" / "config.json").is_file()


def test_drop_options_removes_the_replaced_keys_in_both_spellings():
    argv = ["--model_name_or_path", "m", "--learning_rate", "1e-5", "--dataset_mixture={}", "--seed", "3"]
    assert drop_options(argv, ("model_name_or_path", "dataset_mixture"))[0] == [
        "--learning_rate",
        "1e-5",
        "--seed",
        "3",
    ]


@pytest.mark.slow
def test_every_recipe_smoke_runs_on_cpu(workdir):
    """CI's smoke run of every recipe under recipes/, two at a time (one per core)."""
    from concurrent.futures import ThreadPoolExecutor

    assert len(EVERY_RECIPE) >= 25
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda r: check(r, "--smoke", cwd=workdir), EVERY_RECIPE)
        runs = dict(zip(EVERY_RECIPE, results, strict=True))
    failed = {
        str(recipe): done.stdout[-1000:] + done.stderr[-3000:]
        for recipe, done in runs.items()
        if done.returncode != 0 or f"smoke run of {recipe}: ok (2 steps, loss" not in done.stdout
    }
    assert not failed, failed


@pytest.mark.slow
def test_a_template_that_breaks_on_the_real_rows_passes_the_dry_run_and_fails_the_smoke_run(
    workdir, tmp_path
):
    """The dry run renders a two-turn sample; the smoke run renders the recipe's own rows, which have a system turn."""
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"Add {i} and 2."},
                {"role": "assistant", "content": f"{i + 2}"},
            ]
        }  # fmt: skip
        for i in range(20)
    ]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
        "<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    recipe = tmp_path / "recipes" / "sft" / "config.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(
        TINY_SFT.read_text()
        .replace("chat_template: chatml ", f"chat_template: {json.dumps(template)} ")
        .replace("  test_split: test ", "  # no test split ")
        .replace("    - id: data/tiny/sft ", f"    - id: {data} ")
        .replace("    - id: data/tiny/sft_sharegpt ", "    - id: data/tiny/sft ")
    )
    assert check(recipe, cwd=workdir).returncode == 0
    smoke = check(recipe, "--smoke", cwd=workdir)
    assert smoke.returncode != 0
    assert f"smoke run of {recipe}: FAILED" in smoke.stdout
    assert "no system turns" in smoke.stderr
