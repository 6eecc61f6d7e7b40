"""Readers from the dataset formats people bring (ShareGPT, Alpaca, HH-RLHF, ...) to one row shape per stage.

TRL's trainers take their own column layouts and only a few of them (its `extract_prompt` even splits
an HH-style pair character by character, so chosen and rejected answers that start with the same words
lose those words to the prompt). LLaMA-Factory reads many more layouts but inside its own pipeline. The
functions here fill that gap as pure batched functions for `Dataset.map(batched=True, num_proc=...)`:
`detect_format` (or `check_format` for a declared `format:`) picks a reader, and `convert_batch` turns
every input row into exactly one canonical row plus an `invalid` reason ("" when fit to train on), so
that rows are counted and dropped by the caller, never lost here.

Canonical rows (a message is {"role", "content": str} and, only when it calls tools,
"tool_calls": [{"type": "function", "function": {"name": str, "arguments": JSON str}}]):
    sft:      messages, tools            dpo, rm:  prompt, chosen, rejected, tools
    kto:      prompt, completion, label, tools
    cpt:      text                       classify: text, label (str or int, as the file has it)
    prompt:   prompt, answer, tools      (online RL: the prompt ends on a user turn; `answer` is the
              reference a verifiable reward compares with, a string or None)
An sft mixture with a `format: text` source (replay, data/replay.py) has all three of messages, tools
and text: a conversation's `text` is None, a replay row's `messages` is [] (curation.row_stage tells them apart).
`tools` is a JSON string of the tool schemas, or None. Content is kept verbatim: nothing is stripped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from alignment.data.validation import (
    ANSWER_NOT_ASSISTANT,
    ANSWER_NOT_TEXT,
    MALFORMED,
    NO_PREFERENCE,
    NO_PREFERENCE_VOTES,
    NON_TEXT,
    UNKNOWN_ROLE,
    validate_row,
)
from alignment.errors import RecipeError, closest

if TYPE_CHECKING:
    import datasets

STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("messages", "tools"),
    "dpo": ("prompt", "chosen", "rejected", "tools"),
    "rm": ("prompt", "chosen", "rejected", "tools"),
    "kto": ("prompt", "completion", "label", "tools"),
    "cpt": ("text",),
    "classify": ("text", "label"),
    "prompt": ("prompt", "answer", "tools"),
}

# One line per format, for `--help`, errors and the README.
FORMATS: dict[str, str] = {
    "messages": "`messages`: OpenAI-style {role, content} turns (text parts, tool_calls, tool turns)",
    "sharegpt": "`conversations`: ShareGPT {from, value} turns (FastChat; LLaMA-Factory function_call)",
    "alpaca": "`instruction`, `input`, `output` (dpo/rm: `chosen`, `rejected`), `system`, `history`",
    "prompt_completion": "`prompt`, `completion`: each a string or a message list (kto: and `label`)",
    "prompt_only": "`prompt` (a string or a message list) and an optional `answer` (or `solution`)",
    "preference": "`prompt`, `chosen`, `rejected`: strings, turns or whole conversations (UltraFeedback; "
    "`alignment arena` votes: ties are left out)",
    "hh": "`chosen`, `rejected`: Anthropic HH-RLHF text with Human: and Assistant: markers",
    "kto": "`messages` or `conversations` and a bool `label` (or `kto_tag`); the last turn is the answer",
    "text": "`text`: plain text for continued pretraining",
    "classification": "`text` and `label`",
}
# Every format also reads an optional `tools` column; those with conversations an optional `system` column.

# Stages whose mixture may hold plain-text sources (`format: text`) as replay: rows trained with a
# language-modelling loss next to the stage's own rows, against forgetting (data/replay.py).
REPLAY_STAGES = ("sft",)

STAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("messages", "sharegpt", "alpaca", "prompt_completion"),
    "dpo": ("preference", "hh", "alpaca"),
    "rm": ("preference", "hh", "alpaca"),
    "kto": ("kto", "prompt_completion", "alpaca"),
    "cpt": ("text",),
    "classify": ("classification",),
    "prompt": ("prompt_only", "prompt_completion", "preference", "hh", "alpaca", "messages", "sharegpt"),
}

# The columns a format needs, per stage: each entry is a group of alternatives, one of which must be there.
_LABEL = ("label", "kto_tag")
_CONVERSATION = ("messages", "conversations")
REQUIRED_COLUMNS: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    **{("messages", "sft"): (_CONVERSATION,), ("sharegpt", "sft"): (_CONVERSATION,)},
    ("alpaca", "sft"): (("instruction",), ("output",)),
    **{("alpaca", s): (("instruction",), ("chosen",), ("rejected",)) for s in ("dpo", "rm")},
    ("alpaca", "kto"): (("instruction",), ("output",), _LABEL),
    ("prompt_completion", "sft"): (("prompt",), ("completion",)),
    ("prompt_completion", "kto"): (("prompt",), ("completion",), _LABEL),
    **{(f, s): (("chosen",), ("rejected",)) for f in ("preference", "hh") for s in ("dpo", "rm")},
    ("kto", "kto"): (_CONVERSATION, _LABEL),
    ("text", "cpt"): (("text",),),
    ("classification", "classify"): (("text",), ("label",)),
    # prompt: a reference answer is optional, so only what holds the prompt (and a pair's two sides) is needed
    ("prompt_only", "prompt"): (("prompt",),),
    ("prompt_completion", "prompt"): (("prompt",), ("completion",)),
    **{(f, "prompt"): (("chosen",), ("rejected",)) for f in ("preference", "hh")},
    ("alpaca", "prompt"): (("instruction",),),
    **{(f, "prompt"): (_CONVERSATION,) for f in ("messages", "sharegpt")},
}

# Every column a format's reader looks at (required or optional); the rest of a file's columns are not
# trained on, and the data report lists them so that nothing is dropped without a word.
_CHAT_EXTRAS = {"system", "tools"}
_ANSWER = ("answer", "solution")  # prompt_only's reference answer; `solution` is what TRL's math sets call it
READ_COLUMNS: dict[str, set[str]] = {
    "messages": {*_CONVERSATION, *_CHAT_EXTRAS},
    "sharegpt": {*_CONVERSATION, *_CHAT_EXTRAS},
    "kto": {*_CONVERSATION, *_CHAT_EXTRAS, *_LABEL},
    "alpaca": {"instruction", "input", "output", "history", "chosen", "rejected", *_CHAT_EXTRAS, *_LABEL},
    "prompt_completion": {"prompt", "completion", *_CHAT_EXTRAS, *_LABEL},
    "prompt_only": {"prompt", *_ANSWER, *_CHAT_EXTRAS},
    "preference": {"prompt", *_CONVERSATION, "chosen", "rejected", "vote", *_CHAT_EXTRAS},
    "hh": {"prompt", "chosen", "rejected", "tools"},
    "text": {"text"},
    "classification": {"text", "label"},
}

# What each stage's rows look like, for the hint when a file belongs to another stage.
_STAGE_LOOKS = {
    "sft": "conversations",
    "dpo": "preference pairs",
    "kto": "labelled completions",
    "cpt": "plain text",
    "classify": "labelled text",
    "prompt": "prompts",  # last: prompt reads most formats, so any earlier stage that fits is the better hint
}

# Role names seen in the wild, lower-cased. "call" marks a ShareGPT function_call turn (an assistant's call).
ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",  # OpenAI's legacy role for a function's result
    "ipython": "tool",  # Llama 3.1's tool-result role
    "function_call": "call",
}

_HH_MARKER = re.compile(r"(?:\n\n|^)(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class RoleTags:
    """Which keys and role names a conversation uses (LLaMA-Factory's names); None means the format's default.

    Defaults: role/content keys are `role`/`content`, else `from`/`value` (read from the first turn); role
    names are the common aliases (human, gpt, chatgpt, model, observation, function_call, ...). A tag set
    here maps its value to its role in addition to those aliases.
    """

    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    system_tag: str | None = None
    function_tag: str | None = None
    observation_tag: str | None = None

    @classmethod
    def from_dict(cls, raw: Any, origin: str) -> RoleTags:
        """Build from a recipe's `tags:` mapping, naming the key at fault."""
        if raw is None:
            return cls()
        valid = [f.name for f in fields(cls)]
        if not isinstance(raw, dict):
            raise RecipeError(f"`{origin}.tags` must be a mapping with keys among {', '.join(valid)}")
        for key, value in raw.items():
            if key not in valid:
                hint = closest(str(key), valid)
                raise RecipeError(f"`{origin}.tags.{key}` is not a tag{hint}; valid keys: {', '.join(valid)}")
            if value is not None and not isinstance(value, str):
                raise RecipeError(f"`{origin}.tags.{key}` is {value!r}; it must be a string")
        return cls(**raw)

    def roles(self) -> dict[str, str]:
        """The tags set here, each mapped to its role (checked before the aliases)."""
        pairs = (
            (self.user_tag, "user"),
            (self.assistant_tag, "assistant"),
            (self.system_tag, "system"),
            (self.function_tag, "call"),
            (self.observation_tag, "tool"),
        )
        return {tag: role for tag, role in pairs if tag is not None}


class _Invalid(Exception):
    """A row that cannot be converted; `reason` is one of validation.INVALID_REASONS."""

    def __init__(self, reason: str = MALFORMED):
        super().__init__(reason)
        self.reason = reason


# --- Detection and checks of a declared format ---------------------------------------------------------


def detect_format(columns: Sequence[str], example: dict, stage: str, origin: str) -> str:
    """The format of a dataset with these `columns` (and first row) for `stage`; else a RecipeError."""
    _check_stage(stage)
    example = example or {}
    fmt = _detect(set(columns), example, stage)
    if fmt:
        return fmt
    hint = ""
    for other in _STAGE_LOOKS:
        if (
            other != stage
            and not (stage == "rm" and other == "dpo")
            and _detect(set(columns), example, other)
        ):
            hint = f"; these look like {_STAGE_LOOKS[other]} (stage {other})"
            break
    replay = ""
    if stage in REPLAY_STAGES and _detect(set(columns), example, "cpt"):
        replay = " (or to `text` to mix plain text in as replay, trained with a language-modelling loss)"
    raise RecipeError(
        f"{origin}: cannot tell the format of columns [{', '.join(columns)}] for stage {stage}{hint}; "
        f"set `format:` to one of {', '.join(STAGE_FORMATS[stage])}{replay}"
    )


def _detect(columns: set[str], example: dict, stage: str) -> str:
    """The format these columns are in for `stage`, or "" (files of another stage are not guessed at)."""
    pairs = {"chosen", "rejected"} <= columns
    labelled = bool(columns & set(_LABEL))
    conversation = next((c for c in ("messages", "conversations") if c in columns), None)
    if stage == "sft" and not pairs and not labelled:
        if conversation:
            return _conversation_format(example.get(conversation), conversation)
        if {"instruction", "output"} <= columns:
            return "alpaca"
        if {"prompt", "completion"} <= columns:
            return "prompt_completion"
    if stage in ("dpo", "rm") and pairs:
        return _pair_format(columns, example)
    if stage == "kto" and labelled and not pairs:
        if conversation:
            return "kto"
        if {"prompt", "completion"} <= columns:
            return "prompt_completion"
        if {"instruction", "output"} <= columns:
            return "alpaca"
    if stage == "cpt" and "text" in columns and "label" not in columns:
        return "text"
    if stage == "classify" and {"text", "label"} <= columns:
        return "classification"
    if stage == "prompt" and not labelled:  # a kto file's answer may be the undesirable one: no reference
        return _prompt_format(columns, example, conversation)
    return ""


def _pair_format(columns: set[str], example: dict) -> str:
    if _looks_like_hh(example.get("chosen")) or _looks_like_hh(example.get("prompt")):
        return "hh"
    return "alpaca" if "instruction" in columns else "preference"


def _prompt_format(columns: set[str], example: dict, conversation: str | None) -> str:
    """Stage prompt: pairs (the chosen answer is the reference), prompt + completion, a conversation, a prompt."""
    if {"chosen", "rejected"} <= columns:
        return _pair_format(columns, example)
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if conversation:
        return _conversation_format(example.get(conversation), conversation)
    if "instruction" in columns:
        return "alpaca"
    return "prompt_only" if "prompt" in columns else ""


def _conversation_format(turns: Any, column: str) -> str:
    """`messages` when the turns use role/content, `sharegpt` when from/value; else by the column's name."""
    first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
    if first.get("from") is not None:
        return "sharegpt"
    if first.get("role") is not None:
        return "messages"
    return "sharegpt" if column == "conversations" else "messages"


def _looks_like_hh(value: Any) -> bool:
    return isinstance(value, str) and ("\n\nHuman:" in value or value.startswith("Human:"))


def check_format(fmt: str, columns: Sequence[str], stage: str, origin: str) -> None:
    """Refuse a declared `format:` that is unknown, not read by `stage`, or missing a column it needs."""
    _check_stage(stage)
    if fmt not in FORMATS:
        raise RecipeError(
            f"{origin}: unknown format `{fmt}`{closest(fmt, list(FORMATS))}; "
            f"stage {stage} reads {', '.join(STAGE_FORMATS[stage])}"
        )
    if fmt not in STAGE_FORMATS[stage]:
        readers = [s for s, accepted in STAGE_FORMATS.items() if fmt in accepted]
        if fmt == "text":  # the mixture reads it as cpt rows there (mixture.source_stage)
            readers += [f"{s} as replay" for s in REPLAY_STAGES]
        raise RecipeError(
            f"{origin}: format `{fmt}` is not read by stage {stage} (it is for {', '.join(readers)}); "
            f"use one of {', '.join(STAGE_FORMATS[stage])}"
        )
    for group in REQUIRED_COLUMNS[(fmt, stage)]:
        if not set(group) & set(columns):
            wanted = " or ".join(f"`{c}`" for c in group)
            raise RecipeError(
                f"{origin}: format `{fmt}` needs column {wanted}; the columns are [{', '.join(columns)}]"
            )


def _check_stage(stage: str) -> None:
    if stage not in STAGE_COLUMNS:
        raise RecipeError(f"unknown stage `{stage}`{closest(stage, list(STAGE_COLUMNS))}")


# --- Conversion ----------------------------------------------------------------------------------------


def convert_batch(
    batch: dict[str, list], *, fmt: str, stage: str, tags: RoleTags | None = None
) -> dict[str, list]:
    """Canonical columns of `stage` plus `invalid` ("" or a reason), one output row per input row.

    A row that cannot be converted gets its reason and empty placeholders ([], "", None) of the right
    types, so that Arrow sees uniform columns; the caller counts and drops the invalid rows.
    """
    check_format(fmt, list(batch), stage, "convert_batch")  # a missing column would make every row malformed
    reader = _READERS[fmt]
    context = _Context(tags or RoleTags())
    out: dict[str, list] = {column: [] for column in (*STAGE_COLUMNS[stage], "invalid")}
    size = len(next(iter(batch.values()), []))
    for i in range(size):
        row = {column: values[i] for column, values in batch.items()}
        try:
            converted = reader(row, stage, context)
            reason = validate_row(converted, stage)
        except _Invalid as problem:
            converted, reason = _placeholder(stage), problem.reason
        # A safety net for shapes no check above foresaw (a number where a list was expected, ...):
        # one odd row is reported, not a crash an hour into `map`.
        except (TypeError, KeyError, AttributeError, ValueError, IndexError):
            converted, reason = _placeholder(stage), MALFORMED
        for column in STAGE_COLUMNS[stage]:
            out[column].append(converted[column])
        out["invalid"].append(reason)
    return out


def _placeholder(stage: str) -> dict[str, Any]:
    empty: dict[str, Any] = {"messages": [], "prompt": [], "chosen": [], "rejected": [], "completion": []}
    empty.update(tools=None, label=None, text="", answer=None)
    return {column: empty[column] for column in STAGE_COLUMNS[stage]}


class _Context:
    """Per-batch reading state: the role table built once from the tags."""

    def __init__(self, tags: RoleTags):
        self.tags = tags
        self.tag_roles = tags.roles()

    def role(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise _Invalid()
        role = self.tag_roles.get(raw) or ROLE_ALIASES.get(raw.lower())
        if role is None:
            raise _Invalid(UNKNOWN_ROLE)
        return role


def _read_messages(row: dict, stage: str, context: _Context) -> dict:
    """`messages` and `sharegpt`: one conversation column, an optional `system` column and `tools`."""
    messages = _read_turns(row[_conversation_column(row)], context, system=row.get("system"))
    return _shape(stage, messages, row)


def _conversation_column(row: dict) -> str:
    """`messages` if the row has it, else `conversations` (the order `detect_format` looks in)."""
    return "messages" if "messages" in row else "conversations"


def _read_alpaca(row: dict, stage: str, context: _Context) -> dict:
    """Alpaca: earlier turns from `history`, then instruction + "\\n" + input as LLaMA-Factory joins them."""
    prompt = _system(row.get("system"))
    history = row.get("history") or []
    if not isinstance(history, list):
        raise _Invalid()
    for pair in history:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _Invalid()
        prompt += [_message("user", pair[0]), _message("assistant", pair[1])]
    instruction, extra = row.get("instruction"), row.get("input")
    if not isinstance(instruction, str) or not isinstance(extra, str | None):
        raise _Invalid()
    prompt.append(_message("user", "\n".join(part for part in (instruction, extra) if part)))
    if stage == "prompt":  # the reference: a preference row's chosen answer, else the output (if any)
        chosen = row.get("chosen")
        return _prompt_row(prompt, _reference(row.get("output") if chosen is None else chosen, context), row)
    if stage in ("dpo", "rm"):
        return _pair(prompt, _answer(row["chosen"], context), _answer(row["rejected"], context), row, stage)
    return _shape(stage, prompt + [_message("assistant", row.get("output"))], row)


def _read_prompt_completion(row: dict, stage: str, context: _Context) -> dict:
    """prompt + completion, each a string (one user / one assistant turn) or a message list."""
    prompt = _prompt(row["prompt"], context, row.get("system"))
    if stage == "prompt":
        return _prompt_row(prompt, _reference(row["completion"], context), row)
    completion = _answer(row["completion"], context)
    if stage == "kto":
        return _kto(prompt, completion, row)
    return {"messages": prompt + completion, "tools": _tools(row.get("tools"))}


def _read_prompt_only(row: dict, stage: str, context: _Context) -> dict:
    """A prompt to generate from, and the reference answer when the file has one (`answer` or `solution`)."""
    prompt = _prompt(row["prompt"], context, row.get("system"))
    answer = next((row[c] for c in _ANSWER if row.get(c) is not None), None)
    return _prompt_row(prompt, _reference(answer, context), row)


def _read_preference(row: dict, stage: str, context: _Context) -> dict:
    """prompt/chosen/rejected in any of the shapes people publish them in (see FORMATS["preference"])."""
    if row.get("vote") in NO_PREFERENCE_VOTES:  # `alignment arena`'s votes: no side was preferred
        raise _Invalid(NO_PREFERENCE)
    chosen, rejected = _answer(row["chosen"], context), _answer(row["rejected"], context)
    source = next((c for c in ("prompt", "conversations", "messages") if row.get(c) is not None), None)
    if source is None:
        # No prompt column: the prompt is the turns both conversations share, compared message by message.
        if not isinstance(row["chosen"], list) or not isinstance(row["rejected"], list):
            raise _Invalid()
        shared = _shared_prefix(chosen, rejected)
        return _pair(chosen[:shared], chosen[shared:], rejected[shared:], row, stage)
    prompt = _prompt(row[source], context, row.get("system"))
    # UltraFeedback-binarized repeats the prompt at the start of chosen and rejected.
    if chosen[: len(prompt)] == prompt:
        chosen = chosen[len(prompt) :]
    if rejected[: len(prompt)] == prompt:
        rejected = rejected[len(prompt) :]
    return _pair(prompt, chosen, rejected, row, stage)


def _shared_prefix(chosen: list[dict], rejected: list[dict]) -> int:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) == len(rejected) and shared:
        shared -= 1  # identical conversations: keep the last turn as the answer, to be reported as equal
    return shared


def _read_hh(row: dict, stage: str, context: _Context) -> dict:
    """HH-RLHF: the prompt is the text up to the last Assistant marker, the answer what follows it."""
    before = row.get("prompt") or ""  # some copies keep the shared prompt in its own column
    if not all(isinstance(v, str) for v in (before, row["chosen"], row["rejected"])):
        raise _Invalid()
    prompt, chosen = _split_hh(before + row["chosen"])
    rejected_prompt, rejected = _split_hh(before + row["rejected"])
    if rejected_prompt != prompt:
        raise _Invalid()
    return _pair(prompt, [_message("assistant", chosen)], [_message("assistant", rejected)], row, stage)


def _split_hh(text: str) -> tuple[list[dict], str]:
    """(prompt turns, answer) of one HH-RLHF text; one space after a marker's colon is part of it."""
    markers = list(_HH_MARKER.finditer(text))
    if not markers or markers[0].start() != 0 or markers[-1].group(1) != "Assistant":
        raise _Invalid()
    ends = [m.start() for m in markers[1:]] + [len(text)]
    turns = [
        _message(_HH_ROLES[m.group(1)], text[m.end() : end]) for m, end in zip(markers, ends, strict=True)
    ]
    return turns[:-1], turns[-1]["content"]


def _read_kto(row: dict, stage: str, context: _Context) -> dict:
    """A conversation and a label: the last message is the completion, the turns before it the prompt."""
    messages = _read_turns(row[_conversation_column(row)], context, system=row.get("system"))
    return _kto(messages[:-1], messages[-1:], row)


def _class_label(label: Any) -> Any:
    """A csv/tsv label as it was written: pandas reads a column of integers with one blank field as floats
    (1.0, 0.0, NaN), which would make every row of that file malformed; a whole float is its integer and
    NaN is a missing label. A fractional float stays, and is refused as malformed."""
    if isinstance(label, float):
        if label != label:  # NaN
            return None
        if label.is_integer():
            return int(label)
    return label


def _read_text(row: dict, stage: str, context: _Context) -> dict:
    if stage == "classify":
        label = _class_label(row.get("label"))
        if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)):
            raise _Invalid()
        return {"text": _text(row["text"]), "label": label}
    return {"text": _text(row["text"])}


_READERS: dict[str, Callable[[dict, str, _Context], dict]] = {
    "messages": _read_messages,
    "sharegpt": _read_messages,
    "alpaca": _read_alpaca,
    "prompt_completion": _read_prompt_completion,
    "prompt_only": _read_prompt_only,
    "preference": _read_preference,
    "hh": _read_hh,
    "kto": _read_kto,
    "text": _read_text,
    "classification": _read_text,
}


# --- Rows of each stage --------------------------------------------------------------------------------


def _shape(stage: str, messages: list[dict], row: dict) -> dict:
    """A whole conversation as the stage's row: sft keeps it, kto splits off the last message, prompt
    splits off a final assistant turn as the reference answer (a conversation ending on a user turn is
    all prompt, with no reference)."""
    if stage == "kto":
        return _kto(messages[:-1], messages[-1:], row)
    if stage == "prompt":
        if messages and messages[-1]["role"] == "assistant":
            return _prompt_row(messages[:-1], _reference(messages[-1], context=None), row)
        return _prompt_row(messages, None, row)
    return {"messages": messages, "tools": _tools(row.get("tools"))}


def _pair(prompt: list[dict], chosen: list[dict], rejected: list[dict], row: dict, stage: str) -> dict:
    """A preference row; for stage prompt, the prompt and the chosen answer as its reference."""
    if stage == "prompt":
        return _prompt_row(prompt, _reference(chosen, context=None), row)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "tools": _tools(row.get("tools"))}


def _prompt_row(prompt: list[dict], answer: str | None, row: dict) -> dict:
    return {"prompt": prompt, "answer": answer, "tools": _tools(row.get("tools"))}


def _kto(prompt: list[dict], completion: list[dict], row: dict) -> dict:
    label = row["label"] if "label" in row else row.get("kto_tag")
    # Anything but a Python bool becomes None, which validate_row reports as "label not boolean".
    label = label if isinstance(label, bool) else None
    return {"prompt": prompt, "completion": completion, "label": label, "tools": _tools(row.get("tools"))}


# --- Messages ------------------------------------------------------------------------------------------


def _read_turns(turns: Any, context: _Context, system: Any = None) -> list[dict]:
    """Canonical messages from a list of turns keyed role/content or from/value (or the tags' keys).

    A function_call turn becomes tool_calls on the assistant message before it (or on a new assistant
    message with content ""), so a ShareGPT "gpt, function_call, observation, gpt" run reads as the tool loop.
    """
    if not isinstance(turns, list):
        raise _Invalid()
    messages = _system(system)
    if not turns:
        return messages
    first = turns[0] if isinstance(turns[0], dict) else {}
    role_key = context.tags.role_tag or ("role" if first.get("role") is not None else "from")
    content_key = context.tags.content_tag or {"role": "content", "from": "value"}.get(role_key)
    if content_key is None:  # a custom role_tag: the content key is whichever of the usual two is there
        content_key = "value" if "value" in first else "content"
    for turn in turns:
        if not isinstance(turn, dict):
            raise _Invalid()
        role = context.role(turn.get(role_key))
        if role == "call":
            calls = _function_call(turn.get(content_key))
            if messages and messages[-1]["role"] == "assistant":
                previous = messages[-1]
                messages[-1] = {**previous, "tool_calls": previous.get("tool_calls", []) + calls}
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        calls = _tool_calls(turn.get("tool_calls")) if role == "assistant" else []
        content = turn.get(content_key)
        message = {"role": role, "content": "" if content is None and calls else _text(content)}
        if calls:
            message["tool_calls"] = calls
        messages.append(message)
    if len(messages) > 1 and messages[0]["role"] == "system" and messages[0] == messages[1]:
        del messages[0]  # the `system` column repeats the conversation's own system turn
    return messages


def _message(role: str, content: Any) -> dict:
    return {"role": role, "content": _text(content)}


def _system(system: Any) -> list[dict]:
    if system is None or system == "":
        return []
    return [_message("system", system)]


def _prompt(value: Any, context: _Context, system: Any) -> list[dict]:
    """A prompt: a string is one user turn (after the `system` column, if any); a list is read as turns."""
    if isinstance(value, str):
        return _system(system) + [_message("user", value)]
    return _read_turns(value, context, system)


def _answer(value: Any, context: _Context) -> list[dict]:
    """An answer: a string is one assistant turn, a dict one turn, a list several."""
    if isinstance(value, str):
        return [_message("assistant", value)]
    if isinstance(value, dict):
        return _read_turns([value], context)
    return _read_turns(value, context)


def _reference(value: Any, context: _Context | None) -> str | None:
    """A reference answer as text: a string as it is, an integer as its digits; a message (or a list of
    them, read with `context` unless already canonical) only when it is one plain assistant turn."""
    if value is None or isinstance(value, str):
        return value
    # An integer has one text. It must be taken: math sets store answers as numbers, and `datasets` reads a
    # JSON column of mixed types as `Json`, which gives back a string that is valid JSON ("7") as 7.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, dict | list):
        raise _Invalid(ANSWER_NOT_TEXT)  # a float ("7.50" or "7.5"?) or a bool: refused, not guessed at
    turns = value if context is None else _answer(value, context)
    turns = [turns] if isinstance(turns, dict) else turns
    if len(turns) != 1 or turns[0].get("tool_calls"):
        raise _Invalid(ANSWER_NOT_TEXT)
    if turns[0]["role"] != "assistant":
        raise _Invalid(ANSWER_NOT_ASSISTANT)
    return turns[0]["content"]


def _text(content: Any) -> str:
    """Content as a string, verbatim; typed parts are joined with "" and must all be text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _Invalid()  # None where text is needed, a number, ...
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise _Invalid()
        if part.get("type") != "text":
            raise _Invalid(NON_TEXT)
        if not isinstance(part.get("text"), str):
            raise _Invalid()
        texts.append(part["text"])
    return "".join(texts)


def _function_call(value: Any) -> list[dict]:
    """A ShareGPT function_call value: a JSON object {"name", "arguments"} or a JSON list of them."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Invalid() from None
    calls = _tool_calls(value if isinstance(value, list) else [value])
    if not calls:
        raise _Invalid()
    return calls


def _tool_calls(raw: Any) -> list[dict]:
    """OpenAI-shaped tool calls from OpenAI's or LLaMA-Factory's shape; arguments become a JSON string."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _Invalid()
    calls = []
    for call in raw:
        if not isinstance(call, dict):
            raise _Invalid()
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not name:
            raise _Invalid()
        if arguments is None:
            arguments = "{}"
        elif isinstance(arguments, dict):
            arguments = json.dumps(_drop_nulls(arguments), ensure_ascii=False)
        elif not isinstance(arguments, str):
            raise _Invalid()
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    return calls


def _tools(raw: Any) -> str | None:
    """The tool schemas as a JSON string (a string kept verbatim, a list dumped); none ("", "[]") is None."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise _Invalid() from None
        if not isinstance(parsed, list | dict):
            raise _Invalid()
        return raw if parsed else None
    if isinstance(raw, list | dict):
        return json.dumps(_drop_nulls(raw), ensure_ascii=False) if raw else None
    raise _Invalid()


def _drop_nulls(value: Any) -> Any:
    """Drop null-valued keys: Arrow gives a stored dict every key any row had, the absent ones as null."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# --- Arrow features ------------------------------------------------------------------------------------


def canonical_features(
    stage: str, tool_calls: bool, *, invalid: bool = True, label: Any = None, json_messages: bool = False
) -> datasets.Features:
    """The Arrow features of a stage's canonical columns (and `invalid`), for `map(features=...)`.

    Without them `map` infers each batch's types and fails on the first batch whose messages differ
    (one with tool_calls after one without). `tool_calls`: give every message the tool_calls field;
    messages that call nothing then read back `tool_calls: None`, which some chat templates mistake
    for a call (test `'tool_calls' in message`): strip it (TRL's `remove_none_values`) before templating.
    `json_messages`: store each message as JSON (datasets' `Json`) instead, so it reads back with
    exactly its own keys and no schema needs unifying. classify's `label` is the caller's to choose
    (`Value("string")`, `Value("int64")` or a `ClassLabel`): pass it, else the column is left out.
    """
    from datasets import Features, Json, List, Value

    _check_stage(stage)
    message: Any = {"role": Value("string"), "content": Value("string")}
    if json_messages:
        message = Json()
    elif tool_calls:
        function = {"name": Value("string"), "arguments": Value("string")}
        message["tool_calls"] = List({"type": Value("string"), "function": function})
    types: dict[str, Any] = {"messages": List(message), "tools": Value("string"), "text": Value("string")}
    types.update(prompt=List(message), chosen=List(message), rejected=List(message), completion=List(message))
    types["label"] = Value("bool") if stage == "kto" else label
    types["answer"] = Value("string")
    columns = {c: types[c] for c in STAGE_COLUMNS[stage] if types[c] is not None}
    if invalid:
        columns["invalid"] = Value("string")
    return Features(columns)
