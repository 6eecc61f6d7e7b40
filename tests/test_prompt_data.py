"""Stage `prompt` (GRPO, RLOO): every format read to prompt + reference answer, invalid rows, dedup, the tiny pairs."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml

from alignment.cli import main
from alignment.data.formats import STAGE_COLUMNS, check_format, convert_batch, detect_format
from alignment.data.lengths import classify_lengths, token_lengths
from alignment.data.mixture import MixtureConfig, build_mixture
from alignment.data.prepare import prepare_data
from alignment.data.probe import probe_mixture
from alignment.data.validation import validate_row
from alignment.errors import RecipeError
from alignment.model import load_tokenizer
from alignment.recipe import parse_recipe
from alignment.smoke import DEFAULT_FORMATS, generate_rows

from .messages import assistant, system, tool, user


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def canonical(prompt: list[dict], answer: str | None, tools: str | None = None) -> dict:
    return {"prompt": prompt, "answer": answer, "tools": tools}


def convert(fmt: str, row: dict) -> dict:
    """One row through the batched reader, as `Dataset.map` calls it."""
    out = convert_batch({column: [value] for column, value in row.items()}, fmt=fmt, stage="prompt")
    return {column: values[0] for column, values in out.items()}


TOOLS = '[{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]'
CALL = ("add", '{"a": 2, "b": 3}')

# (format detected and read, input row, canonical row)
CASES = [
    ("prompt_only", {"prompt": "What is 17 plus 25?", "answer": "42"},
     canonical([user("What is 17 plus 25?")], "42")),
    ("prompt_only", {"prompt": "What is 17 plus 25?", "answer": 42}, canonical([user("What is 17 plus 25?")], "42")),
    ("prompt_only", {"prompt": [system("Reply with a number."), user("Count the letters of river.")],
                     "solution": "5"},
     canonical([system("Reply with a number."), user("Count the letters of river.")], "5")),
    ("prompt_only", {"prompt": "Spell lantern backwards.", "system": "Be terse.", "tools": TOOLS},
     canonical([system("Be terse."), user("Spell lantern backwards.")], None, TOOLS)),
    ("prompt_completion", {"prompt": "Write copper in capitals.", "completion": "COPPER"},
     canonical([user("Write copper in capitals.")], "COPPER")),
    ("prompt_completion", {"prompt": [user("2+2=")], "completion": [assistant("4")]},
     canonical([user("2+2=")], "4")),
    ("preference", {"prompt": [user("Name a prime below 10.")], "chosen": [assistant("7")],
                    "rejected": [assistant("9")]},
     canonical([user("Name a prime below 10.")], "7")),
    ("preference", {"prompt": "Name a prime below 10.", "chosen": "7", "rejected": "9"},
     canonical([user("Name a prime below 10.")], "7")),
    # UltraFeedback: the chosen and rejected conversations repeat the prompt
    ("preference", {"prompt": "Say hi.", "chosen": [user("Say hi."), assistant("Hi!")],
                    "rejected": [user("Say hi."), assistant("No.")]},
     canonical([user("Say hi.")], "Hi!")),
    ("hh", {"chosen": "\n\nHuman: Any tips for sleep?\n\nAssistant: Keep a regular schedule.",
            "rejected": "\n\nHuman: Any tips for sleep?\n\nAssistant: Stay up late."},
     canonical([user("Any tips for sleep?")], "Keep a regular schedule.")),
    ("alpaca", {"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit"},
     canonical([user("Translate to French.\nGood night")], "Bonne nuit")),
    ("messages", {"messages": [user("Add 2 and 3."), assistant("", CALL), tool("5"), assistant("It is 5."),
                               user("And doubled?"), assistant("10")]},
     canonical([user("Add 2 and 3."), assistant("", CALL), tool("5"), assistant("It is 5."), user("And doubled?")],
               "10")),
    ("messages", {"messages": [system("Be kind."), user("Hello"), assistant("Hi!"), user("How are you?")]},
     canonical([system("Be kind."), user("Hello"), assistant("Hi!"), user("How are you?")], None)),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Spell meadow backwards."},
                                    {"from": "gpt", "value": "wodaem"}]},
     canonical([user("Spell meadow backwards.")], "wodaem")),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "row", "expected"), CASES)
def test_each_format_is_detected_and_read_to_a_prompt_and_its_answer(fmt, row, expected):
    assert detect_format(list(row), row, "prompt", "data/x.jsonl") == fmt
    assert convert(fmt, row) == {**expected, "invalid": ""}


# (format, input row, reason)
INVALID = [
    ("prompt_only", {"prompt": "", "answer": "4"}, "empty prompt"),
    ("prompt_only", {"prompt": [], "answer": "4"}, "empty prompt"),
    ("prompt_only", {"prompt": [user("2+2?"), assistant("4")]}, "last turn not user"),
    ("prompt_only", {"prompt": "Half of 15?", "answer": 7.5}, "answer not text"),  # "7.5" or "7.50"?
    ("prompt_only", {"prompt": "Is 7 prime?", "answer": True}, "answer not text"),
    ("prompt_only", {"prompt": "2+2?", "answer": " "}, "empty answer"),
    ("prompt_only", {"prompt": [user("hi"), user("again")]}, "consecutive user turns"),
    ("prompt_completion", {"prompt": "2+2?", "completion": [assistant("", CALL), tool("4"), assistant("4")]},
     "answer not text"),
    ("prompt_completion", {"prompt": "2+2?", "completion": [user("4")]}, "answer not assistant"),
    ("messages", {"messages": [user("Add 2 and 3."), assistant("", CALL), tool("5")]}, "last turn not user"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "row", "reason"), INVALID)
def test_invalid_rows_get_their_reason_and_uniform_placeholders(fmt, row, reason):
    out = convert(fmt, row)
    assert out["invalid"] == reason
    assert set(out) == {*STAGE_COLUMNS["prompt"], "invalid"}
    assert out["answer"] is None or isinstance(out["answer"], str)


def test_validate_row_checks_a_prompt_row_by_hand():
    assert validate_row(canonical([user("2+2?")], "4"), "prompt") == ""
    assert validate_row(canonical([user("2+2?")], None), "prompt") == ""
    assert validate_row({"prompt": [user("2+2?")]}, "prompt") == ""  # no answer column: no reference
    assert validate_row(canonical([user("2+2?")], 4), "prompt") == "answer not text"  # type: ignore[arg-type]
    assert validate_row(canonical([user("  ")], "4"), "prompt") == "empty prompt"
    assert validate_row(canonical([assistant("4")], None), "prompt") == "last turn not user"


def test_invalid_rows_are_named_and_counted_like_other_stages(tmp_path):
    rows = [
        {"prompt": "What is 3 plus 4?", "answer": "7"},
        {"prompt": "", "answer": "0"},
        {"prompt": [user("What is 1 plus 1?"), assistant("2")]},
        {"prompt": "Half of 5?", "answer": 2.5},
        {"prompt": "What is 6 plus 1?", "answer": 7},
    ]
    path = jsonl(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(RecipeError) as error:
        build_mixture(MixtureConfig.from_dict({"datasets": [{"id": str(path)}]}), "prompt")
    assert str(error.value) == (
        f"dataset {path} [train]: 3 invalid row(s) of 5: {path}:2: empty prompt; {path}:3: last turn not user; "
        f"{path}:4: answer not text (fix them, or set `on_invalid: drop` on this source to drop and count them)"
    )
    with pytest.raises(RecipeError, match="3 invalid row.s. of the first 5: .*:2: empty prompt"):
        probe_mixture(MixtureConfig.from_dict({"datasets": [{"id": str(path)}]}), "prompt")
    data, [report], _ = build_mixture(
        MixtureConfig.from_dict({"datasets": [{"id": str(path), "on_invalid": "drop"}]}), "prompt"
    )
    assert report.format == "prompt_only"
    assert report.invalid == {"empty prompt": 1, "last turn not user": 1, "answer not text": 1}
    # `datasets` reads this mixed column as Json, which turns the string "7" into 7: both come back as "7"
    assert data["train"]["answer"] == ["7", "7"]


def test_duplicate_prompts_are_one_row_whatever_their_answers(tmp_path):
    rows = [
        {"prompt": "Spell river backwards.", "answer": "revir"},
        {"prompt": "spell  RIVER backwards.", "answer": "something else"},  # same prompt, normalised
        {"prompt": [user("Spell river backwards.")]},
        {"prompt": "Spell copper backwards.", "answer": "reppoc"},
    ]
    eval_rows = [{"prompt": [user("Spell copper backwards.")], "answer": "reppoc"}]
    train, test = jsonl(tmp_path / "d" / "train.jsonl", rows), jsonl(tmp_path / "d" / "test.jsonl", eval_rows)
    assert train.parent == test.parent
    mixture = MixtureConfig.from_dict({"datasets": [{"id": str(train.parent)}], "test_split": "test"})
    data, reports, _ = build_mixture(mixture, "prompt")
    report = next(r for r in reports if r.role == "train")
    assert (report.duplicates, report.decontaminated, report.rows_kept) == (2, 1, 1)
    assert data["train"]["answer"] == ["revir"]  # the first occurrence wins
    assert data["test"]["answer"] == ["reppoc"]


@pytest.mark.parametrize(
    ("columns", "stage", "hint"),
    [
        (["messages", "label"], "prompt", "labelled completions (stage kto)"),
        (["text"], "prompt", "plain text (stage cpt)"),
        (["prompt", "answer"], "sft", "prompts (stage prompt)"),
        (["prompt", "solution"], "dpo", "prompts (stage prompt)"),
    ],
)
def test_a_file_of_another_stage_gets_the_usual_hint(columns, stage, hint):
    example = {"messages": [user("hi"), assistant("hello")], "label": True, "text": "x", "prompt": "2+2?"}
    with pytest.raises(RecipeError) as error:
        detect_format(columns, example, stage, "data/x.jsonl")
    assert f"for stage {stage}; these look like {hint}; set `format:` to one of" in str(error.value)


def test_declared_formats_for_stage_prompt():
    check_format("prompt_only", ["prompt"], "prompt", "data/x.jsonl")
    check_format("messages", ["messages", "label"], "prompt", "data/x.jsonl")  # declared: read as told
    with pytest.raises(RecipeError) as error:
        check_format("prompt_only", ["prompt"], "sft", "data/x.jsonl")
    assert "format `prompt_only` is not read by stage sft (it is for prompt)" in str(error.value)
    with pytest.raises(RecipeError) as error:
        check_format("prompt_only", ["question", "answer"], "prompt", "data/x.jsonl")
    assert str(error.value) == (
        "data/x.jsonl: format `prompt_only` needs column `prompt`; the columns are [question, answer]"
    )


def test_smoke_rows_for_stage_prompt_are_valid():
    fmt = DEFAULT_FORMATS["prompt"]
    rows = generate_rows(fmt, "prompt", None, None, 4)
    out = convert_batch({c: [r[c] for r in rows] for c in rows[0]}, fmt=fmt, stage="prompt")
    assert out["invalid"] == [""] * 4
    assert out["answer"][0] == "3 plus 7 is 10."


# --- The tiny task's pairs, as GRPO reads them ----------------------------------------------------------


def prompt_recipe(workdir: Path, **keys) -> Path:
    recipe = workdir / "prompt.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": "data/tiny/model",
        "dataset_mixture": {"datasets": [{"id": "data/tiny/dpo", "split": "train"}], "test_split": "test"},
        "output_dir": "runs/prompt", **keys,
    }))  # fmt: skip
    return recipe


def test_tiny_pairs_become_prompts_with_the_chosen_answer(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = parse_recipe("prompt", [str(prompt_recipe(workdir))])
    tokenizer = load_tokenizer(recipe)
    data, report = prepare_data(recipe, tokenizer)
    raw = [json.loads(line) for line in (workdir / "data/tiny/dpo/train.jsonl").read_text().splitlines()]
    assert data["train"].column_names == ["prompt", "answer", "tools"]
    assert len(data["train"]) == len(raw) == 400  # unique prompts: nothing dropped
    assert data["train"]["prompt"] == [row["prompt"] for row in raw]
    assert data["train"]["answer"] == [row["chosen"][0]["content"] for row in raw]
    assert [(s.role, s.format, s.rows_read, s.rows_trained) for s in report.sources] == [
        ("test", "preference", len(data["test"]), len(data["test"])),
        ("train", "preference", 400, 400),
    ]
    # GRPOConfig has no max_length: nothing is cut; the tokens counted are the prompts' with the generation prompt
    assert report.max_length is None
    rendered = tokenizer.apply_chat_template(raw[0]["prompt"], add_generation_prompt=True, tokenize=False)
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    batch = {"prompt": [raw[0]["prompt"]], "tools": [None]}
    assert token_lengths(batch, stage="prompt", tokenizer=tokenizer) == {
        "_prompt_tokens": [expected],
        "_total_tokens": [expected],
    }
    assert report.splits["train"].tokens["p50"] > 0
    assert "train: 400 of 400 prompts trained (no max_length: prompts are not cut)" in report.table()
    card = "\n".join(report.card_lines())
    assert "- train: 400 of 400 prompts trained (no max_length: prompts are not cut)" in card


def test_a_max_length_drops_only_prompts_longer_than_it():
    assert classify_lengths([10, 12, 13], [10, 12, 13], 12, "prompt") == ["whole", "whole", "too_long"]
    assert classify_lengths([10, 13], [10, 13], None, "prompt") == ["whole", "whole"]


def test_alignment_data_writes_and_shows_prompts_and_answers(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    main(["data", str(prompt_recipe(workdir)), "--stage", "prompt", "--output_dir", "inspect"])
    first = json.loads((workdir / "inspect" / "train.jsonl").read_text().splitlines()[0])
    raw = json.loads((workdir / "data/tiny/dpo/train.jsonl").read_text().splitlines()[0])
    assert first == {"prompt": raw["prompt"], "answer": raw["chosen"][0]["content"], "tools": None}
    out = capsys.readouterr().out
    assert "--- example 1 of 400 (train) ---" in out
    assert f"--- answer (the reference a reward compares with) ---\n{first['answer']}\n" in out
    assert "[[" not in out  # nothing of a prompt row is trained on
