"""Is a canonical row fit to train on? One reason string per row, so a data report can count them.

TRL's trainers accept whatever rows they are given: a conversation that ends on a user turn, a pair whose
chosen and rejected answers are the same, a KTO label read as the string "False", or a GRPO prompt that
ends on the assistant's own answer trains silently on nonsense (or fails deep inside tokenisation). `validate_row` names the first problem of a row in the
shapes of `alignment.data.formats` (see `STAGE_COLUMNS` there), in the order the checks below run:
the row's shape ("malformed row", "non-text content"), the KTO label, the order of turns, then what the
stage needs of its answer.
"""

from __future__ import annotations

import json
from typing import Any

from alignment.errors import RecipeError, closest

MALFORMED = "malformed row"
UNKNOWN_ROLE = "unknown role"
SYSTEM_NOT_FIRST = "system not first"
CONSECUTIVE_USER = "consecutive user turns"
CONSECUTIVE_ASSISTANT = "consecutive assistant turns"
TOOL_WITHOUT_CALL = "tool result without a call"
CALL_WITHOUT_TOOL = "tool call without a result"
LAST_NOT_ASSISTANT = "last turn not assistant"
EMPTY_PROMPT = "empty prompt"
LAST_NOT_USER = "last turn not user"
NO_USER_TURN = "prompt has no user turn"
ANSWER_NOT_ASSISTANT = "answer not assistant"
ANSWER_NOT_TEXT = "answer not text"
EMPTY_ANSWER = "empty answer"
CHOSEN_IS_REJECTED = "chosen equals rejected"
LABEL_NOT_BOOL = "label not boolean"
EMPTY_TEXT = "empty text"
MISSING_LABEL = "missing label"
NON_TEXT = "non-text content"
NO_PREFERENCE = "no preference (tie or both bad)"
NO_PREFERENCE_VOTES = ("tie", "both_bad")  # `alignment arena`'s `vote` values that prefer neither answer

# Stable report keys, in the order the checks run; a row gets the first that applies (for the order of
# turns: the first turn that breaks a rule).
INVALID_REASONS: tuple[str, ...] = (
    MALFORMED,  # not readable: a wrong type, null where text is needed, HH text without markers
    NO_PREFERENCE,  # dpo, rm: an arena vote of tie or both bad (`vote`), kept in the file, never a pair
    NON_TEXT,  # an image, audio or other non-text part in a message
    LABEL_NOT_BOOL,  # kto: the label is not a Python bool (0/1, "True" and None are refused, not guessed)
    UNKNOWN_ROLE,  # a role that is not system, user, assistant or tool
    SYSTEM_NOT_FIRST,
    CONSECUTIVE_USER,
    CONSECUTIVE_ASSISTANT,
    TOOL_WITHOUT_CALL,  # a tool message not after an assistant turn with tool_calls (or another tool message)
    CALL_WITHOUT_TOOL,  # an assistant turn with tool_calls followed by anything but its tool results
    LAST_NOT_ASSISTANT,  # sft: the conversation does not end on an assistant turn
    EMPTY_PROMPT,  # prompt: no turns, or its final user turn is blank
    LAST_NOT_USER,  # prompt: the prompt does not end on the user turn the policy answers
    NO_USER_TURN,  # sft, dpo, rm, kto: nothing a user asked
    ANSWER_NOT_ASSISTANT,  # dpo, rm, kto: chosen/rejected/completion not starting and ending on the assistant
    ANSWER_NOT_TEXT,  # prompt: the reference answer is not a string (a number, several turns, a tool call)
    EMPTY_ANSWER,  # the final assistant answer is empty or whitespace and calls no tool
    CHOSEN_IS_REJECTED,
    EMPTY_TEXT,  # cpt, classify
    MISSING_LABEL,  # classify: label None or ""
)

ROLES = ("system", "user", "assistant", "tool")
STAGES = ("sft", "dpo", "rm", "kto", "cpt", "classify", "prompt")


class _Malformed(Exception):
    """Raised inside the checks when a row's shape is wrong; reported as `reason`."""

    def __init__(self, reason: str = MALFORMED):
        super().__init__(reason)
        self.reason = reason


def validate_row(row: dict, stage: str) -> str:
    """Empty when the canonical `row` is fit for `stage`, else the first reason of INVALID_REASONS."""
    if stage not in STAGES:
        raise RecipeError(
            f"unknown stage `{stage}`{closest(stage, list(STAGES))}; stages: {', '.join(STAGES)}"
        )
    if not isinstance(row, dict):
        return MALFORMED
    try:
        if stage == "sft":
            return _check_sft(row)
        if stage in ("dpo", "rm"):
            return _check_preference(row)
        if stage == "kto":
            return _check_kto(row)
        if stage == "prompt":
            return _check_prompt(row)
        return _check_text(row, labelled=stage == "classify")
    except _Malformed as problem:
        return problem.reason


# --- Per stage -----------------------------------------------------------------------------------------


def _check_sft(row: dict) -> str:
    messages = _messages(row, "messages")
    _check_tools(row)
    problem = _order_problem(messages)
    if problem:
        return problem
    if not messages or messages[-1]["role"] != "assistant":
        return LAST_NOT_ASSISTANT
    if not _has_user(messages):
        return NO_USER_TURN
    return EMPTY_ANSWER if _is_empty_answer(messages[-1]) else ""


def _check_preference(row: dict) -> str:
    prompt, chosen, rejected = (_messages(row, key) for key in ("prompt", "chosen", "rejected"))
    _check_tools(row)
    problem = _order_problem(prompt + chosen) or _order_problem(prompt + rejected)
    if problem:
        return problem
    if not _has_user(prompt):
        return NO_USER_TURN
    problem = _answer_problem(chosen) or _answer_problem(rejected)
    if problem:
        return problem
    return CHOSEN_IS_REJECTED if _plain(chosen) == _plain(rejected) else ""


def _check_kto(row: dict) -> str:
    prompt, completion = _messages(row, "prompt"), _messages(row, "completion")
    _check_tools(row)
    if "label" not in row:
        return MALFORMED
    # Python bool only: 0/1 or "true" in a KTO file is a sign of a mis-read column, and guessing flips labels.
    if not isinstance(row["label"], bool):
        return LABEL_NOT_BOOL
    problem = _order_problem(prompt + completion)
    if problem:
        return problem
    if not _has_user(prompt):
        return NO_USER_TURN
    return _answer_problem(completion)


def _check_prompt(row: dict) -> str:
    """A prompt for online RL (GRPO, RLOO) ending on the user turn to answer; `answer` None or text."""
    prompt = _messages(row, "prompt")
    _check_tools(row)
    problem = _order_problem(prompt)
    if problem:
        return problem
    if not prompt:
        return EMPTY_PROMPT
    if prompt[-1]["role"] != "user":
        return LAST_NOT_USER
    if not prompt[-1]["content"].strip():
        return EMPTY_PROMPT
    answer = row.get("answer")  # None: no reference (a reward model or a reference-free reward scores it)
    if answer is None:
        return ""
    if not isinstance(answer, str):
        return ANSWER_NOT_TEXT
    return EMPTY_ANSWER if not answer.strip() else ""


def _check_text(row: dict, labelled: bool) -> str:
    text = row.get("text")
    if not isinstance(text, str):
        return MALFORMED
    if labelled:
        label = row.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)):
            return MALFORMED
    if not text.strip():
        return EMPTY_TEXT
    if labelled and row.get("label") in (None, ""):
        return MISSING_LABEL
    return ""


# --- Shape ---------------------------------------------------------------------------------------------


def _messages(row: dict, key: str) -> list[dict]:
    """The message list under `key`, with its shape checked (raises _Malformed)."""
    messages = row.get(key)
    if not isinstance(messages, list):
        raise _Malformed()
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Malformed()
        content = message.get("content")
        if isinstance(content, list | dict):
            raise _Malformed(NON_TEXT)
        if not isinstance(content, str):
            raise _Malformed()
        _check_tool_calls(message.get("tool_calls"))
    return messages


def _check_tool_calls(calls: Any) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _Malformed()
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type") not in (None, "function"):
            raise _Malformed()
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _Malformed()
        if not isinstance(function.get("arguments"), str):
            raise _Malformed()
        try:  # the OpenAI API's arguments are a JSON string; a model trained on broken ones emits broken calls
            json.loads(function["arguments"])
        except ValueError:
            raise _Malformed() from None


def _check_tools(row: dict) -> None:
    """`tools` is absent, None, "" or a JSON string of the tool schemas (a list, or one schema)."""
    tools = row.get("tools")
    if tools is None or tools == "":
        return
    if not isinstance(tools, str):
        raise _Malformed()
    try:
        parsed = json.loads(tools)
    except ValueError:
        raise _Malformed() from None
    if not isinstance(parsed, list | dict):
        raise _Malformed()


# --- Order of turns and answers ------------------------------------------------------------------------


def _order_problem(messages: list[dict]) -> str:
    """The first problem in the order of turns (assistant with tool_calls -> tool... -> assistant is fine)."""
    previous: dict | None = None
    for i, message in enumerate(messages):
        role = message["role"]
        if role not in ROLES:
            return UNKNOWN_ROLE
        if role == "system" and i > 0:
            return SYSTEM_NOT_FIRST
        calls_before = previous is not None and previous["role"] == "assistant" and _calls(previous)
        if calls_before and role != "tool":
            return CALL_WITHOUT_TOOL
        if role == "tool" and not (calls_before or (previous is not None and previous["role"] == "tool")):
            return TOOL_WITHOUT_CALL
        if previous is not None and role == previous["role"] == "user":
            return CONSECUTIVE_USER
        if previous is not None and role == previous["role"] == "assistant":
            return CONSECUTIVE_ASSISTANT
        previous = message
    return ""


def _answer_problem(answer: list[dict]) -> str:
    """A dpo/rm/kto answer: assistant turns (and tool results), ending on an assistant turn with content."""
    if not answer:
        return EMPTY_ANSWER
    if answer[0]["role"] != "assistant" or answer[-1]["role"] != "assistant":
        return ANSWER_NOT_ASSISTANT
    if any(message["role"] not in ("assistant", "tool") for message in answer):
        return ANSWER_NOT_ASSISTANT
    return EMPTY_ANSWER if _is_empty_answer(answer[-1]) else ""


def _calls(message: dict) -> bool:
    return bool(message.get("tool_calls"))


def _has_user(messages: list[dict]) -> bool:
    return any(message["role"] == "user" for message in messages)


def _is_empty_answer(message: dict) -> bool:
    return not message["content"].strip() and not _calls(message)


def _plain(messages: list[dict]) -> list[tuple]:
    """Messages compared by what they say; `tool_calls: None` from Arrow equals no tool_calls."""
    return [
        (m["role"], m["content"], json.dumps(m.get("tool_calls") or [], sort_keys=True)) for m in messages
    ]
