"""Length accounting: token counts checked by hand on the char-level tokenizer, then against TRL itself.

With the tiny ChatML tokenizer every character is one token and `<|im_start|>`, `<|im_end|>`,
`user`, `assistant`, `system` are one token each, so a turn `<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`
is 5 + len(CONTENT) tokens and the generation prompt `<|im_start|>assistant\\n` is 3.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from datasets import Dataset

from alignment.data.lengths import (
    LengthCounts,
    classify_lengths,
    common_prefix_length,
    length_percentiles,
    token_lengths,
)
from alignment.errors import RecipeError
from alignment.tiny.build import build_tokenizer


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str, **extra) -> dict:
    return {"role": "assistant", "content": content, **extra}


def turn(content: str) -> int:
    return 5 + len(content)


GEN = 3  # <|im_start|> assistant \n


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(["A tiny corpus."])


# Three SFT rows: at max_length 20 the first is whole, the second truncated, the third too long.
SFT_ROWS = [
    {"messages": [user("hi"), assistant("yo")], "tools": None},
    {"messages": [user("q"), assistant("z" * 20)], "tools": None},
    {"messages": [{"role": "system", "content": "Be brief."}, user("hi"), assistant("yo")], "tools": None},
]
# Three DPO rows: at max_length 16 whole, truncated, too long.
DPO_ROWS = [
    {"prompt": [user("hi")], "chosen": [assistant("yo")], "rejected": [assistant("nope")], "tools": None},
    {"prompt": [user("q")], "chosen": [assistant("z" * 10)], "rejected": [assistant("ok")], "tools": None},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, user("What is 2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("five")],
        "tools": None,
    },
]


def columns(rows: list[dict]) -> dict[str, list]:
    return {column: [row[column] for row in rows] for column in rows[0]}


def test_sft_lengths_counted_by_hand(tokenizer):
    got = token_lengths(columns(SFT_ROWS), stage="sft", tokenizer=tokenizer)
    assert tokenizer.apply_chat_template(SFT_ROWS[0]["messages"], tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    )
    assert got["_prompt_tokens"] == [turn("hi") + GEN, turn("q") + GEN, turn("Be brief.") + turn("hi") + GEN]
    assert got["_prompt_tokens"] == [10, 9, 24]
    assert got["_total_tokens"] == [turn("hi") + turn("yo"), turn("q") + turn("z" * 20), 14 + 7 + 7]
    assert got["_total_tokens"] == [14, 31, 28]
    assert classify_lengths(got["_prompt_tokens"], got["_total_tokens"], 20, "sft") == [
        "whole",
        "truncated",
        "too_long",
    ]


def test_sft_prompt_is_everything_before_the_first_answer(tokenizer):
    multi = {"messages": [user("a"), assistant("b"), user("c"), assistant("d")], "tools": None}
    got = token_lengths(columns([multi]), stage="sft", tokenizer=tokenizer)
    assert got == {"_prompt_tokens": [turn("a") + GEN], "_total_tokens": [4 * turn("a")]}


def test_dpo_rm_kto_lengths_counted_by_hand(tokenizer):
    got = token_lengths(columns(DPO_ROWS), stage="dpo", tokenizer=tokenizer)
    assert got["_prompt_tokens"] == [10, 9, turn("Be brief.") + turn("What is 2+2?") + GEN]
    assert got["_prompt_tokens"] == [10, 9, 34]
    # The longer of prompt + chosen and prompt + rejected.
    assert got["_total_tokens"] == [7 + turn("nope"), 6 + turn("z" * 10), 31 + turn("five")]
    assert got["_total_tokens"] == [16, 21, 40]
    assert classify_lengths(got["_prompt_tokens"], got["_total_tokens"], 16, "dpo") == [
        "whole",
        "truncated",
        "too_long",
    ]
    # RewardTrainer drops a pair that does not fit instead of truncating it.
    assert token_lengths(columns(DPO_ROWS), stage="rm", tokenizer=tokenizer) == got
    assert classify_lengths(got["_prompt_tokens"], got["_total_tokens"], 16, "rm") == [
        "whole",
        "too_long",
        "too_long",
    ]

    kto = [{"prompt": [user("hi")], "completion": [assistant("yo")], "label": True, "tools": None}]
    assert token_lengths(columns(kto), stage="kto", tokenizer=tokenizer) == {
        "_prompt_tokens": [10],
        "_total_tokens": [14],
    }


def test_cpt_adds_eos_like_trl_and_classify_does_not(tokenizer):
    rows = {"text": ["abc", "abc<|im_end|>", ""]}
    assert token_lengths(rows, stage="cpt", tokenizer=tokenizer) == {
        "_prompt_tokens": [0, 0, 0],
        "_total_tokens": [4, 4, 1],
    }
    rows = {"text": ["abc", "Great film!"], "label": [0, 1]}
    assert token_lengths(rows, stage="classify", tokenizer=tokenizer)["_total_tokens"] == [3, 11]


TOOLS = json.dumps([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}])
CALL = {"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}}
TOOL_ROW = {
    "messages": [
        user("1+1?"),
        assistant("", tool_calls=[CALL]),
        {"role": "tool", "content": "2"},
        assistant("2"),
    ],
    "tools": TOOLS,
}


def test_token_lengths_as_a_batched_map_with_tools_and_arrow_rows(tokenizer):
    dataset = Dataset.from_list([*SFT_ROWS, TOOL_ROW])
    assert dataset[0]["messages"][0]["tool_calls"] is None  # Arrow fills the absent field
    mapped = dataset.map(
        token_lengths, batched=True, batch_size=2, fn_kwargs={"stage": "sft", "tokenizer": tokenizer}
    )
    # Rendering, then tokenising in one batch, gives what apply_chat_template(tokenize=True) gives, tools too.
    messages, tools = TOOL_ROW["messages"], json.loads(TOOLS)
    tool_total = len(tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)["input_ids"])
    tool_prompt = tokenizer.apply_chat_template(messages[:1], tools=tools, add_generation_prompt=True)[
        "input_ids"
    ]
    assert mapped["_total_tokens"] == [14, 31, 28, tool_total]
    assert mapped["_prompt_tokens"] == [10, 9, 24, len(tool_prompt)]
    assert tool_total > len(tool_prompt) > turn("1+1?") + GEN  # the tool schemas count as prompt


def test_bad_tools_json_and_missing_columns_are_named(tokenizer):
    with pytest.raises(RecipeError, match="`tools` is not valid JSON"):
        token_lengths(
            {"messages": [[user("hi"), assistant("yo")]], "tools": ["[{"]}, stage="sft", tokenizer=tokenizer
        )
    with pytest.raises(RecipeError, match="a dpo row has no `rejected` column"):
        token_lengths(
            {"prompt": [[user("hi")]], "chosen": [[assistant("yo")]]}, stage="dpo", tokenizer=tokenizer
        )


def test_classify_lengths_boundaries_and_modes():
    # A prompt of 10 tokens and a total of 14: too long up to 10, truncated at 11-13, whole from 14.
    fates = [classify_lengths([10], [14], m, "sft")[0] for m in (9, 10, 11, 13, 14, 15)]
    assert fates == ["too_long", "too_long", "truncated", "truncated", "whole", "whole"]
    assert classify_lengths([10, 50], [14, 90], None, "dpo") == ["whole", "whole"]
    assert classify_lengths([0, 0], [10, 30], 20, "cpt") == ["whole", "truncated"]
    assert classify_lengths([0, 0], [10, 30], 20, "classify") == ["whole", "truncated"]
    # Packing: TRL's default bfd still cuts each sequence; bfd_split and wrapped keep every token.
    assert classify_lengths([0], [30], 20, "cpt", packing=True) == ["truncated"]
    assert classify_lengths([0], [30], 20, "cpt", packing=True, packing_strategy="wrapped") == ["whole"]
    assert classify_lengths([25], [30], 20, "sft", packing=True, packing_strategy="bfd_split") == ["whole"]
    assert classify_lengths([25], [30], 20, "dpo", packing=True, packing_strategy="bfd_split") == ["too_long"]


def test_length_counts_and_percentiles():
    counts = LengthCounts.from_classes(["whole", "truncated", "too_long", "whole"])
    assert counts == LengthCounts(rows=4, dropped_too_long=1, truncated=1, rows_whole=2)
    # Each percentile is the smallest length with at least that share of rows at or under it.
    assert length_percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert length_percentiles([7, 3]) == {"p50": 3, "p90": 7, "p99": 7, "max": 7}
    assert length_percentiles([]) == {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2


# ---- agreement with TRL's own dataset preparation ---------------------------------------------


def tiny_llama(tokenizer, classifier: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        num_labels=1,
    )
    return (LlamaForSequenceClassification if classifier else LlamaForCausalLM)(config)


def with_lengths(rows: list[dict], stage: str, tokenizer) -> Dataset:
    dataset = Dataset.from_list([{**row, "row_id": i} for i, row in enumerate(rows)])
    return dataset.map(token_lengths, batched=True, fn_kwargs={"stage": stage, "tokenizer": tokenizer})


def test_sft_accounting_matches_sft_trainer(tokenizer, tmp_path):
    """SFTTrainer (assistant_only_loss, max_length 20) keeps just the rows not "too_long", at our lengths."""
    from trl import SFTConfig, SFTTrainer

    rows = [*SFT_ROWS, {"messages": [user("x" * 30), assistant("ok")], "tools": None}, TOOL_ROW]
    data = with_lengths(rows, "sft", tokenizer)
    fates = classify_lengths(data["_prompt_tokens"], data["_total_tokens"], 20, "sft")
    assert fates == ["whole", "truncated", "too_long", "too_long", "too_long"]

    args = SFTConfig(
        output_dir=str(tmp_path), max_length=20, assistant_only_loss=True, report_to="none", use_cpu=True
    )
    trainer = SFTTrainer(
        model=tiny_llama(tokenizer), args=args, train_dataset=data, processing_class=tokenizer
    )
    kept = trainer.train_dataset
    assert kept["row_id"] == [i for i, fate in enumerate(fates) if fate != "too_long"]
    assert [len(ids) for ids in kept["input_ids"]] == [
        min(data["_total_tokens"][i], 20) for i in kept["row_id"]
    ]
    # Untruncated, TRL's sequences are exactly our totals; its first trained label sits at our prompt length.
    full = trainer._prepare_dataset(
        data, tokenizer, dataclasses.replace(args, max_length=None), False, None, "full"
    )
    assert [len(ids) for ids in full["input_ids"]] == data["_total_tokens"]
    first_label = [next(i for i, label in enumerate(labels) if label != -100) for labels in full["labels"]]
    assert first_label == data["_prompt_tokens"]


@pytest.mark.parametrize("stage", ["dpo", "kto", "rm"])
def test_preference_accounting_matches_trl(tokenizer, tmp_path, stage):
    """DPO/KTO drop rows whose prompt fills max_length, RewardTrainer rows that do not fit; the rest agree."""
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer

    rows = DPO_ROWS
    if stage == "kto":
        rows = [
            {"prompt": row["prompt"], "completion": row["chosen"], "label": i != 1, "tools": None}
            for i, row in enumerate(DPO_ROWS)
        ]
    data = with_lengths(rows, stage, tokenizer)
    fates = classify_lengths(data["_prompt_tokens"], data["_total_tokens"], 16, stage)
    common = {"output_dir": str(tmp_path), "max_length": 16, "report_to": "none", "use_cpu": True}
    if stage == "dpo":
        trainer = DPOTrainer(
            model=tiny_llama(tokenizer),
            ref_model=tiny_llama(tokenizer),
            args=DPOConfig(**common),
            train_dataset=data,
            processing_class=tokenizer,
        )
        answers = ("chosen_ids", "rejected_ids")
    elif stage == "kto":
        trainer = KTOTrainer(
            model=tiny_llama(tokenizer),
            ref_model=tiny_llama(tokenizer),
            args=KTOConfig(**common),
            train_dataset=data,
            processing_class=tokenizer,
        )
        answers = ("completion_ids",)
    else:
        trainer = RewardTrainer(
            model=tiny_llama(tokenizer, classifier=True),
            args=RewardConfig(**common),
            train_dataset=data,
            processing_class=tokenizer,
        )
        answers = ()
    kept = trainer.train_dataset
    assert kept["row_id"] == [i for i, fate in enumerate(fates) if fate != "too_long"]
    assert len(kept) < len(rows)
    for row in kept:
        i = row["row_id"]
        if stage == "rm":  # RewardTrainer stores whole sequences
            assert max(len(row["chosen_ids"]), len(row["rejected_ids"])) == data["_total_tokens"][i]
            continue
        assert len(row["prompt_ids"]) == data["_prompt_tokens"][i]
        assert max(len(row["prompt_ids"]) + len(row[a]) for a in answers) == data["_total_tokens"][i]
