"""Reward functions for online RL (grpo, rloo): built-ins by name, a user's own by import path, a reward model.

TRL calls each reward as `f(prompts=..., completions=..., completion_ids=..., **columns)` where
`columns` are the dataset's other columns (here `answer`, the reference the data layer keeps for the
`prompt` row shape) and expects one float per completion (None: this reward does not apply). TRL's
own scripts resolve names from a small registry of math rewards; ours are for verifiable answers and
are resolved while the recipe is parsed, so a misspelt name or import path is refused before any
model loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from alignment.errors import RecipeError, closest

RewardFunc = Callable[..., list[float | None]]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or (conversational) the content of its assistant message(s)."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def exact_answer(
    completions: list[Any], answer: list[str | None] | None = None, **_: Any
) -> list[float | None]:
    """1.0 when the completion, stripped, equals the row's reference `answer`; else 0.0 (None without one)."""
    if answer is None:
        raise RecipeError("reward exact_answer needs an `answer` column in the data (the reference answer)")
    return [
        None if reference is None else float(completion_text(c).strip() == reference.strip())
        for c, reference in zip(completions, answer, strict=True)
    ]


def tiny_format(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the reply has the shape the tiny task's skill asks for (digits for count, ...), right or not."""
    from alignment.tiny.task import answer_has_format

    return [
        float(answer_has_format(completion_text(prompt[-1:] if isinstance(prompt, list) else prompt),
                                completion_text(completion).strip()))
        for prompt, completion in zip(prompts, completions, strict=True)
    ]  # fmt: skip


BUILTIN_REWARDS: dict[str, RewardFunc] = {"exact_answer": exact_answer, "tiny_format": tiny_format}


def resolve_reward(name: str, origin: str = "reward_funcs") -> RewardFunc:
    """A built-in reward by name, or `package.module:function` (also `package.module.function`) imported."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if ":" not in name and "." not in name:
        raise RecipeError(
            f"`{origin}`: unknown reward {name!r}{closest(name, list(BUILTIN_REWARDS))}; built-ins: "
            f"{', '.join(BUILTIN_REWARDS)}, or an import path package.module:function"
        )
    module_name, _, attribute = name.rpartition(":") if ":" in name else name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RecipeError(f"`{origin}`: cannot import {module_name!r} for reward {name!r} ({err})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise RecipeError(f"`{origin}`: {module_name!r} has no function {attribute!r} (reward {name!r})")
    return function


def resolve_rewards(names: list[str] | None, origin: str = "reward_funcs") -> list[RewardFunc]:
    return [resolve_reward(name, origin) for name in names or []]


def load_reward_model(path: str, allow_pickle_weights: bool = False) -> tuple[Any, Any]:
    """A reward model and its tokenizer (TRL applies its chat template to prompt + completion to score it).

    Loaded here rather than by TRL from the path so that only safetensors are read unless the recipe
    allows pickles, as for every other model.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, use_safetensors=None if allow_pickle_weights else True
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head scores the last non-pad token
    model.eval()
    return model, tokenizer
