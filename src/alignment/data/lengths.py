"""Token lengths of canonical rows, counted as TRL 1.16 tokenises them, and what `max_length` does to each.

TRL truncates or drops over-long rows silently; this module says beforehand how many rows each
`max_length` keeps whole, truncates (the answer loses its end-of-turn, so the model never learns to
stop) or loses outright. The counts follow TRL's own preparation (`trl/trainer/*_trainer.py`,
`_prepare_dataset`):

- sft (messages): the whole conversation through the chat template, cut to `max_length` (keep_start).
  With `assistant_only_loss` a row left with no assistant token (its prompt alone fills the window)
  is dropped; without it, it trains on a prompt with no answer. Either way it is "too_long".
- dpo, kto: prompt = the prompt with the generation prompt; sequences = prompt + each answer. Rows
  whose prompt reaches `max_length` are dropped, the rest cut to `max_length` by the collator.
- rm: RewardTrainer drops every row whose prompt + chosen or prompt + rejected exceeds `max_length`.
- cpt, and the replay rows of an sft mixture (data/replay.py tokenises those the same way): the
  text plus EOS (TRL appends it) with the tokenizer's special tokens; packing with
  `bfd_split` or `wrapped` loses nothing, `bfd` (TRL's default) cuts each text to `max_length`.
- classify: the text with the tokenizer's special tokens, cut to `max_length`.
- prompt (GRPO, RLOO): the prompt with the generation prompt, which is all the data holds (the
  completion is generated, up to `max_completion_length`). trl 1.16 dropped `max_prompt_length`:
  GRPOConfig and RLOOConfig have no `max_length` either, and `_tokenize_prompts` never truncates a
  prompt, so nothing is cut or dropped and every row is "whole". Should a config carry `max_length`
  (a later TRL, a subclass), a prompt longer than it leaves no room to generate: it is "too_long".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignment.data.curation import check_stage, require_column, row_stage, rows_of
from alignment.errors import RecipeError

WHOLE, TRUNCATED, TOO_LONG = "whole", "truncated", "too_long"
# Packing strategies that keep every token (they split an over-long sequence instead of cutting it).
LOSSLESS_PACKING = ("bfd_split", "wrapped")
ANSWER_COLUMNS = {"dpo": ("chosen", "rejected"), "rm": ("chosen", "rejected"), "kto": ("completion",)}


def token_lengths(batch: dict[str, list], *, stage: str, tokenizer: Any) -> dict[str, list]:
    """Batched map fn: `_prompt_tokens` (tokens before the first trained one) and `_total_tokens` per row.

    For dpo/rm the total is the longer of prompt + chosen and prompt + rejected; cpt and classify
    have no prompt (0); for prompt both are the prompt's length (nothing of the row is trained on). Conversations are rendered with the chat template (and the row's `tools`),
    then tokenised in one call without special tokens, exactly as `apply_chat_template` does.
    """
    check_stage(stage)
    rows = rows_of(batch)
    kinds = [row_stage(row, stage) for row in rows]
    if any(kind != stage for kind in kinds):  # replay rows of an sft mixture measure as cpt rows
        return _lengths_by_kind(rows, kinds, tokenizer)
    if stage in ("cpt", "classify"):
        texts = [require_column(row, "text", stage) for row in rows]
        eos = tokenizer.eos_token
        if stage == "cpt" and eos:  # SFTTrainer appends EOS to plain text that lacks it
            texts = [text if text.endswith(eos) else text + eos for text in texts]
        totals = [len(ids) for ids in tokenizer(texts)["input_ids"]] if texts else []
        return {"_prompt_tokens": [0] * len(rows), "_total_tokens": totals}

    # Each row renders one prompt (with the generation prompt) and one or two full sequences.
    rendered: list[str] = []
    shapes: list[int] = []
    for row in rows:
        tools = parse_tools(row.get("tools"))
        prompt, fulls = conversations(row, stage)
        rendered.append(render(tokenizer, prompt, tools, generation_prompt=True))
        rendered += [render(tokenizer, full, tools, generation_prompt=False) for full in fulls]
        shapes.append(1 + len(fulls))
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"] if rendered else []

    prompts, totals, start = [], [], 0
    for width in shapes:
        prompt_ids, full_ids = ids[start], ids[start + 1 : start + width]
        start += width
        if not full_ids:  # stage prompt: the prompt is the whole sequence the data holds
            prompts.append(len(prompt_ids))
            totals.append(len(prompt_ids))
            continue
        # TRL starts the answer where prompt and full sequence diverge (`common_prefix_length`).
        prompts.append(min(common_prefix_length(prompt_ids, full) for full in full_ids))
        totals.append(max(len(full) for full in full_ids))
    return {"_prompt_tokens": prompts, "_total_tokens": totals}


def _lengths_by_kind(rows: list[dict], kinds: list[str], tokenizer: Any) -> dict[str, list]:
    """`token_lengths` of rows of several shapes, each measured as its own stage, in the rows' order."""
    out: dict[str, list] = {"_prompt_tokens": [0] * len(rows), "_total_tokens": [0] * len(rows)}
    for kind in dict.fromkeys(kinds):
        picked = [i for i, k in enumerate(kinds) if k == kind]
        batch = {column: [rows[i][column] for i in picked] for column in rows[0]}
        for column, values in token_lengths(batch, stage=kind, tokenizer=tokenizer).items():
            for i, value in zip(picked, values, strict=True):
                out[column][i] = value
    return out


def conversations(row: dict, stage: str) -> tuple[list[dict], list[list[dict]]]:
    """The prompt messages and the full conversation(s) TRL tokenises for one canonical row."""
    if stage == "prompt":  # online RL: no answer is tokenised with the prompt (the policy generates one)
        return require_column(row, "prompt", stage), []
    if stage == "sft":
        messages = require_column(row, "messages", stage)
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
        return messages[:first], [messages]
    prompt = require_column(row, "prompt", stage)
    return prompt, [prompt + require_column(row, column, stage) for column in ANSWER_COLUMNS[stage]]


def parse_tools(tools: Any) -> list | None:
    """`tools` as TRL passes it to the chat template: `json.loads` of the row's JSON string."""
    if not isinstance(tools, str):
        return tools
    try:
        return json.loads(tools)
    except json.JSONDecodeError as e:
        raise RecipeError(
            f"lengths: a row's `tools` is not valid JSON ({e.msg}); store the tool schemas as JSON"
        ) from e


def render(tokenizer: Any, messages: list[dict], tools: list | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """Leading tokens the two share (TRL's `common_prefix_length`, with a fast path for a true prefix)."""
    if list(other[: len(ids)]) == list(ids):
        return len(ids)
    length = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        length += 1
    return length


def classify_lengths(
    prompt_tokens: Sequence[int],
    total_tokens: Sequence[int],
    max_length: int | None,
    stage: str,
    packing: bool = False,
    packing_strategy: str = "bfd",
) -> list[str]:
    """Per row: "whole", "truncated" (its answer loses its end) or "too_long" (TRL trains nothing on it).

    Assumes TRL's default `truncation_mode="keep_start"`. `packing` matters for sft and cpt only:
    `bfd` (TRL's default) still cuts each sequence to `max_length`; `bfd_split` and `wrapped` keep
    every token, so every row is whole.
    """
    check_stage(stage)
    if len(prompt_tokens) != len(total_tokens):
        raise ValueError(f"{len(prompt_tokens)} prompt lengths for {len(total_tokens)} total lengths")
    if max_length is None or (packing and stage in ("sft", "cpt") and packing_strategy in LOSSLESS_PACKING):
        return [WHOLE] * len(total_tokens)
    classes = []
    for prompt, total in zip(prompt_tokens, total_tokens, strict=True):
        if total <= max_length:
            classes.append(WHOLE)
        elif stage == "rm":  # RewardTrainer drops a pair that does not fit; it never truncates
            classes.append(TOO_LONG)
        elif stage not in ("cpt", "classify") and prompt >= max_length:  # prompt: total is the prompt
            classes.append(TOO_LONG)
        else:
            classes.append(TRUNCATED)
    return classes


def length_percentiles(totals: Sequence[int]) -> dict[str, int]:
    """p50, p90, p99 and max of the token lengths (zeros when there are none).

    Each is the smallest row length with at least that share of rows at or under it (numpy's
    `inverted_cdf`), so a `max_length` set to p99 keeps at least 99% of the rows whole.
    """
    import numpy as np

    if len(totals) == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    values = np.asarray(totals)
    p50, p90, p99 = np.percentile(values, [50, 90, 99], method="inverted_cdf")
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(values.max())}


@dataclass
class LengthCounts:
    """What `max_length` does to a split: rows in, rows TRL drops, rows it truncates, rows kept whole."""

    rows: int
    dropped_too_long: int
    truncated: int
    rows_whole: int

    @classmethod
    def from_classes(cls, classes: Sequence[str]) -> LengthCounts:
        return cls(
            rows=len(classes),
            dropped_too_long=sum(c == TOO_LONG for c in classes),
            truncated=sum(c == TRUNCATED for c in classes),
            rows_whole=sum(c == WHOLE for c in classes),
        )
