"""Built-in chat templates with `{% generation %}` markers, and the EOS/pad rules that go with them.

TRL's `assistant_only_loss` needs the template to mark assistant text with `{% generation %}`; most
tokenizers on the Hub ship templates without it. Each built-in puts the end-of-turn token (and the
newline after it) inside the marked block, so the model learns to stop and DPO scores what it says.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    template: str
    end_of_turn: str | None  # None: the tokenizer's own EOS ends a turn (zephyr)
    special_tokens: tuple[str, ...]  # must exist as single tokens; added when missing


CHATML = ChatTemplate(
    name="chatml",
    template=(
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    end_of_turn="<|im_end|>",
    special_tokens=("<|im_start|>", "<|im_end|>"),
)

ZEPHYR = ChatTemplate(
    name="zephyr",
    template=(
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token + '\n' }}{% endgeneration %}"
        "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    end_of_turn=None,
    special_tokens=(),
)

LLAMA3 = ChatTemplate(
    name="llama-3",
    template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    end_of_turn="<|eot_id|>",
    special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)

BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (CHATML, ZEPHYR, LLAMA3)}
PAD_TOKEN = "<|pad|>"


GENERATION_TAG = re.compile(
    r"\{%-?\s*generation\s*-?%\}"
)  # the tag as transformers' Jinja extension reads it


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and GENERATION_TAG.search(template) is not None


def apply_chat_template(tokenizer: Any, name_or_jinja: str | None) -> int:
    """Set the recipe's chat template, its end-of-turn token as EOS, and a pad token distinct from EOS.

    Returns how many tokens were added to the vocabulary (the model's embeddings must grow by as many).
    """
    before = len(tokenizer)
    if name_or_jinja in BUILTIN_TEMPLATES:
        chosen = BUILTIN_TEMPLATES[name_or_jinja]
        missing = [t for t in chosen.special_tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        tokenizer.chat_template = chosen.template
        if chosen.end_of_turn is not None and tokenizer.eos_token != chosen.end_of_turn:
            logger.info(
                f"chat template {chosen.name}: EOS set to {chosen.end_of_turn} (was {tokenizer.eos_token})"
            )
            tokenizer.eos_token = chosen.end_of_turn
    elif name_or_jinja is not None:
        tokenizer.chat_template = name_or_jinja
    if tokenizer.chat_template is None:
        logger.warning(
            "the tokenizer has no chat template and the recipe sets none: conversational data will fail"
        )
    ensure_pad_token(tokenizer)
    return len(tokenizer) - before


def ensure_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token that is not EOS.

    With pad == EOS, collators that mask padding out of the labels also mask the real EOS, and the
    model never learns to stop (the Alignment Handbook's old `pad = eos` default).
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token:
        return
    unk = tokenizer.unk_token
    if unk is not None and unk != tokenizer.eos_token:
        tokenizer.pad_token = unk
    else:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    logger.info(f"pad token set to {tokenizer.pad_token} (distinct from EOS {tokenizer.eos_token})")
