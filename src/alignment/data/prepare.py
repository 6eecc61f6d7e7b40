"""A recipe's data, ready for its trainer: the mixture, length accounting, and the report.

TRL tokenises and truncates inside the trainer, where rows vanish uncounted: SFT drops rows left with
no trained token, DPO drops rows whose prompt fills `max_length`, and both cut answers (with their
end-of-turn) at `max_length`. Here the same lengths are measured first, with the recipe's tokenizer
and chat template, so that every drop is counted per source, `truncation: drop` can drop cut answers
instead, and `train_samples` is the number of rows actually trained. It all happens before the model
is loaded. An sft mixture with plain-text replay rows is tokenised here too (data/replay.py), since
TRL cannot tokenise conversations and text in one dataset.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from alignment.data.cache import fresh_map
from alignment.data.mixture import SOURCE_COLUMN, build_mixture
from alignment.data.replay import replay_mask, tokenize_replay
from alignment.data.report import DataReport, SplitReport
from alignment.stages import data_stage

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)

LENGTH_COLUMNS = ("_prompt_tokens", "_total_tokens")


def prepare_data(
    recipe: Recipe, tokenizer: Any | None, stage: str | None = None, keep_all: bool = False
) -> tuple[DatasetDict, DataReport]:
    """Build the mixture, account for lengths (when a tokenizer is given), log and write the report.

    Returns the rows each split will train/evaluate on, in the stage's canonical columns; with
    `keep_all` (for `alignment data`), the rows before the length drops, which are only counted.
    """
    stage = stage or data_stage(recipe.stage)
    training = recipe.training
    num_proc = getattr(training, "dataset_num_proc", None)
    with training.main_process_first(desc="data"):
        data, sources, notes = build_mixture(recipe.mixture, stage, num_proc)
        report = DataReport(
            stage=stage,
            max_length=getattr(training, "max_length", None),
            truncation=recipe.args.truncation,
            sources=sources,
            notes=notes,
        )
        if tokenizer is not None:
            packing = bool(getattr(training, "packing", False)) and getattr(
                training, "packing_strategy", "bfd"
            )
            mode = getattr(training, "truncation_mode", "keep_start")
            counted = account_lengths(data, report, tokenizer, stage, packing, num_proc, mode)
            data = data if keep_all else counted
        else:
            for name, rows in data.items():
                replay = replay_mask(rows, stage) or []
                report.splits[name] = SplitReport(
                    rows=len(rows), rows_trained=len(rows), replay_rows=sum(replay)
                )
        if SOURCE_COLUMN in data["train"].column_names:  # account_lengths has dropped it already
            data = data.remove_columns(SOURCE_COLUMN)
        if tokenizer is not None and not keep_all and replay_mask(data["train"], stage) is not None:
            data = tokenize_replay(data, tokenizer, training, num_proc)
    if training.process_index == 0:
        for line in report.table().splitlines():
            logger.info(line)
        report.write(training.output_dir)
    return data, report


def account_lengths(
    data: DatasetDict,
    report: DataReport,
    tokenizer: Any,
    stage: str,
    packing: str | bool = False,
    num_proc: int | None = None,
    truncation_mode: str = "keep_start",
) -> DatasetDict:
    """Measure every row's tokens; drop what TRL would drop (and cut answers, with `truncation: drop`); count it all.

    `packing`: False, or the recipe's `packing_strategy` when it packs (bfd still cuts at `max_length`).
    """
    import datasets

    from alignment.data.lengths import classify_lengths, length_percentiles, token_lengths

    # Rows are measured untruncated on purpose (TRL truncates later, and we count it): the tokenizer's
    # "longer than the specified maximum sequence length" warning is about indexing a model, not this.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    out = {}
    for name, rows in data.items():
        measured = fresh_map(
            rows,
            token_lengths,
            batched=True,
            fn_kwargs={"stage": stage, "tokenizer": tokenizer},
            num_proc=num_proc,
            desc=f"Measuring token lengths ({name})",
        )
        prompts = measured.data.column("_prompt_tokens").to_pylist()
        totals = measured.data.column("_total_tokens").to_pylist()
        verdicts = classify_lengths(
            prompts,
            totals,
            report.max_length,
            stage,
            packing=bool(packing),
            packing_strategy=packing or "bfd",
        )
        # keep_end: TRL keeps the end (the answer) and drops nothing; the prompt is what gets cut.
        if truncation_mode == "keep_end":
            verdicts = ["truncated" if v == "too_long" else v for v in verdicts]
        dropped = {"too_long"} | ({"truncated"} if report.truncation == "drop" else set())
        keep = [i for i, v in enumerate(verdicts) if v not in dropped]
        counts = Counter(verdicts)
        replay = replay_mask(rows, stage)
        split = SplitReport(
            rows=len(rows),
            dropped_too_long=counts["too_long"],
            truncated=counts["truncated"],
            rows_trained=len(keep),
            tokens=length_percentiles(totals),
            replay_rows=sum(replay[i] for i in keep) if replay else 0,
        )
        report.splits[name] = split
        _attribute(report, name, measured.data.column(SOURCE_COLUMN).to_pylist(), verdicts, dropped)
        kept: Dataset = measured.select(keep) if len(keep) < len(rows) else measured
        out[name] = kept.remove_columns([*LENGTH_COLUMNS, SOURCE_COLUMN])
    return datasets.DatasetDict(out)


def _attribute(
    report: DataReport, split: str, source_of: list[int], verdicts: list[str], dropped: set[str]
) -> None:
    """Per-source length counts, so the report says which source lost rows to `max_length`."""
    role_sources = [s for s in report.sources if s.role == split]
    if (
        not role_sources
    ):  # test_split_size: the eval rows came out of the train sources, counted per split only
        return
    for s in role_sources:
        s.dropped_too_long = s.truncated = 0
        s.rows_trained = 0
    for index, verdict in zip(source_of, verdicts, strict=True):
        entry = role_sources[index]
        if verdict == "too_long":
            entry.dropped_too_long += 1
        elif verdict == "truncated":
            entry.truncated += 1
        if verdict not in dropped:
            entry.rows_trained += 1
