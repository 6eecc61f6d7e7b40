"""A recipe's data end to end: the tiny recipe's two formats, length accounting by hand, the report's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.data.prepare import prepare_data
from alignment.data.report import REPORT_FILE
from alignment.model import load_tokenizer
from alignment.recipe import parse_recipe
from tests.conftest import TINY_DPO, TINY_SFT


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared(stage: str, recipe: Path, *overrides: str):
    parsed = parse_recipe(stage, [str(recipe), *overrides])
    return (*prepare_data(parsed, load_tokenizer(parsed)), parsed)


def test_tiny_recipe_mixes_two_formats_and_reports_every_row(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    data, report, recipe = prepared("sft", TINY_SFT, "--output_dir", "runs/sft")
    formats = {s.id: s.format for s in report.sources if s.split == "train"}
    assert formats == {"data/tiny/sft": "messages", "data/tiny/sft_sharegpt": "sharegpt"}
    saved = json.loads((workdir / "runs" / "sft" / REPORT_FILE).read_text())
    for entry in saved["sources"]:
        assert {
            "id",
            "split",
            "format",
            "rows_read",
            "invalid",
            "duplicates",
            "decontaminated",
            "rows_kept",
        } <= set(entry)
    for name in ("train", "test"):
        assert {"rows", "dropped_too_long", "truncated", "rows_trained", "tokens"} <= set(
            saved["splits"][name]
        )
        assert set(saved["splits"][name]["tokens"]) == {"p50", "p90", "p99", "max"}
        assert saved["splits"][name]["rows_trained"] == len(data[name])
    train_sources = [s for s in saved["sources"] if s["role"] == "train"]
    assert sum(s["rows_read"] for s in train_sources) == 3000  # the session's tiny task
    assert sum(s["rows_trained"] for s in train_sources) == len(data["train"])
    # Every ShareGPT role became a chat role: nothing literal like `human` or `gpt` reaches the template.
    roles = {m["role"] for row in data["train"]["messages"] for m in row}
    assert roles == {"user", "assistant"}


# Hand-counted with the tiny character-level ChatML tokenizer: `<|im_start|>`, `<|im_end|>`, `user` and
# `assistant` are one token each, every other character one token. A turn is
# <|im_start|> role \n content <|im_end|> \n = 5 + len(content) tokens; the generation prompt
# <|im_start|> assistant \n is 3 tokens.
def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


HAND_ROWS = [
    chat("ab", "cd"),  # prompt 7 + 3 = 10, total 7 + 7 = 14: truncated at 12 (its <|im_end|> is cut)
    chat("a", "b"),  # total 6 + 6 = 12: whole at 12
    chat("abcdefg", "h"),  # prompt 12 + 3 = 15 >= 12: no answer token fits, dropped (total 12 + 6 = 18)
]


@pytest.mark.parametrize(("truncation", "trained"), [("truncate", [0, 1]), ("drop", [1])])
def test_length_accounting_matches_a_hand_count(workdir, monkeypatch, truncation, trained):
    monkeypatch.chdir(workdir)
    write_jsonl(workdir / "hand" / "train.jsonl", HAND_ROWS)
    mixture = json.dumps({"datasets": [{"id": "hand"}]})
    data, report, _ = prepared(
        "sft", TINY_SFT, "--dataset_mixture", mixture, "--max_length", "12", "--truncation", truncation,
        "--output_dir", "runs/hand",
    )  # fmt: skip
    split = report.splits["train"]
    assert (split.rows, split.dropped_too_long, split.truncated, split.rows_trained) == (
        3,
        1,
        1,
        len(trained),
    )
    assert (split.tokens["p50"], split.tokens["max"]) == (14, 18)  # untruncated lengths 14, 12, 18
    assert [row["messages"] for row in data["train"]] == [HAND_ROWS[i]["messages"] for i in trained]
    [source] = report.sources
    assert (source.dropped_too_long, source.truncated, source.rows_trained) == (1, 1, len(trained))


@pytest.mark.parametrize(("mode", "counts"), [("keep_start", (2, 1, 0, 1)), ("keep_end", (2, 0, 1, 2))])
def test_dpo_length_accounting_uses_the_longer_answer(workdir, monkeypatch, mode, counts):
    monkeypatch.chdir(workdir)
    pair = {
        "prompt": [{"role": "user", "content": "ab"}],  # 7 + 3 = 10
        "chosen": [{"role": "assistant", "content": "cd"}],  # prompt + chosen = 7 + 7 = 14
        "rejected": [{"role": "assistant", "content": "c"}],  # 7 + 6 = 13
    }
    long_prompt = {**pair, "prompt": [{"role": "user", "content": "abcdefghijk"}]}  # 16 + 3 = 19
    write_jsonl(workdir / "pairs" / "train.jsonl", [pair, long_prompt])
    mixture = json.dumps({"datasets": [{"id": "pairs"}]})
    data, report, _ = prepared("dpo", TINY_DPO, "--dataset_mixture", mixture, "--max_length", "14",
                               "--output_dir", "runs/pairs", "--model_name_or_path", "data/tiny/model",
                               "--truncation_mode", mode)  # fmt: skip
    split = report.splits["train"]
    # keep_start: TRL drops the pair whose prompt fills the window; keep_end: it keeps the end, cutting the prompt
    assert (split.rows, split.dropped_too_long, split.truncated, split.rows_trained) == counts
    assert split.tokens["max"] == 23  # the long prompt's pair: 16 + 7
    assert data["train"][0]["chosen"][0]["content"] == "cd"
