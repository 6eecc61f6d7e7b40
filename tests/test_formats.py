"""Format readers: every format people bring, converted to the exact canonical rows, with malformed variants.

Rows are written here in the shapes of FastChat, LLaMA-Factory, OpenAI, Alpaca, TRL, UltraFeedback-binarized
and Anthropic HH-RLHF files (not copied from them), one reader at a time, then detection, declared formats,
and one run through `Dataset.map` to show Arrow takes the output.
"""

from __future__ import annotations

import json

import datasets
import pytest

from alignment.data.formats import (
    FORMATS,
    STAGE_COLUMNS,
    STAGE_FORMATS,
    RoleTags,
    canonical_features,
    check_format,
    convert_batch,
    detect_format,
)
from alignment.errors import RecipeError

from .messages import assistant as A
from .messages import system as S
from .messages import tool as T
from .messages import user as U


def convert(rows: list[dict], fmt: str, stage: str, tags: RoleTags | None = None) -> list[dict]:
    """convert_batch on rows (as a dict of lists) and back to rows, `invalid` included."""
    batch = {column: [row.get(column) for row in rows] for column in rows[0]}
    out = convert_batch(batch, fmt=fmt, stage=stage, tags=tags)
    assert list(out) == [*STAGE_COLUMNS[stage], "invalid"]
    assert all(len(values) == len(rows) for values in out.values())
    return [{column: out[column][i] for column in out} for i in range(len(rows))]


def one(row: dict, fmt: str, stage: str, tags: RoleTags | None = None) -> dict:
    return convert([row], fmt, stage, tags)[0]


def reasons(rows: list[dict], fmt: str, stage: str, tags: RoleTags | None = None) -> list[str]:
    return [row["invalid"] for row in convert(rows, fmt, stage, tags)]


EMPTY_SFT = {"messages": [], "tools": None}
EMPTY_PAIR = {"prompt": [], "chosen": [], "rejected": [], "tools": None}
EMPTY_KTO = {"prompt": [], "completion": [], "label": None, "tools": None}
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


# --- ShareGPT (FastChat) -------------------------------------------------------------------------------


def fastchat(*turns: tuple[str, str]) -> dict:
    return {"id": "identity_7", "conversations": [{"from": who, "value": what} for who, what in turns]}


def test_fastchat_sharegpt():
    row = fastchat(
        ("human", "Name three primes."),
        ("gpt", " 2, 3 and 5.\n"),
        ("human", "And the next?"),
        ("gpt", "7."),
    )
    assert one(row, "sharegpt", "sft") == {
        "messages": [U("Name three primes."), A(" 2, 3 and 5.\n"), U("And the next?"), A("7.")],
        "tools": None,
        "invalid": "",
    }


def test_sharegpt_role_aliases():
    row = fastchat(("system", "Be brief."), ("user", "hi"), ("chatgpt", "a"), ("Human", "b"), ("bard", "c"))
    row["conversations"] += [{"from": "USER", "value": "d"}, {"from": "bing", "value": "e"}]
    row["conversations"] += [{"from": "human", "value": "f"}, {"from": "model", "value": "g"}]
    row["conversations"] += [{"from": "user", "value": "h"}, {"from": "assistant", "value": "i"}]
    out = one(row, "sharegpt", "sft")
    assert out["messages"] == [
        S("Be brief."),
        U("hi"),
        A("a"),
        U("b"),
        A("c"),
        U("d"),
        A("e"),
        U("f"),
        A("g"),
    ] + [
        U("h"),
        A("i"),
    ]
    assert out["invalid"] == ""


def test_sharegpt_malformed_variants():
    rows = [
        fastchat(("human", "hi"), ("narrator", "Meanwhile..."), ("gpt", "hello")),  # role that maps nowhere
        fastchat(("human", "hi"), ("gpt", None)),  # null where text is needed
        {"id": "x", "conversations": "human: hi"},  # not a list of turns
        fastchat(("human", "hi"), ("human", "hello?"), ("gpt", "yes")),
        fastchat(("human", "hi"), ("gpt", "hello"), ("human", "bye")),
        fastchat(("gpt", "I start."), ("human", "ok")),
        fastchat(("human", "hi"), ("gpt", "   ")),
    ]
    out = convert(rows, "sharegpt", "sft")
    assert [row["invalid"] for row in out] == [
        "unknown role",
        "malformed row",
        "malformed row",
        "consecutive user turns",
        "last turn not assistant",
        "last turn not assistant",
        "empty answer",
    ]
    # The unknown role is not passed through: the row is a placeholder.
    assert {k: out[0][k] for k in ("messages", "tools")} == EMPTY_SFT
    # A row that converts but is invalid keeps what it says, for the report.
    assert out[3]["messages"] == [U("hi"), U("hello?"), A("yes")]


# --- ShareGPT (LLaMA-Factory: function_call, observation, system, tools) -------------------------------


def llamafactory_tool_row() -> dict:
    return {
        "conversations": [
            {"from": "human", "value": "Weather in Lyon and Oslo?"},
            {"from": "gpt", "value": "Let me check both."},
            {
                "from": "function_call",
                "value": json.dumps(
                    [
                        {"name": "get_weather", "arguments": {"city": "Lyon"}},
                        {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    ]
                ),
            },
            {"from": "observation", "value": '{"sky": "sunny"}'},
            {"from": "observation", "value": '{"sky": "snow"}'},
            {"from": "gpt", "value": "Sunny in Lyon, snow in Oslo."},
            {"from": "human", "value": "And Rome?"},
            {
                "from": "function_call",
                "value": '{"name": "get_weather", "arguments": {"city": "Roma", "unit": "C"}}',
            },
            {"from": "observation", "value": "clouds"},
            {"from": "gpt", "value": "Cloudy."},
        ],
        "system": "You can call tools.",
        "tools": json.dumps(WEATHER_TOOLS),
    }


def test_llamafactory_sharegpt_with_function_calls():
    out = one(llamafactory_tool_row(), "sharegpt", "sft")
    assert out == {
        "messages": [
            S("You can call tools."),
            U("Weather in Lyon and Oslo?"),
            # The function_call turn lands on the gpt text turn before it: no two assistant turns in a row.
            A("Let me check both.", ("get_weather", '{"city": "Lyon"}'), ("get_weather", '{"city":"Oslo"}')),
            T('{"sky": "sunny"}'),
            T('{"sky": "snow"}'),
            A("Sunny in Lyon, snow in Oslo."),
            U("And Rome?"),
            A("", ("get_weather", '{"city": "Roma", "unit": "C"}')),  # no text before it: its own message
            T("clouds"),
            A("Cloudy."),
        ],
        "tools": json.dumps(WEATHER_TOOLS),  # a JSON string is kept verbatim
        "invalid": "",
    }


def test_llamafactory_sharegpt_malformed_variants():
    def variant(turns: list[tuple[str, str]], tools: str = "[]") -> dict:
        return {"conversations": [{"from": f, "value": v} for f, v in turns], "system": "", "tools": tools}

    call = '{"name": "get_weather", "arguments": {"city": "Lyon"}}'
    rows = [
        variant(
            [
                ("human", "weather?"),
                ("function_call", "get_weather(Lyon)"),
                ("observation", "x"),
                ("gpt", "y"),
            ]
        ),
        variant(
            [
                ("human", "weather?"),
                ("function_call", '{"arguments": {}}'),
                ("observation", "x"),
                ("gpt", "y"),
            ]
        ),
        variant([("human", "weather?"), ("observation", "sunny"), ("gpt", "Sunny.")]),
        variant([("human", "weather?"), ("function_call", call), ("gpt", "Sunny, I guess.")]),
        variant([("human", "weather?"), ("gpt", "Sunny.")], tools="get_weather(city)"),
        variant([("human", "weather?"), ("function_call", call)]),  # ends on the call: teaches calling, valid
    ]
    assert reasons(rows, "sharegpt", "sft") == [
        "malformed row",  # function_call value is not JSON
        "malformed row",  # a call without a name
        "tool result without a call",
        "tool call without a result",
        "malformed row",  # tools is not JSON
        "",
    ]


def test_sharegpt_system_column_and_system_turn():
    turns = [("system", "Be brief."), ("human", "hi"), ("gpt", "hello")]
    rows = [
        {"conversations": fastchat(*turns)["conversations"], "system": "Be brief.", "tools": "[]"},
        {"conversations": fastchat(*turns)["conversations"], "system": "Be verbose.", "tools": ""},
        {"conversations": fastchat(*turns[1:])["conversations"], "system": "Be verbose.", "tools": []},
    ]
    out = convert(rows, "sharegpt", "sft")
    # The same system prompt in both places is one system turn; two different ones are a conflict.
    assert out[0] == {"messages": [S("Be brief."), U("hi"), A("hello")], "tools": None, "invalid": ""}
    assert out[1]["invalid"] == "system not first"
    assert out[2] == {"messages": [S("Be verbose."), U("hi"), A("hello")], "tools": None, "invalid": ""}


def test_function_and_observation_tags():
    tags = RoleTags(function_tag="tool_use", observation_tag="tool_output")
    row = fastchat(("human", "2**10?"), ("tool_use", '{"name": "python", "arguments": "print(2**10)"}'))
    row["conversations"] += [{"from": "tool_output", "value": "1024"}, {"from": "gpt", "value": "1024"}]
    assert one(row, "sharegpt", "sft", tags)["messages"] == [
        U("2**10?"),
        A("", ("python", "print(2**10)")),
        T("1024"),
        A("1024"),
    ]


def test_role_tags():
    tags = RoleTags.from_dict(
        {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "agent"},
        "data[0]",
    )
    row = {
        "conversations": [
            {"speaker": "client", "text": "Refund please."},
            {"speaker": "agent", "text": "Order number?"},
            {"speaker": "human", "text": "42"},  # the usual aliases still apply
            {"speaker": "agent", "text": "Done."},
        ]
    }
    assert one(row, "sharegpt", "sft", tags)["messages"] == [
        U("Refund please."),
        A("Order number?"),
        U("42"),
        A("Done."),
    ]
    assert RoleTags.from_dict(None, "data[0]") == RoleTags()


def test_role_tags_errors():
    with pytest.raises(RecipeError) as error:
        RoleTags.from_dict({"user": "client"}, "data[0]")
    assert str(error.value) == (
        "`data[0].tags.user` is not a tag; did you mean `user_tag`?; valid keys: role_tag, content_tag, "
        "user_tag, assistant_tag, system_tag, function_tag, observation_tag"
    )
    with pytest.raises(RecipeError, match=r"`data\[0\].tags.role_tag` is 3; it must be a string"):
        RoleTags.from_dict({"role_tag": 3}, "data[0]")
    with pytest.raises(RecipeError, match=r"`data\[0\].tags` must be a mapping"):
        RoleTags.from_dict(["role_tag"], "data[0]")


# --- OpenAI messages -----------------------------------------------------------------------------------


def test_openai_messages_with_typed_parts_and_tool_calls():
    row = {
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Use tools. "}, {"type": "text", "text": "Be brief."}],
            },
            {"role": "user", "content": [{"type": "text", "text": "Weather in Lyon?"}], "tool_calls": None},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Lyon"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
            {"role": "assistant", "content": "Sunny.", "tool_calls": []},
        ],
        "tools": WEATHER_TOOLS,
    }
    assert one(row, "messages", "sft") == {
        "messages": [
            S("Use tools. Be brief."),
            U("Weather in Lyon?"),
            A("", ("get_weather", '{"city": "Lyon"}')),
            T('{"sky": "sunny"}'),
            A("Sunny."),  # tool_calls only where a message calls a tool
        ],
        "tools": json.dumps(WEATHER_TOOLS),
        "invalid": "",
    }


def test_arrow_null_keys_are_dropped_from_tools_and_arguments():
    """Arrow gives every struct the keys any row had; absent ones come back as null and are not data."""
    call = {"name": "get_weather", "arguments": {"city": "Lyon", "unit": None}}
    row = {
        "messages": [U("weather?"), {"role": "assistant", "content": "", "tool_calls": [{"function": call}]}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": None}}],
    }
    out = one(row, "messages", "sft")
    assert out["messages"][1] == A("", ("get_weather", '{"city": "Lyon"}'))
    assert out["tools"] == '[{"type": "function", "function": {"name": "get_weather"}}]'


def test_openai_messages_malformed_variants():
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "cat.png"}}]},
                A("A cat."),
            ]
        },
        {"messages": [U("hi"), {"role": "assistant", "content": None}]},
        {"messages": [U("hi"), A("hello"), S("late system")]},
        {"messages": [U("hi"), A("hello"), A("again")]},
        {"messages": [{"role": "developer", "content": "x"}, U("hi"), A("hello")]},
        {
            "messages": [
                U("hi"),
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": 3}}],
                },
            ]
        },
        {"messages": None},
    ]
    assert reasons(rows, "messages", "sft") == [
        "non-text content",
        "malformed row",
        "system not first",
        "consecutive assistant turns",
        "unknown role",
        "malformed row",
        "malformed row",
    ]


# --- Alpaca --------------------------------------------------------------------------------------------


def alpaca(instruction: str, input_: str, output: str, **extra) -> dict:
    return {"instruction": instruction, "input": input_, "output": output, **extra}


def test_alpaca_with_history_and_system():
    rows = [
        alpaca(
            "Translate to French:",
            "good morning",
            "bonjour",
            system="You translate.",
            history=[["Translate to French: cat", "chat"], ["And dog?", "chien"]],
        ),
        alpaca("Give a prime.", "", "7", system="", history=[]),
        alpaca("", "Only the input.", "ok", system=None, history=None),
    ]
    out = convert(rows, "alpaca", "sft")
    assert out[0] == {
        "messages": [
            S("You translate."),
            U("Translate to French: cat"),
            A("chat"),
            U("And dog?"),
            A("chien"),
            U("Translate to French:\ngood morning"),
            A("bonjour"),
        ],
        "tools": None,
        "invalid": "",
    }
    assert out[1]["messages"] == [U("Give a prime."), A("7")]
    assert out[2]["messages"] == [U("Only the input."), A("ok")]


def test_alpaca_malformed_variants():
    rows = [
        alpaca(None, "x", "y", history=None),
        alpaca("q", "x", "y", history=[["only the question"]]),
        alpaca("q", "", " ", history=None),
        alpaca("q", "", None, history=None),
    ]
    assert reasons(rows, "alpaca", "sft") == [
        "malformed row",
        "malformed row",
        "empty answer",
        "malformed row",
    ]


def test_alpaca_preference_llamafactory():
    rows = [
        {"instruction": "Sum 2 and 3.", "input": "", "chosen": "5", "rejected": "6", "system": "Be exact."},
        {"instruction": "Sum 2 and 2.", "input": "", "chosen": "4", "rejected": "4", "system": None},
        {"instruction": "Sum 1 and 1.", "input": "", "chosen": None, "rejected": "3", "system": None},
    ]
    out = convert(rows, "alpaca", "dpo")
    assert out[0] == {
        "prompt": [S("Be exact."), U("Sum 2 and 3.")],
        "chosen": [A("5")],
        "rejected": [A("6")],
        "tools": None,
        "invalid": "",
    }
    assert [row["invalid"] for row in out] == ["", "chosen equals rejected", "malformed row"]


def test_alpaca_kto():
    rows = [
        {"instruction": "Capital of Peru?", "input": "", "output": "Lima", "kto_tag": True},
        {"instruction": "Capital of Peru?", "input": "", "output": "Cusco", "kto_tag": False},
        {"instruction": "Capital of Peru?", "input": "", "output": "Lima", "kto_tag": 1},
    ]
    out = convert(rows, "alpaca", "kto")
    assert out[1] == {
        "prompt": [U("Capital of Peru?")],
        "completion": [A("Cusco")],
        "label": False,
        "tools": None,
        "invalid": "",
    }
    assert [row["invalid"] for row in out] == ["", "", "label not boolean"]
    assert out[2]["label"] is None


# --- prompt / completion -------------------------------------------------------------------------------


def test_prompt_completion_sft():
    rows = [
        {"prompt": "Reverse 'abc'.", "completion": "cba"},
        {"prompt": [S("Terse."), U("Reverse 'ab'.")], "completion": [A("ba")]},
        {"prompt": "Reverse ''.", "completion": ""},
        {"prompt": "Reverse 'x'.", "completion": None},
    ]
    out = convert(rows, "prompt_completion", "sft")
    assert out[0] == {"messages": [U("Reverse 'abc'."), A("cba")], "tools": None, "invalid": ""}
    assert out[1] == {"messages": [S("Terse."), U("Reverse 'ab'."), A("ba")], "tools": None, "invalid": ""}
    assert [row["invalid"] for row in out] == ["", "", "empty answer", "malformed row"]


def test_prompt_completion_kto():
    rows = [
        {"prompt": [U("2+2?")], "completion": [A("4")], "label": True},
        {"prompt": "2+2?", "completion": "5", "label": False},
        {"prompt": "2+2?", "completion": "4", "label": "True"},
        {"prompt": [A("Hi!")], "completion": [A("4")], "label": True},
    ]
    out = convert(rows, "prompt_completion", "kto")
    assert out[1] == {
        "prompt": [U("2+2?")],
        "completion": [A("5")],
        "label": False,
        "tools": None,
        "invalid": "",
    }
    assert [row["invalid"] for row in out] == ["", "", "label not boolean", "consecutive assistant turns"]


# --- Preference: TRL, UltraFeedback-binarized, implicit prompt, LLaMA-Factory ShareGPT -------------------


def test_preference_strings_and_lists():
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": [U("Capital of France?")], "chosen": [A("Paris.")], "rejected": [A("Lyon.")]},
    ]
    expected = {
        "prompt": [U("Capital of France?")],
        "chosen": [A("Paris.")],
        "rejected": [A("Lyon.")],
        "tools": None,
        "invalid": "",
    }
    assert convert(rows, "preference", "dpo") == [expected, expected]


def test_ultrafeedback_binarized_strips_the_repeated_prompt():
    prompt = "Write a haiku about rain."
    row = {
        "prompt": prompt,
        "prompt_id": "3f2a",
        "chosen": [U(prompt), A("Soft rain on the roof")],
        "rejected": [U(prompt), A("Rain is wet.")],
        "messages": [U(prompt), A("Soft rain on the roof")],
        "score_chosen": 8.5,
        "score_rejected": 3.0,
    }
    assert one(row, "preference", "dpo") == {
        "prompt": [U(prompt)],
        "chosen": [A("Soft rain on the roof")],
        "rejected": [A("Rain is wet.")],
        "tools": None,
        "invalid": "",
    }
    variants = [
        {**row, "rejected": [U(prompt + " "), A("Rain is wet.")]},  # not the same prompt: not stripped
        {**row, "rejected": [U(prompt)]},  # the prompt and no answer
        {**row, "chosen": None},
    ]
    assert reasons(variants, "preference", "dpo") == [
        "consecutive user turns",
        "empty answer",
        "malformed row",
    ]


def test_implicit_prompt_is_compared_message_by_message():
    history = [U("Name a fruit."), A("Apple."), U("Another one?")]
    row = {
        # Both answers start with "Sure, " and a character-wise split would move it into the prompt.
        "chosen": [*history, A("Sure, a banana.")],
        "rejected": [*history, A("Sure, an apple again.")],
    }
    assert one(row, "preference", "rm") == {
        "prompt": history,
        "chosen": [A("Sure, a banana.")],
        "rejected": [A("Sure, an apple again.")],
        "tools": None,
        "invalid": "",
    }


def test_preference_malformed_variants():
    rows = [
        {"chosen": [U("q"), A("same")], "rejected": [U("q"), A("same")]},  # identical conversations
        {"chosen": [U("q1"), A("a")], "rejected": [U("q2"), A("b")]},  # nothing shared: no prompt
        {"chosen": "Paris.", "rejected": "Lyon."},  # strings and no prompt: nothing to split on
        {"chosen": [U("q"), A("a"), U("more"), A("b")], "rejected": [U("q"), A("a"), U("else"), A("c")]},
        {"chosen": [U("q"), A("fine")], "rejected": [U("q"), A("")]},
    ]
    out = convert(rows, "preference", "dpo")
    assert [row["invalid"] for row in out] == [
        "chosen equals rejected",
        "prompt has no user turn",
        "malformed row",
        "answer not assistant",  # they part at a user turn: the "answers" start with a question
        "empty answer",
    ]
    assert out[0]["prompt"] == [U("q")] and out[0]["chosen"] == out[0]["rejected"] == [A("same")]


def test_llamafactory_sharegpt_preference():
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Lyon?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Lyon"}}'},
            {"from": "observation", "value": "sunny"},
        ],
        "chosen": {"from": "gpt", "value": "It is sunny in Lyon."},
        "rejected": {"from": "gpt", "value": "It rains."},
        "system": "Use tools.",
        "tools": json.dumps(WEATHER_TOOLS),
    }
    assert one(row, "preference", "dpo") == {
        "prompt": [
            S("Use tools."),
            U("Weather in Lyon?"),
            A("", ("get_weather", '{"city": "Lyon"}')),
            T("sunny"),
        ],
        "chosen": [A("It is sunny in Lyon.")],
        "rejected": [A("It rains.")],
        "tools": json.dumps(WEATHER_TOOLS),
        "invalid": "",
    }
    row["rejected"] = {"from": "human", "value": "It rains."}
    assert one(row, "preference", "dpo")["invalid"] == "answer not assistant"
    row["rejected"] = {"from": "critic", "value": "It rains."}
    assert one(row, "preference", "dpo")["invalid"] == "unknown role"


# --- Anthropic HH-RLHF ---------------------------------------------------------------------------------

HH_PROMPT = "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: For how long?"


def test_hh_multi_turn_with_shared_first_words():
    row = {
        "chosen": HH_PROMPT + "\n\nAssistant: About 9 minutes for a hard yolk.",
        "rejected": HH_PROMPT + "\n\nAssistant: About an hour.",
    }
    assert one(row, "hh", "dpo") == {
        "prompt": [U("How do I boil an egg?"), A("Put it in boiling water."), U("For how long?")],
        "chosen": [A("About 9 minutes for a hard yolk.")],  # "About " stays in both answers
        "rejected": [A("About an hour.")],
        "tools": None,
        "invalid": "",
    }


def test_hh_marker_takes_one_space_and_nothing_else():
    rows = [
        {
            "chosen": "\n\nHuman:  two spaces \n\nAssistant:no space\n",
            "rejected": "\n\nHuman:  two spaces \n\nAssistant: b",
        },
        {
            "chosen": "Human: no leading newlines\n\nAssistant: ok",
            "rejected": "Human: no leading newlines\n\nAssistant: no",
        },
    ]
    out = convert(rows, "hh", "dpo")
    assert (out[0]["prompt"], out[0]["chosen"], out[0]["rejected"]) == (
        [U(" two spaces ")],
        [A("no space\n")],
        [A("b")],
    )
    assert (out[1]["prompt"], out[1]["chosen"], out[1]["invalid"]) == (
        [U("no leading newlines")],
        [A("ok")],
        "",
    )


def test_hh_with_the_prompt_in_its_own_column():
    row = {"prompt": HH_PROMPT + "\n\nAssistant:", "chosen": " Nine minutes.", "rejected": " An hour."}
    out = one(row, "hh", "rm")
    assert out["prompt"][-1] == U("For how long?")
    assert (out["chosen"], out["rejected"], out["invalid"]) == ([A("Nine minutes.")], [A("An hour.")], "")


def test_hh_malformed_variants():
    rows = [
        {
            "chosen": HH_PROMPT + "\n\nAssistant: 9 minutes.",
            "rejected": "\n\nHuman: Other question?\n\nAssistant: 9.",
        },
        {"chosen": "Just some text.", "rejected": "Other text."},
        {
            "chosen": HH_PROMPT + "\n\nAssistant: 9.\n\nHuman: thanks",
            "rejected": HH_PROMPT + "\n\nAssistant: 60.",
        },
        {
            "chosen": "Preamble" + HH_PROMPT + "\n\nAssistant: 9.",
            "rejected": "Preamble" + HH_PROMPT + "\n\nAssistant: 60.",
        },
        {"chosen": HH_PROMPT + "\n\nAssistant: 9 minutes.", "rejected": HH_PROMPT + "\n\nAssistant:"},
        {"chosen": None, "rejected": HH_PROMPT + "\n\nAssistant: 60."},
    ]
    out = convert(rows, "hh", "dpo")
    assert [row["invalid"] for row in out] == [
        "malformed row",  # the two prompts differ
        "malformed row",  # no markers
        "malformed row",  # the text ends on a Human turn
        "malformed row",  # text before the first marker
        "empty answer",
        "malformed row",
    ]
    assert {k: out[1][k] for k in EMPTY_PAIR} == EMPTY_PAIR


# --- KTO -----------------------------------------------------------------------------------------------


def test_kto_messages_with_label():
    rows = [
        {"messages": [U("Capital of Chile?"), A("Santiago.")], "label": True},
        {"messages": [S("Terse."), U("Capital of Chile?"), A("Lima.")], "label": False},
        {"messages": [U("Capital of Chile?"), A("Santiago.")], "label": 0},
        {"messages": [U("Capital of Chile?")], "label": True},
        {"messages": [U("Capital of Chile?"), A("  ")], "label": False},
    ]
    out = convert(rows, "kto", "kto")
    assert out[1] == {
        "prompt": [S("Terse."), U("Capital of Chile?")],
        "completion": [A("Lima.")],
        "label": False,
        "tools": None,
        "invalid": "",
    }
    assert [row["invalid"] for row in out] == [
        "",
        "",
        "label not boolean",
        "prompt has no user turn",
        "empty answer",
    ]


def test_kto_llamafactory_sharegpt_with_kto_tag():
    row = {
        "conversations": [
            {"from": "human", "value": "Spell 'cat' backwards."},
            {"from": "gpt", "value": "tac"},
        ],
        "kto_tag": True,
        "system": "Spell carefully.",
    }
    assert one(row, "kto", "kto") == {
        "prompt": [S("Spell carefully."), U("Spell 'cat' backwards.")],
        "completion": [A("tac")],
        "label": True,
        "tools": None,
        "invalid": "",
    }
    row["conversations"] = None
    assert one(row, "kto", "kto") == {**EMPTY_KTO, "invalid": "malformed row"}


# --- Text and classification ---------------------------------------------------------------------------


def test_text_for_cpt():
    rows = [
        {"text": "  The tide came in.\n", "url": "x"},
        {"text": " \n\t", "url": "y"},
        {"text": None, "url": "z"},
    ]
    assert convert(rows, "text", "cpt") == [
        {"text": "  The tide came in.\n", "invalid": ""},
        {"text": " \n\t", "invalid": "empty text"},
        {"text": "", "invalid": "malformed row"},
    ]


def test_classification():
    rows = [
        {"text": "A delight.", "label": "positive"},
        {"text": "A bore.", "label": 0},
        {"text": "Fine.", "label": None},
        {"text": "Fine.", "label": ""},
        {"text": "", "label": "neutral"},
        {"text": "Fine.", "label": 0.5},
    ]
    out = convert(rows, "classification", "classify")
    assert out[:2] == [
        {"text": "A delight.", "label": "positive", "invalid": ""},
        {"text": "A bore.", "label": 0, "invalid": ""},
    ]
    assert [row["invalid"] for row in out] == [
        "",
        "",
        "missing label",
        "missing label",
        "empty text",
        "malformed row",
    ]


# --- Detection -----------------------------------------------------------------------------------------

SHAREGPT_EXAMPLE = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
OPENAI_EXAMPLE = {"messages": [U("hi"), A("hello")]}


@pytest.mark.parametrize(
    ("columns", "example", "stage", "expected"),
    [
        (["id", "conversations"], SHAREGPT_EXAMPLE, "sft", "sharegpt"),
        (["messages"], {"messages": SHAREGPT_EXAMPLE["conversations"]}, "sft", "sharegpt"),
        (
            ["conversations", "system", "tools"],
            {"conversations": OPENAI_EXAMPLE["messages"]},
            "sft",
            "messages",
        ),
        (["messages", "tools"], OPENAI_EXAMPLE, "sft", "messages"),
        (["prompt", "prompt_id", "messages"], OPENAI_EXAMPLE, "sft", "messages"),
        (["instruction", "input", "output", "history"], {}, "sft", "alpaca"),
        (["prompt", "completion"], {"prompt": "a", "completion": "b"}, "sft", "prompt_completion"),
        (["prompt", "chosen", "rejected"], {"chosen": "Paris."}, "dpo", "preference"),
        (
            ["prompt", "chosen", "rejected", "messages", "score_chosen"],
            {"chosen": [U("q")]},
            "dpo",
            "preference",
        ),
        (["chosen", "rejected"], {"chosen": [U("q"), A("a")]}, "rm", "preference"),
        (
            ["conversations", "chosen", "rejected"],
            {"chosen": {"from": "gpt", "value": "a"}},
            "dpo",
            "preference",
        ),
        (["chosen", "rejected"], {"chosen": HH_PROMPT + "\n\nAssistant: 9."}, "dpo", "hh"),
        (
            ["prompt", "chosen", "rejected"],
            {"prompt": HH_PROMPT + "\n\nAssistant:", "chosen": " 9."},
            "rm",
            "hh",
        ),
        (["instruction", "input", "chosen", "rejected"], {"chosen": "5"}, "dpo", "alpaca"),
        (["messages", "label"], OPENAI_EXAMPLE, "kto", "kto"),
        (["conversations", "kto_tag"], SHAREGPT_EXAMPLE, "kto", "kto"),
        (["prompt", "completion", "label"], {}, "kto", "prompt_completion"),
        (["instruction", "input", "output", "kto_tag"], {}, "kto", "alpaca"),
        (["text", "meta"], {"text": "x"}, "cpt", "text"),
        (["text", "label"], {"text": "x", "label": 1}, "classify", "classification"),
    ],
)
def test_detect_format(columns, example, stage, expected):
    assert detect_format(columns, example, stage, "data/train.jsonl") == expected
    assert expected in STAGE_FORMATS[stage]


def test_detection_failure_is_one_line():
    with pytest.raises(RecipeError) as error:
        detect_format(["foo", "bar"], {"foo": 1, "bar": 2}, "sft", "data/odd.jsonl")
    assert str(error.value) == (
        "data/odd.jsonl: cannot tell the format of columns [foo, bar] for stage sft; "
        "set `format:` to one of messages, sharegpt, alpaca, prompt_completion"
    )


@pytest.mark.parametrize(
    ("columns", "example", "stage", "hint"),
    [
        (["prompt", "chosen", "rejected"], {"chosen": "a"}, "sft", "preference pairs (stage dpo)"),
        (["prompt", "chosen", "rejected", "messages"], OPENAI_EXAMPLE, "sft", "preference pairs (stage dpo)"),
        (["prompt", "chosen", "rejected"], {"chosen": "a"}, "kto", "preference pairs (stage dpo)"),
        (["messages", "label"], OPENAI_EXAMPLE, "sft", "labelled completions (stage kto)"),
        (["text"], {"text": "x"}, "sft", "plain text (stage cpt)"),
        (["text", "label"], {"text": "x", "label": 0}, "cpt", "labelled text (stage classify)"),
        (["messages"], OPENAI_EXAMPLE, "dpo", "conversations (stage sft)"),
        (["messages", "label"], OPENAI_EXAMPLE, "rm", "labelled completions (stage kto)"),
    ],
)
def test_detection_names_the_stage_the_file_belongs_to(columns, example, stage, hint):
    with pytest.raises(RecipeError) as error:
        detect_format(columns, example, stage, "data/x.jsonl")
    assert f"for stage {stage}; these look like {hint}; set `format:` to one of" in str(error.value)


# --- Declared formats ----------------------------------------------------------------------------------


def test_check_format_accepts_a_declared_format():
    check_format("messages", ["messages", "label"], "sft", "data/x.jsonl")  # declared: no stage guessing
    check_format("kto", ["conversations", "kto_tag"], "kto", "data/x.jsonl")


SFT_FORMATS = "messages, sharegpt, alpaca, prompt_completion"
CHECK_FORMAT_ERRORS = [
    (
        ("sharegtp", ["conversations"], "sft"),
        f"unknown format `sharegtp`; did you mean `sharegpt`?; stage sft reads {SFT_FORMATS}",
    ),
    (
        ("hh", ["chosen", "rejected"], "sft"),
        f"format `hh` is not read by stage sft (it is for dpo, rm, prompt); use one of {SFT_FORMATS}",
    ),
    (
        ("alpaca", ["instruction", "input", "chosen"], "dpo"),
        "format `alpaca` needs column `rejected`; the columns are [instruction, input, chosen]",
    ),
    (
        ("kto", ["messages", "score"], "kto"),
        "format `kto` needs column `label` or `kto_tag`; the columns are [messages, score]",
    ),
]


@pytest.mark.parametrize(("args", "message"), CHECK_FORMAT_ERRORS)
def test_check_format_errors(args, message):
    with pytest.raises(RecipeError) as error:
        check_format(*args, "data/x.jsonl")
    assert str(error.value) == f"data/x.jsonl: {message}"


def test_every_format_is_described_and_read_by_some_stage():
    assert set(FORMATS) == {f for formats in STAGE_FORMATS.values() for f in formats}
    assert set(STAGE_FORMATS) == set(STAGE_COLUMNS)


def test_convert_batch_refuses_a_batch_missing_a_column():
    with pytest.raises(RecipeError, match="format `preference` needs column `rejected`"):
        convert_batch({"prompt": ["q"], "chosen": ["a"]}, fmt="preference", stage="dpo")


# --- Arrow ---------------------------------------------------------------------------------------------


def test_canonical_features():
    plain = canonical_features("sft", tool_calls=False)
    assert set(plain) == {"messages", "tools", "invalid"}
    assert set(plain["messages"].feature) == {"role", "content"}
    assert set(canonical_features("dpo", tool_calls=True)["chosen"].feature) == {
        "role",
        "content",
        "tool_calls",
    }
    assert canonical_features("kto", tool_calls=False)["label"] == datasets.Value("bool")
    assert set(canonical_features("classify", tool_calls=False, invalid=False)) == {"text"}
    labels = datasets.ClassLabel(names=["negative", "positive"])
    assert canonical_features("classify", tool_calls=False, label=labels)["label"] == labels
    assert canonical_features("kto", tool_calls=True, json_messages=True)["completion"] == datasets.List(
        datasets.Json()
    )


def test_dataset_map_accepts_the_output(tmp_path):
    """Mixed rows (with and without tool calls, and invalid ones) through a real batched map."""
    rows = [
        llamafactory_tool_row(),
        {**fastchat(("human", "hi"), ("gpt", "hello")), "system": None, "tools": None},
        {**fastchat(("human", "hi"), ("narrator", "...")), "system": None, "tools": None},
        {**fastchat(("human", "hi"), ("human", "again?")), "system": "Be kind.", "tools": None},
    ]
    raw = datasets.Dataset.from_list(
        [{k: row.get(k) for k in ("conversations", "system", "tools")} for row in rows]
    )
    converted = raw.map(
        convert_batch,
        batched=True,
        batch_size=2,
        fn_kwargs={"fmt": "sharegpt", "stage": "sft"},
        remove_columns=raw.column_names,
        features=canonical_features("sft", tool_calls=True),
        cache_file_name=str(tmp_path / "converted.arrow"),
    )
    assert converted["invalid"] == ["", "", "unknown role", "consecutive user turns"]
    assert converted[0]["messages"][2]["tool_calls"][1] == {
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    assert converted[1]["messages"] == [
        {"role": "user", "content": "hi", "tool_calls": None},
        {"role": "assistant", "content": "hello", "tool_calls": None},
    ]
    assert converted[2]["messages"] == []
    # What comes back from Arrow is still valid for the checks (tool_calls: None included).
    assert convert_batch(
        {"messages": [converted[1]["messages"]], "tools": [None]}, fmt="messages", stage="sft"
    )["invalid"] == [""]


def test_dataset_map_with_json_messages_keeps_each_message_as_it_is(tmp_path):
    rows = [
        {**llamafactory_tool_row(), "kto_tag": True},
        {**fastchat(("human", "hi"), ("gpt", "hello")), "system": "", "tools": "", "kto_tag": None},
    ]
    columns = ("conversations", "system", "tools", "kto_tag")
    raw = datasets.Dataset.from_list([{k: row[k] for k in columns} for row in rows])
    converted = raw.map(
        convert_batch,
        batched=True,
        batch_size=1,
        fn_kwargs={"fmt": "kto", "stage": "kto"},
        remove_columns=raw.column_names,
        features=canonical_features("kto", tool_calls=True, json_messages=True),
        cache_file_name=str(tmp_path / "converted.arrow"),
    )
    assert converted[0]["prompt"][2] == A(
        "Let me check both.", ("get_weather", '{"city": "Lyon"}'), ("get_weather", '{"city":"Oslo"}')
    )
    assert converted[0]["completion"] == [A("Cloudy.")]
    assert converted[1]["prompt"] == [U("hi")] and converted[1]["completion"] == [A("hello")]
    assert converted["label"] == [True, None] and converted["invalid"] == ["", "label not boolean"]
