"""Build the embedded default: a character-level tokenizer trained here, a tiny Llama, and the task data.

Everything is generated locally and deterministically (no Hub access): `alignment tiny build [DIR]`
writes DIR/model (tokenizer + randomly initialised model), DIR/sft (OpenAI messages), DIR/sft_sharegpt
(the last quarter of the conversations, as ShareGPT), DIR/dpo (train/test JSONL each), DIR/cpt (plain
text), DIR/kto (labelled answers), DIR/rm (reward-model pairs), DIR/eval.jsonl (held-out prompts
with their answers) and DIR/spam (SMS-like texts labelled spam or ham, `label<TAB>text` with no header,
for the classify stage).
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alignment.chat_templates import CHATML, PAD_TOKEN
from alignment.tiny.spam import SpamTaskConfig, generate_spam, write_tsv
from alignment.tiny.task import (
    SKILLS,
    TinyTaskConfig,
    generate_corpus,
    generate_rm_pairs,
    generate_task,
    to_kto,
)

logger = logging.getLogger(__name__)

DEFAULT_DIR = "data/tiny"
UNK_TOKEN = "<|unk|>"
# Whole words that get one token each: the chat roles and the skill names.
WORD_TOKENS = ("system", "user", "assistant", *SKILLS)


@dataclass
class TinyModelConfig:
    """Sized from measurements on a 2-core CPU: learns the task in about a minute (../shared/STACK_NOTES.md)."""

    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 128
    seed: int = 0


def build_tokenizer(corpus: list[str]) -> Any:
    """A character-level WordLevel tokenizer trained on `corpus` plus every printable character.

    The full printable alphabet is in the vocabulary because a tokenizer without an entry for an
    unseen character breaks inside TRL's DPO tokenisation.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, UNK_TOKEN, *CHATML.special_tokens]
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    tokenizer.train_from_iterator([*corpus, string.printable], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        eos_token=CHATML.end_of_turn,
        model_max_length=128,
    )
    fast.add_tokens(list(WORD_TOKENS))
    fast.chat_template = CHATML.template
    return fast


def build_model(tokenizer: Any, config: TinyModelConfig) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(model_config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")  # default: a Parquet row's dates, for smoke runs


SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def to_sharegpt(row: dict) -> dict:
    """A conversation as FastChat writes ShareGPT: `conversations` of {from, value}."""
    return {
        "conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in row["messages"]]
    }


def build_tiny(
    out_dir: str | Path = DEFAULT_DIR,
    task: TinyTaskConfig | None = None,
    model: TinyModelConfig | None = None,
    spam: SpamTaskConfig | None = None,
) -> Path:
    """Write the tiny model, tokenizer and task data under `out_dir`; return it."""
    out = Path(out_dir)
    task, model, spam = task or TinyTaskConfig(), model or TinyModelConfig(), spam or SpamTaskConfig()
    splits = generate_task(task)
    # Two SFT sources in two formats, as real mixtures are: the first three quarters of the
    # conversations as OpenAI messages, the last quarter as FastChat ShareGPT (from/value), which the
    # data layer converts. Mixed in recipe order they are the task's rows in their generated order,
    # so the demo trains on exactly the sequence it was tuned on (the tiny run is order-sensitive).
    for split in ("train", "test"):
        rows = splits[f"sft_{split}"]
        cut = len(rows) - len(rows) // 4
        write_jsonl(out / "sft" / f"{split}.jsonl", rows[:cut])
        write_jsonl(out / "sft_sharegpt" / f"{split}.jsonl", [to_sharegpt(r) for r in rows[cut:]])
    write_jsonl(out / "dpo" / "train.jsonl", splits["dpo_train"])
    write_jsonl(out / "dpo" / "test.jsonl", splits["dpo_test"])
    write_jsonl(out / "eval.jsonl", splits["eval"])
    # The other stages' rows, each derived apart so the files above stay as they were: plain text about
    # new words (cpt), and the DPO pairs unpaired into labelled answers (kto, train and test alike).
    corpus = generate_corpus(splits, task.seed)
    for split in ("train", "test"):
        write_jsonl(out / "cpt" / f"{split}.jsonl", corpus[f"cpt_{split}"])
        write_jsonl(out / "kto" / f"{split}.jsonl", to_kto(splits[f"dpo_{split}"], task.seed))
    # A reward model's pairs: new prompts with every plausible mistake each; held out on the DPO test pairs.
    write_jsonl(out / "rm" / "train.jsonl", generate_rm_pairs(splits, task.seed))
    write_jsonl(out / "rm" / "test.jsonl", splits["dpo_test"])
    # A classifier's rows, as the SMS Spam Collection ships them: headerless `label<TAB>text` files.
    for split, rows in generate_spam(spam).items():
        write_tsv(out / "spam" / f"{split}.tsv", rows)

    corpus = [m["content"] for row in splits["sft_train"] for m in row["messages"]]
    tokenizer = build_tokenizer(corpus)
    tiny = build_model(tokenizer, model)
    tokenizer.save_pretrained(out / "model")
    tiny.save_pretrained(out / "model")
    (out / "build.json").write_text(
        json.dumps({"task": asdict(task), "model": asdict(model), "spam": asdict(spam)}, indent=2)
    )
    n_params = sum(p.numel() for p in tiny.parameters())
    logger.info(
        f"tiny model ({n_params / 1e6:.1f}M parameters, {len(tokenizer)} tokens) and task written to {out}"
    )
    return out
