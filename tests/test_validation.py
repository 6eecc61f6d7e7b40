"""validate_row: a row for every reason, the tool loop, Arrow's `tool_calls: None`, the order of checks."""

from __future__ import annotations

import pytest

from alignment.data.validation import INVALID_REASONS, NO_PREFERENCE, validate_row
from alignment.errors import RecipeError

from .messages import assistant, tool, user

SYSTEM = {"role": "system", "content": "You are terse."}
WEATHER = ("get_weather", '{"city": "Lyon"}')
TOOLS = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]'


def sft(*messages: dict, tools: str | None = None) -> dict:
    return {"messages": list(messages), "tools": tools}


def pair(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "tools": None}


def kto(prompt: list[dict], completion: list[dict], label: object) -> dict:
    return {"prompt": prompt, "completion": completion, "label": label, "tools": None}


# One row per reason, each failing for that reason only.
EXAMPLES: dict[str, tuple[dict, str]] = {
    "malformed row": (sft(user("hi"), {"role": "assistant", "content": None}), "sft"),
    "non-text content": (
        sft(user("what is this?"), {"role": "assistant", "content": [{"type": "image", "url": "x.png"}]}),
        "sft",
    ),
    "label not boolean": (kto([user("2+2?")], [assistant("4")], 1), "kto"),
    "unknown role": (sft({"role": "narrator", "content": "Once"}, user("hi"), assistant("hello")), "sft"),
    "system not first": (sft(user("hi"), SYSTEM, assistant("hello")), "sft"),
    "consecutive user turns": (sft(user("hi"), user("anyone?"), assistant("yes")), "sft"),
    "consecutive assistant turns": (sft(user("hi"), assistant("hello"), assistant("again")), "sft"),
    "tool result without a call": (sft(user("weather?"), tool("sunny"), assistant("Sunny.")), "sft"),
    "tool call without a result": (sft(user("weather?"), assistant("", WEATHER), assistant("Sunny.")), "sft"),
    "last turn not assistant": (sft(user("hi"), assistant("hello"), user("bye")), "sft"),
    "empty prompt": ({"prompt": [user(" ")], "answer": "4", "tools": None}, "prompt"),
    "last turn not user": ({"prompt": [user("2+2?"), assistant("4")], "answer": None}, "prompt"),
    "prompt has no user turn": (pair([SYSTEM], [assistant("a")], [assistant("b")]), "dpo"),
    "answer not assistant": (pair([user("hi")], [assistant("", WEATHER), tool("x")], [assistant("b")]), "rm"),
    "answer not text": ({"prompt": [user("Half of 15?")], "answer": 7.5, "tools": None}, "prompt"),
    "empty answer": (pair([user("hi")], [assistant("fine")], [assistant(" \n\t")]), "dpo"),
    "chosen equals rejected": (pair([user("hi")], [assistant("same")], [assistant("same")]), "dpo"),
    "empty text": ({"text": "  \n"}, "cpt"),
    "missing label": ({"text": "great film", "label": ""}, "classify"),
}


def test_every_reason_has_an_example():
    # "no preference" is the reader's (an arena tie has no pair to validate): tests/test_arena.py
    assert set(EXAMPLES) | {NO_PREFERENCE} == set(INVALID_REASONS)
    assert len(INVALID_REASONS) == len(set(INVALID_REASONS))


@pytest.mark.parametrize("reason", list(EXAMPLES))
def test_each_reason(reason):
    row, stage = EXAMPLES[reason]
    assert validate_row(row, stage) == reason


# --- Valid rows ----------------------------------------------------------------------------------------


def test_valid_rows_of_every_stage():
    assert validate_row(sft(SYSTEM, user("hi"), assistant("hello"), tools=TOOLS), "sft") == ""
    assert validate_row(pair([SYSTEM, user("hi")], [assistant("hello")], [assistant("go away")]), "dpo") == ""
    assert validate_row(pair([user("hi")], [assistant("hello")], [assistant("go away")]), "rm") == ""
    assert validate_row(kto([user("2+2?")], [assistant("5")], False), "kto") == ""
    assert validate_row({"text": "Once upon a time"}, "cpt") == ""
    assert validate_row({"text": "great film", "label": "positive"}, "classify") == ""
    assert validate_row({"text": "great film", "label": 0}, "classify") == ""


def test_the_tool_loop_is_valid():
    loop = sft(
        user("weather?"), assistant("Checking.", WEATHER), tool('{"sky": "sunny"}'), assistant("Sunny.")
    )
    assert validate_row(loop, "sft") == ""
    parallel = sft(
        user("weather in Lyon and Oslo?"),
        assistant("", WEATHER, ("get_weather", '{"city": "Oslo"}')),
        tool("sunny"),
        tool("snow"),
        assistant("Lyon sunny, Oslo snow."),
    )
    assert validate_row(parallel, "sft") == ""


def test_an_answer_that_only_calls_a_tool_is_not_empty():
    assert validate_row(sft(user("weather?"), assistant("", WEATHER), tools=TOOLS), "sft") == ""
    assert (
        validate_row(pair([user("weather?")], [assistant("", WEATHER)], [assistant("No idea.")]), "dpo") == ""
    )
    assert validate_row(kto([user("weather?")], [assistant("", WEATHER)], True), "kto") == ""


def test_a_preference_prompt_may_end_on_a_tool_result():
    prompt = [user("weather?"), assistant("", WEATHER), tool("sunny")]
    assert validate_row(pair(prompt, [assistant("Sunny.")], [assistant("Rainy.")]), "dpo") == ""


def test_arrow_tool_calls_none_counts_as_no_calls():
    """Rows read back from Arrow carry `tool_calls: None` on every message that calls nothing."""
    row = sft(
        {"role": "user", "content": "hi", "tool_calls": None},
        {"role": "assistant", "content": "hello", "tool_calls": None},
    )
    assert validate_row(row, "sft") == ""
    empty = sft(
        {"role": "user", "content": "hi", "tool_calls": None},
        {"role": "assistant", "content": "", "tool_calls": None},
    )
    assert validate_row(empty, "sft") == "empty answer"
    arrow_pair = pair(
        [{"role": "user", "content": "hi", "tool_calls": None}],
        [{"role": "assistant", "content": "same", "tool_calls": None}],
        [{"role": "assistant", "content": "same"}],
    )
    assert validate_row(arrow_pair, "dpo") == "chosen equals rejected"


# --- Details of each check -----------------------------------------------------------------------------


def test_kto_label_must_be_a_python_bool():
    for label in (0, 1, "true", "False", None):
        assert validate_row(kto([user("q")], [assistant("a")], label), "kto") == "label not boolean"
    assert validate_row(kto([user("q")], [assistant("a")], True), "kto") == ""


def test_sft_needs_a_user_turn_and_a_final_answer():
    assert validate_row(sft(), "sft") == "last turn not assistant"
    assert validate_row(sft(SYSTEM, assistant("Hello!")), "sft") == "prompt has no user turn"
    assert validate_row(sft(user("hi"), assistant("   ")), "sft") == "empty answer"


def test_preference_answers():
    assert validate_row(pair([user("hi")], [], [assistant("b")]), "dpo") == "empty answer"
    assert validate_row(pair([user("hi")], [assistant("a")], [user("b"), assistant("c")]), "dpo") == (
        "consecutive user turns"
    )
    # A prompt that already holds the answer: chosen starts a second assistant turn.
    assert validate_row(pair([user("hi"), assistant("a")], [assistant("b")], [assistant("c")]), "dpo") == (
        "consecutive assistant turns"
    )
    # Same words, different tool call: not equal.
    other = ("get_weather", '{"city": "Oslo"}')
    assert validate_row(pair([user("w?")], [assistant("", WEATHER)], [assistant("", other)]), "dpo") == ""


def test_kto_completion_must_be_an_assistant_answer():
    assert validate_row(kto([user("q")], [], True), "kto") == "empty answer"
    assert validate_row(kto([assistant("a")], [user("q")], True), "kto") == "prompt has no user turn"
    assert validate_row(kto([user("q"), assistant("", WEATHER)], [tool("x")], True), "kto") == (
        "answer not assistant"
    )


def test_shape_problems_are_malformed():
    assert validate_row({"messages": "hi", "tools": None}, "sft") == "malformed row"
    assert validate_row(sft(user("hi"), assistant("a"), tools="not json"), "sft") == "malformed row"
    assert validate_row(sft(user("hi"), assistant("a"), tools='"a string"'), "sft") == "malformed row"
    bad_call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "f"}}],
    }
    assert validate_row(sft(user("hi"), bad_call), "sft") == "malformed row"
    dict_args = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
    }
    assert validate_row(sft(user("hi"), dict_args), "sft") == "malformed row"
    assert validate_row({"prompt": [user("q")], "completion": [assistant("a")]}, "kto") == "malformed row"
    assert validate_row({"text": None}, "cpt") == "malformed row"
    assert validate_row({"text": "ok", "label": 0.5}, "classify") == "malformed row"
    assert validate_row({"text": "ok", "label": True}, "classify") == "malformed row"
    assert validate_row({"text": "ok", "label": None}, "classify") == "missing label"
    assert validate_row("not a row", "sft") == "malformed row"  # type: ignore[arg-type]


def test_the_first_reason_wins():
    # Shape before order: the image at the end is reported, not the two user turns at the start.
    row = sft(user("a"), user("b"), {"role": "assistant", "content": [{"type": "image_url"}]})
    assert validate_row(row, "sft") == "non-text content"
    # Order of turns before the stage's needs: a system turn in the middle of a conversation ending on a user.
    assert validate_row(sft(user("a"), SYSTEM, user("b")), "sft") == "system not first"


def test_unknown_stage_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"unknown stage `dop`; did you mean `dpo`\?"):
        validate_row(sft(user("hi"), assistant("a")), "dop")
