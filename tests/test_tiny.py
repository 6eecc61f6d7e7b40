"""The tiny task, tokenizer and model: answers are checkable, evaluation is held out, the build is loadable."""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

import pytest

from alignment.chat_templates import CHATML
from alignment.tiny.build import WORD_TOKENS, build_tokenizer, to_sharegpt
from alignment.tiny.task import SKILLS, TinyTaskConfig, generate_task, solve


@pytest.fixture(scope="module")
def task() -> dict[str, list[dict]]:
    return generate_task(TinyTaskConfig())


def parse(prompt: str) -> tuple[str, str]:
    skill, word = prompt.split(" ")
    assert skill in SKILLS
    return skill, word


def sft_item(row: dict) -> tuple[str, str, str]:
    user, assistant = row["messages"]
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    return (*parse(user["content"]), assistant["content"])


def dpo_item(row: dict) -> tuple[str, str, str, str]:
    [user], [chosen], [rejected] = row["prompt"], row["chosen"], row["rejected"]
    assert (user["role"], chosen["role"], rejected["role"]) == ("user", "assistant", "assistant")
    return (*parse(user["content"]), chosen["content"], rejected["content"])


def items(rows: list[dict], split: str) -> set[tuple[str, str]]:
    if split.startswith("sft"):
        return {sft_item(r)[:2] for r in rows}
    if split.startswith("dpo"):
        return {dpo_item(r)[:2] for r in rows}
    return {parse(r["prompt"][0]["content"]) for r in rows}


def test_solve_examples():
    assert solve("reverse", "abc") == "cba"
    assert solve("upper", "abc") == "ABC"
    assert solve("sort", "dcab") == "abcd"
    assert solve("count", "abcde") == "5"
    with pytest.raises(ValueError, match="spell"):
        solve("spell", "abc")


def test_split_sizes_follow_the_config(task):
    config = TinyTaskConfig()
    sizes = {name: len(rows) for name, rows in task.items()}
    assert sizes == {
        "sft_train": config.sft_train,
        "sft_test": config.sft_test,
        "dpo_train": config.dpo_train,
        "dpo_test": config.dpo_test,
        "eval": config.eval_prompts,
    }
    assert Counter(sft_item(r)[0] for r in task["sft_train"]) == {s: config.sft_train // 4 for s in SKILLS}


def test_every_sft_test_answer_is_correct(task):
    for row in task["sft_test"]:
        skill, word, answer = sft_item(row)
        assert answer == solve(skill, word), row


@pytest.mark.parametrize("split", ["dpo_train", "dpo_test"])
def test_every_dpo_pair_has_a_correct_chosen_and_a_wrong_rejected(task, split):
    for row in task[split]:
        skill, word, chosen, rejected = dpo_item(row)
        assert chosen == solve(skill, word), row
        assert rejected != chosen, row
        assert rejected != solve(skill, word), row


def test_every_eval_answer_is_correct(task):
    for row in task["eval"]:
        skill, word = parse(row["prompt"][0]["content"])
        assert row["skill"] == skill
        assert row["answer"] == solve(skill, word)


def test_held_out_words_never_appear_in_training(task):
    train = items(task["sft_train"], "sft_train") | items(task["dpo_train"], "dpo_train")
    for split in ("eval", "sft_test", "dpo_test"):
        held_out = items(task[split], split)
        assert len(held_out) == len(task[split])
        assert not held_out & train, split


def test_sloppy_annotator_miscounts_at_the_configured_rate_and_nothing_else(task):
    config = TinyTaskConfig()
    wrong: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for row in task["sft_train"]:
        skill, word, answer = sft_item(row)
        total[skill] += 1
        if answer != solve(skill, word):
            wrong[skill] += 1
            assert answer == str(len(word) + 1)  # the systematic miscount
    assert abs(wrong["count"] / total["count"] - config.demo_error_rate["count"]) <= 0.05
    assert {s: wrong[s] for s in SKILLS if s != "count"} == {s: 0 for s in SKILLS if s != "count"}


def test_clean_annotator_makes_no_mistakes():
    splits = generate_task(TinyTaskConfig(sft_train=200, demo_error_rate={}))
    assert all(answer == solve(skill, word) for skill, word, answer in map(sft_item, splits["sft_train"]))


def test_generate_task_is_deterministic_for_a_seed():
    config = TinyTaskConfig(sft_train=200, dpo_train=100, eval_prompts=20, sft_test=20, dpo_test=20)
    assert generate_task(config) == generate_task(config)
    other = TinyTaskConfig(sft_train=200, dpo_train=100, eval_prompts=20, sft_test=20, dpo_test=20, seed=99)
    assert generate_task(other)["eval"] != generate_task(config)["eval"]


# --- Tokenizer -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(["reverse abc", "cba", "count xy", "2"])


@pytest.mark.parametrize(
    "text",
    [string.printable, "count hello\n3", "  two  spaces\tand\ttabs\r\n", "UPPER ~{}[]|\\^`"],
    ids=["printable", "prompt", "whitespace", "punctuation"],
)
def test_tokenizer_round_trips_printable_text_without_unk(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_every_printable_character_is_one_token(tokenizer):
    for char in string.printable:
        ids = tokenizer.encode(char, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, repr(char)


def test_roles_skills_and_chatml_markers_are_single_tokens(tokenizer):
    assert set(WORD_TOKENS) == {"system", "user", "assistant", *SKILLS}
    for word in (*WORD_TOKENS, *CHATML.special_tokens):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word


def test_unseen_character_maps_to_unk(tokenizer):
    assert tokenizer.encode("é", add_special_tokens=False) == [tokenizer.unk_token_id]


def test_tokenizer_has_chatml_eos_and_a_distinct_pad(tokenizer):
    assert tokenizer.eos_token == CHATML.end_of_turn
    assert tokenizer.pad_token not in (None, tokenizer.eos_token)
    assert tokenizer.chat_template == CHATML.template


# --- build_tiny ----------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_tiny_writes_the_model_and_every_split(tiny_data):
    root = tiny_data / "data" / "tiny"
    # build.json records the task config, so the data can be regenerated and checked row for row.
    config = TinyTaskConfig(**json.loads((root / "build.json").read_text())["task"])
    splits = generate_task(config)
    for split in ("train", "test"):  # the first three quarters as OpenAI messages, the rest as ShareGPT
        rows = splits[f"sft_{split}"]
        cut = len(rows) - len(rows) // 4
        assert read_jsonl(root / "sft" / f"{split}.jsonl") == rows[:cut]
        sharegpt = read_jsonl(root / "sft_sharegpt" / f"{split}.jsonl")
        assert sharegpt == [to_sharegpt(r) for r in rows[cut:]]
    assert sharegpt[0]["conversations"][0]["from"] == "human"
    files = {
        "dpo/train.jsonl": "dpo_train",
        "dpo/test.jsonl": "dpo_test",
        "eval.jsonl": "eval",
    }
    for name, split in files.items():
        assert read_jsonl(root / name) == splits[split], name
    assert len(splits["sft_train"]) == config.sft_train
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (root / "model" / name).is_file(), name


def test_built_model_and_tokenizer_load_with_auto_classes(tiny_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_data / "data" / "tiny" / "model"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_500_000 <= n_params <= 3_000_000
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert "{% generation %}" in tokenizer.chat_template
    assert tokenizer.chat_template == CHATML.template
    assert tokenizer.eos_token == CHATML.end_of_turn
    assert tokenizer.pad_token != tokenizer.eos_token
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
