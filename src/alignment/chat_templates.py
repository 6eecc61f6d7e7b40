"""Built-in chat templates with `{% generation %}` markers, and the EOS/pad rules that go with them.

TRL's `assistant_only_loss` needs the template to mark assistant text with `{% generation %}`; most
tokenizers on the Hub ship templates without it. Each built-in puts the end-of-turn token (and the
newline after it) inside the marked block, so the model learns to stop and DPO scores what it says.
Each also renders tool use (the `tools` schemas, assistant `tool_calls`, `tool` results), which
TRL passes to the template but which a template that prints only `content` drops from training.
A tokenizer whose own template is one TRL knows gets TRL's marked training version instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    template: str
    end_of_turn: str | None  # None: the tokenizer's own EOS ends a turn (zephyr)
    special_tokens: tuple[str, ...]  # must exist as single tokens; added when missing


# Tool use: conversations with tools come in the canonical shape (assistant `tool_calls` in OpenAI's
# form, `tool` messages, the schema list passed as `tools=`), and TRL renders them through the template;
# one that printed only `content` would drop every call from training without a word. All three built-ins
# share the layout of the Hermes and Qwen2.5/Qwen3 templates, which many open models read: the schemas inside
# `<tools></tools>` in the system turn, one JSON object a line, and each call as
# `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` after the answer's text, inside the marked
# block (the model learns to emit the calls, then to end its turn). One layout means one parser for what
# a trained model emits, whichever template trained it. Hermes/Qwen's instruction prose around the block
# is left out: it would cost its tokens on every row, and a recipe that wants it can put it in its system
# message. Without tools or calls the macros render nothing, so such conversations render as before.
TOOL_MACROS = (
    "{% macro render_tools(tools) %}"
    "{{ '<tools>' }}{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}{{ '\n</tools>' }}"
    "{% endmacro %}"
    # `calls or []`: Arrow fills an absent `tool_calls` with None, which must render as no calls.
    # `call['function'] or call` also takes calls written without OpenAI's `function` wrapper.
    # `arguments` is a JSON string in canonical rows (rendered verbatim); a dict is rendered with `tojson`.
    "{% macro render_tool_calls(calls, after_text) %}"
    "{% for call in calls or [] %}{% set fn = call['function'] or call %}"
    "{% if after_text or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' }}"
    "{% if fn['arguments'] is string %}{{ fn['arguments'] }}"
    "{% else %}{{ fn['arguments'] | tojson }}{% endif %}"
    "{{ '}\n</tool_call>' }}"
    "{% endfor %}"
    "{% endmacro %}"
)
# The tools block goes into the first system message (after a blank line, when it has text), or into a
# system turn of its own before the first message when the conversation has none.
HAS_SYSTEM = "(messages and messages[0]['role'] == 'system')"

CHATML = ChatTemplate(
    name="chatml",
    template=(
        TOOL_MACROS + "{% if tools and not " + HAS_SYSTEM + " %}"
        "{{ '<|im_start|>system\n' + render_tools(tools) + '<|im_end|>\n' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + render_tool_calls(message['tool_calls'], message['content']) "
        "+ '<|im_end|>\n' }}"
        "{% endgeneration %}"
        "{% elif tools and loop.first and message['role'] == 'system' %}"
        "{{ '<|im_start|>system\n' + message['content'] + ('\n\n' if message['content'] else '') "
        "+ render_tools(tools) + '<|im_end|>\n' }}"
        # A tool's result is an ordinary turn under its own role, as Hermes has it: `<|im_start|>tool`.
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    end_of_turn="<|im_end|>",
    special_tokens=("<|im_start|>", "<|im_end|>"),
)

ZEPHYR = ChatTemplate(
    name="zephyr",
    template=(
        TOOL_MACROS + "{% if tools and not " + HAS_SYSTEM + " %}"
        "{{ '<|system|>\n' + render_tools(tools) + eos_token + '\n' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' }}{% generation %}"
        "{{ message['content'] + render_tool_calls(message['tool_calls'], message['content']) "
        "+ eos_token + '\n' }}"
        "{% endgeneration %}"
        "{% elif tools and loop.first and message['role'] == 'system' %}"
        "{{ '<|system|>\n' + message['content'] + ('\n\n' if message['content'] else '') "
        "+ render_tools(tools) + eos_token + '\n' }}"
        # A tool's result follows zephyr's own `<|role|>` convention: `<|tool|>`.
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
        TOOL_MACROS + "{{ bos_token }}"
        "{% if tools and not " + HAS_SYSTEM + " %}"
        "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + render_tools(tools) + '<|eot_id|>' }}"
        "{% endif %}"
        "{% for message in messages %}"
        # A tool's result goes under `ipython`, the header Llama 3.1+ models were trained to read tool
        # output from (Meta's own template does the same); `tool` would be a header they never saw.
        "{{ '<|start_header_id|>' + ('ipython' if message['role'] == 'tool' else message['role']) "
        "+ '<|end_header_id|>\n\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] | trim "
        "+ render_tool_calls(message['tool_calls'], message['content'] | trim) + '<|eot_id|>' }}"
        "{% endgeneration %}"
        "{% elif tools and loop.first and message['role'] == 'system' %}"
        "{{ message['content'] | trim + ('\n\n' if message['content'] | trim else '') "
        "+ render_tools(tools) + '<|eot_id|>' }}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    end_of_turn="<|eot_id|>",
    special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)

BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (CHATML, ZEPHYR, LLAMA3)}
# The tiny tokenizer's own pad; added to another tokenizer only when it has neither pad nor EOS.
PAD_TOKEN = "<|pad|>"


GENERATION_TAG = re.compile(
    r"\{%-?\s*generation\s*-?%\}"
)  # the tag as transformers' Jinja extension reads it


def has_generation_markers(template: str | dict[str, str] | None) -> bool:
    """Whether the template (the `default` one of a tokenizer that ships named variants) marks assistant text."""
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and GENERATION_TAG.search(template) is not None


def ensure_generation_markers(tokenizer: Any) -> str | None:
    """Make the tokenizer's chat template mark assistant text for `assistant_only_loss`.

    A template that has the markers is kept (returns None). One that lacks them is replaced by TRL's
    training version of it when TRL ships one (`trl/chat_templates/*_training.jinja`); returns that
    file's name. Anything else is refused before a model is loaded, instead of by SFTTrainer later.
    """
    from trl.chat_template_utils import get_training_chat_template

    own = tokenizer.chat_template
    if has_generation_markers(own):
        return None
    training = None
    default = own.get("default") if isinstance(own, dict) else own
    if default is not None:  # TRL's lookup fails on a tokenizer without a (default) template
        try:
            training = get_training_chat_template(tokenizer)
        except ValueError:  # TRL's answer for a template it does not know
            pass
    if not has_generation_markers(training):
        raise RecipeError(
            "`assistant_only_loss: true` needs a chat template with {% generation %} markers, and TRL has no "
            "training version of this tokenizer's template; set `chat_template` to a built-in "
            f"({', '.join(sorted(BUILTIN_TEMPLATES))}) or to a Jinja string with the markers"
        )
    name = _trl_template_name(training)
    if isinstance(own, dict):  # keep the other named variants (tool_use, rag, ...)
        tokenizer.chat_template = {**own, "default": training}
    else:
        tokenizer.chat_template = training
    logger.info(f"assistant_only_loss: chat template has no {{% generation %}} markers; using TRL's {name}")
    return name


def _trl_template_name(template: str) -> str:
    """The file name under `trl/chat_templates` that holds `template`, for the log and the caller."""
    from importlib.resources import files

    for path in sorted((files("trl") / "chat_templates").iterdir(), key=lambda p: p.name):
        if path.name.endswith("_training.jinja") and path.read_text(encoding="utf-8") == template:
            return path.name
    return "training chat template"


def apply_chat_template(tokenizer: Any, name_or_jinja: str | None) -> int:
    """Set the recipe's chat template, its end-of-turn token as EOS, and a pad token (see `ensure_pad_token`).

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
    """Give the tokenizer a pad token: its own when it has one, else EOS.

    Pad == EOS is safe with TRL 1.16: its SFT and DPO collators mark padding by position (labels
    padded with -100, attention and completion masks built from lengths), never by comparing tokens
    with `pad_token_id`, so the real EOS stays in the loss (tests/test_chat_templates.py checks this
    through SFTTrainer and DPOTrainer). Adding a `<|pad|>` token instead would grow the embeddings of
    every model for nothing; it is added only when the tokenizer has no EOS either.
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    logger.info(f"pad token set to {tokenizer.pad_token} (the tokenizer had none)")
