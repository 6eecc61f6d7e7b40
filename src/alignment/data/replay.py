"""Replay: plain text trained with a language-modelling loss beside an SFT mixture's conversations.

Fine-tuning on conversations alone makes a model forget some of what pretraining taught it (its
held-out text perplexity rises: benchmarks/forgetting.py measures it); mixing some of the pretraining
text back in reduces that. A recipe asks for it with a `format: text` source in its sft mixture, whose
`weight` or `samples` says how many rows. Mind that the loss weighs tokens, not rows: a text of 64
tokens weighs as much as a dozen short answers (on the tiny task, 72 texts beside 8000 conversations
are 10% of the trained tokens; 800 texts would be 55%). With `test_split`, the text source's own test
split joins the eval set like any source's, so the trainer's `eval_loss` covers held-out text too.

Gap filled: TRL 1.16's SFTTrainer decides from a dataset's first row whether all of it is conversations
or text, and builds assistant masks only for conversations, so it cannot tokenise a dataset that mixes
the two. When (and only when) an sft mixture has replay rows, every row is tokenised here as TRL would
tokenise it alone, into `input_ids` and `labels`: a conversation through the chat template, its labels
-100 outside the assistant tokens with `assistant_only_loss`; a text with EOS appended, every token a
label. TRL takes a dataset with `input_ids` as processed: it keeps the labels, truncates both to
`max_length`, drops rows left with no label, and packs or pads them as usual (`trainer_args` turns
TRL's own `assistant_only_loss` off, which it refuses on tokenised rows and which is in the labels).
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from alignment.data.cache import fresh_map
from alignment.data.formats import REPLAY_STAGES
from alignment.errors import RecipeError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

IGNORED = -100  # the label of a token the loss leaves out (transformers' and TRL's convention)


def replay_mask(rows: Dataset | dict[str, list], stage: str) -> list[bool] | None:
    """Which rows are replay text (their `text` set), or None when `stage`'s rows mix in no replay."""
    columns = rows.column_names if hasattr(rows, "column_names") else list(rows)
    if stage not in REPLAY_STAGES or "text" not in columns:
        return None
    texts = rows.data.column("text").to_pylist() if hasattr(rows, "data") else rows["text"]
    return [text is not None for text in texts]


def training_chat_template(tokenizer: Any, assistant_only_loss: bool) -> str | None:
    """The template TRL would pass to `apply_chat_template` (None: the tokenizer's own).

    SFTTrainer swaps in its training version of a template without `{% generation %}` markers when
    `assistant_only_loss` is on; `load_tokenizer` has normally done that already.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        return get_training_chat_template(tokenizer)
    return None


def tokenize_batch(
    batch: dict[str, list],
    *,
    tokenizer: Any,
    assistant_only_loss: bool,
    chat_template: str | None,
    eos_token: str,
) -> dict[str, list]:
    """Batched map fn: `input_ids` and `labels` of each row, as TRL 1.16's `SFTTrainer._prepare_dataset`.

    A replay row (`text` set): the text, EOS appended unless it ends with it, through the tokenizer
    (its special tokens included); every token is a label. A conversation: `apply_chat_template` with
    the row's tools, and with `assistant_only_loss` its assistant mask: tokens outside it get -100.
    """
    ids_out: list[list[int]] = []
    labels_out: list[list[int]] = []
    texts = batch.get("text") or [None] * len(batch["messages"])
    for i, text in enumerate(texts):
        if text is not None:
            ids = list(tokenizer(text=text if text.endswith(eos_token) else text + eos_token)["input_ids"])
            ids_out.append(ids)
            labels_out.append(list(ids))
            continue
        tools = batch["tools"][i] if "tools" in batch else None
        encoded = tokenizer.apply_chat_template(
            batch["messages"][i],
            tokenize=True,
            return_dict=True,
            chat_template=chat_template,
            tools=json.loads(tools) if isinstance(tools, str) else tools,
            return_assistant_tokens_mask=assistant_only_loss,
        )
        ids = list(encoded["input_ids"])
        mask = encoded.get("assistant_masks") if assistant_only_loss else None
        if mask is not None and 1 not in mask:
            raise RecipeError(
                "replay: a conversation has no assistant token to train on: the chat template marks none "
                "with {% generation %} (`assistant_only_loss: true` needs the markers)"
            )
        ids_out.append(ids)
        labels_out.append(
            list(ids) if mask is None else [t if m else IGNORED for t, m in zip(ids, mask, strict=True)]
        )
    return {"input_ids": ids_out, "labels": labels_out}


def tokenize_replay(
    data: DatasetDict, tokenizer: Any, training: Any, num_proc: int | None = None
) -> DatasetDict:
    """Every split of an sft mixture with replay rows as `input_ids` and `labels` (see the module's doc)."""
    import datasets

    assistant_only_loss = bool(getattr(training, "assistant_only_loss", False))
    options = {
        "tokenizer": tokenizer,
        "assistant_only_loss": assistant_only_loss,
        "chat_template": training_chat_template(tokenizer, assistant_only_loss),
        "eos_token": getattr(training, "eos_token", None) or tokenizer.eos_token,
    }
    return datasets.DatasetDict(
        {
            name: fresh_map(
                rows,
                tokenize_batch,
                batched=True,
                fn_kwargs=options,
                remove_columns=rows.column_names,
                num_proc=num_proc,
                desc=f"Tokenising {name} (conversations and replay text)",
            )
            for name, rows in data.items()
        }
    )


def trainer_args(training: Any, train: Any) -> Any:
    """`training` as SFTTrainer must get it for `train`: without `assistant_only_loss` when the rows come
    tokenised (TRL refuses the option on rows it cannot see as conversations; the labels carry the mask)."""
    columns = getattr(train, "column_names", None) or []
    if "input_ids" not in columns or not getattr(training, "assistant_only_loss", False):
        return training
    told = copy.copy(training)  # the recipe's own arguments (recorded, shown in the card) stay as written
    told.assistant_only_loss = False
    return told
