"""`alignment data`: a file in each format, with no `format:` key, is detected and converted for its stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignment.cli import main

from .messages import assistant, user

CALL = {"type": "function", "function": {"name": "get_time", "arguments": '{"city": "Lima"}'}}

# (stage, file name, rows or text, expected format, expected first canonical row)
CASES = [
    ("sft", "openai.jsonl",
     [{"messages": [{"role": "system", "content": "Be terse."},
                    {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                    {"role": "assistant", "content": "Hello."}]}],
     "messages", {"messages": [{"role": "system", "content": "Be terse."}, user("Hi there"), assistant("Hello.")],
                  "tools": None}),
    ("sft", "fastchat.json",
     [{"id": "x1", "conversations": [{"from": "human", "value": "Time in Lima?"},
                                     {"from": "function_call", "value": '{"name": "get_time", "arguments": {"city": "Lima"}}'},
                                     {"from": "observation", "value": "09:00"},
                                     {"from": "gpt", "value": "It is 09:00."}],
       "tools": '[{"name": "get_time", "parameters": {"type": "object"}}]'}],
     "sharegpt", {"messages": [user("Time in Lima?"), {"role": "assistant", "content": "", "tool_calls": [CALL]},
                               {"role": "tool", "content": "09:00"}, assistant("It is 09:00.")],
                  "tools": '[{"name": "get_time", "parameters": {"type": "object"}}]'}),
    ("sft", "alpaca.json",
     [{"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit",
       "history": [["Translate to French: yes", "oui"]]}],
     "alpaca", {"messages": [user("Translate to French: yes"), assistant("oui"),
                             user("Translate to French.\nGood night"), assistant("Bonne nuit")], "tools": None}),
    ("sft", "pc.jsonl", [{"prompt": "2+2=", "completion": "4"}],
     "prompt_completion", {"messages": [user("2+2="), assistant("4")], "tools": None}),
    ("dpo", "ultrafeedback.jsonl",
     [{"prompt": "Name a prime.", "chosen": [user("Name a prime."), assistant("7")],
       "rejected": [user("Name a prime."), assistant("9")], "score_chosen": 9.0, "score_rejected": 2.0}],
     "preference", {"prompt": [user("Name a prime.")], "chosen": [assistant("7")], "rejected": [assistant("9")],
                    "tools": None}),
    ("dpo", "hh.jsonl",
     [{"chosen": "\n\nHuman: Any tips for sleep?\n\nAssistant: Keep a regular schedule and dim the lights.",
       "rejected": "\n\nHuman: Any tips for sleep?\n\nAssistant: Keep a drink handy."}],
     "hh", {"prompt": [user("Any tips for sleep?")],
            "chosen": [assistant("Keep a regular schedule and dim the lights.")],
            "rejected": [assistant("Keep a drink handy.")], "tools": None}),
    ("dpo", "lf_alpaca_pref.json",
     [{"instruction": "Say hi", "input": "", "chosen": "Hi!", "rejected": "Go away."}],
     "alpaca", {"prompt": [user("Say hi")], "chosen": [assistant("Hi!")], "rejected": [assistant("Go away.")],
                "tools": None}),
    ("dpo", "lf_sharegpt_pref.json",
     [{"conversations": [{"from": "human", "value": "Say hi"}],
       "chosen": {"from": "gpt", "value": "Hi!"}, "rejected": {"from": "gpt", "value": "No."}}],
     "preference", {"prompt": [user("Say hi")], "chosen": [assistant("Hi!")], "rejected": [assistant("No.")],
                    "tools": None}),
    ("rm", "pairs.jsonl", [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}],
     "preference", {"prompt": [user("Say hi")], "chosen": [assistant("Hi!")], "rejected": [assistant("No.")],
                    "tools": None}),
    ("kto", "kto.jsonl", [{"messages": [user("Say hi"), assistant("Hi!")], "label": True}],
     "kto", {"prompt": [user("Say hi")], "completion": [assistant("Hi!")], "label": True, "tools": None}),
    ("kto", "kto_pc.jsonl", [{"prompt": "Say hi", "completion": "Go away.", "label": False}],
     "prompt_completion", {"prompt": [user("Say hi")], "completion": [assistant("Go away.")], "label": False,
                           "tools": None}),
    ("cpt", "corpus.txt", "The tide came in at dawn.\nGulls followed the boats.\n",
     "text", {"text": "The tide came in at dawn."}),
    ("classify", "sms.csv", "text,label\nWIN a free cruise now,spam\nSee you at 6,ham\n",
     "classification", {"text": "WIN a free cruise now", "label": "spam"}),
]  # fmt: skip


def write(path: Path, content: list[dict] | str) -> None:
    if isinstance(content, str):
        path.write_text(content)
    elif path.suffix == ".json":
        path.write_text(json.dumps(content))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in content))


@pytest.mark.parametrize(("stage", "name", "content", "fmt", "expected"), CASES, ids=[c[1] for c in CASES])
def test_each_format_is_detected_and_converted(
    workdir, monkeypatch, capsys, stage, name, content, fmt, expected
):
    monkeypatch.chdir(workdir)
    write(workdir / name, content)
    recipe = workdir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": "data/tiny/model", "dataset_mixture": {"datasets": [{"id": name}]},
        "max_length": 128, "output_dir": "runs/data",
    }))  # fmt: skip
    main(["data", str(recipe), "--stage", stage, "--output_dir", "inspect"])
    [first, *_] = [
        json.loads(line) for line in (workdir / "inspect" / "train.jsonl").read_text().splitlines()
    ]
    assert first == expected
    report = json.loads((workdir / "inspect" / "data_report.json").read_text())
    assert report["sources"][0]["format"] == fmt
    assert report["splits"]["train"]["rows_trained"] >= 1
    assert "--- example 1 of" in capsys.readouterr().out
