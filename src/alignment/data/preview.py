"""`alignment data RECIPE --output_dir DIR`: the data a recipe would train on, without training.

Writes the canonical rows of each split (after validation and curation, before tokenisation) to
`DIR/train.jsonl` and `DIR/test.jsonl`, the report to `DIR/data_report.json`, and prints three
examples rendered with the chat template, the trained-on tokens marked, so a user sees exactly what
the model will learn from. TRL has no such dry run of its data pipeline.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

TRAINED_START, TRAINED_END = "[[", "]]"  # around trained-on text when the terminal has no colour
GREEN, RESET = "\033[32m", "\033[0m"


def run_data_command(stage: str, argv: list[str], output_dir: str, examples: int = 3) -> Path:
    """Build, write and show the recipe's data for `stage`; return the folder written."""
    from alignment.data.prepare import prepare_data
    from alignment.recipe import parse_recipe

    recipe = parse_recipe(stage, [*argv, "--output_dir", output_dir])
    tokenizer, why = _tokenizer_or_reason(recipe)
    data, report = prepare_data(recipe, tokenizer, stage=stage, keep_all=True)
    if why:
        report.notes.append(f"length accounting skipped: {why}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in data.items():
        rows.to_json(out / f"{name}.jsonl", lines=True, force_ascii=False)
    report.write(out)  # again: with the note on the tokenizer
    print(report.table())
    if tokenizer is not None:
        colour = sys.stdout.isatty()
        for i in range(min(examples, len(data["train"]))):
            print(f"\n--- example {i + 1} of {len(data['train'])} (train) ---")
            print(render_trained(data["train"][i], stage, tokenizer, recipe, colour))
    print(f"\nrows written to {out}/train.jsonl" + (" and test.jsonl" if "test" in data else ""), end="")
    print(f"; report in {out}/data_report.json")
    return out


def _tokenizer_or_reason(recipe: Any) -> tuple[Any | None, str | None]:
    """The recipe's tokenizer with its chat template, or why it could not be loaded (e.g. offline)."""
    from alignment.model import load_tokenizer, missing_model_folder

    if missing := missing_model_folder(recipe):  # e.g. the previous stage's output, not trained yet
        return None, missing
    try:
        return load_tokenizer(recipe), None
    except RecipeError:
        raise
    except Exception as err:  # a Hub tokenizer with no network: the rows and counts are still useful
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"tokenizer could not be loaded ({first})"


def render_trained(row: dict, stage: str, tokenizer: Any, recipe: Any, colour: bool) -> str:
    """One canonical row as the model sees it, trained-on text marked (green, or [[ ]] without colour)."""
    from alignment.data.curation import row_stage
    from alignment.data.lengths import parse_tools

    tools = parse_tools(row.get("tools"))
    stage = row_stage(row, stage)  # replay text of an sft mixture shows as cpt text: every token trained
    if stage in ("cpt", "classify"):
        text = row["text"] + (f"\n(label: {row['label']})" if stage == "classify" else "")
        return _mark([(text, stage == "cpt")], colour)
    if stage == "prompt":  # online RL trains on generated completions: nothing of the row is marked
        prompt = tokenizer.apply_chat_template(
            row["prompt"], tools=tools, tokenize=False, add_generation_prompt=True
        )
        answer = row.get("answer")
        return f"{prompt}\n--- answer (the reference a reward compares with) ---\n" + (
            "(none)" if answer is None else answer
        )
    if stage == "sft":
        every_token = not getattr(recipe.training, "assistant_only_loss", False)
        return _render_conversation(row["messages"], tokenizer, tools, colour, every_token)
    answer_key = "completion" if stage == "kto" else "chosen"
    parts = [_render_conversation(row["prompt"] + row[answer_key], tokenizer, tools, colour, False)]
    if stage in ("dpo", "rm"):
        parts.append("--- rejected ---")
        parts.append(_render_conversation(row["prompt"] + row["rejected"], tokenizer, tools, colour, False))
    if stage == "kto":
        parts.append(f"(label: {row['label']})")
    return "\n".join(parts)


def _render_conversation(
    messages: list[dict], tokenizer: Any, tools: Any, colour: bool, every_token: bool
) -> str:
    encoded = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = encoded["input_ids"], encoded.get("assistant_masks") or [0] * len(encoded["input_ids"])
    spans: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or bool(mask[i]) != bool(mask[start]):
            spans.append((tokenizer.decode(ids[start:i]), every_token or bool(mask[start])))
            start = i
    return _mark(spans, colour)


def _mark(spans: list[tuple[str, bool]], colour: bool) -> str:
    start, end = (GREEN, RESET) if colour else (TRAINED_START, TRAINED_END)
    return "".join(f"{start}{text}{end}" if trained else text for text, trained in spans)
