"""Built-in chat templates: the assistant mask covers exactly the answers plus end of turn; EOS and pad rules."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from alignment.chat_templates import (
    BUILTIN_TEMPLATES,
    PAD_TOKEN,
    apply_chat_template,
    ensure_pad_token,
    has_generation_markers,
)
from alignment.tiny.build import build_tokenizer

CORPUS = ["be brief", "reverse abc", "cba", "upper xy", "XY"]
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "reverse abc"},
    {"role": "assistant", "content": "cba"},
    {"role": "user", "content": "upper xy"},
    {"role": "assistant", "content": "XY"},
]
ASSISTANT_HEADER = {
    "chatml": "<|im_start|>assistant\n",
    "zephyr": "<|assistant|>\n",
    "llama-3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


def tiny_tokenizer():
    return build_tokenizer(CORPUS)


def bare_tokenizer(unk: str | None = None) -> PreTrainedTokenizerFast:
    """A Llama-like tokenizer: EOS `</s>`, pad set to EOS, no chat tokens, optionally an unk token."""
    vocab = {"</s>": 0, "a": 1, "b": 2}
    if unk:
        vocab[unk] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token=unk
    )


def runs(mask: list[int]) -> int:
    """How many contiguous stretches of 1s the mask has."""
    return sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))


def templated_tokenizer(name: str):
    """A fresh tiny tokenizer with built-in template `name` applied, and the end-of-turn token it should use."""
    tokenizer = tiny_tokenizer()
    own_eos = tokenizer.eos_token
    apply_chat_template(tokenizer, name)
    return tokenizer, BUILTIN_TEMPLATES[name].end_of_turn or own_eos


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_assistant_mask_covers_exactly_the_answers_and_their_end_of_turn(name):
    tokenizer, end_of_turn = templated_tokenizer(name)
    after = "" if name == "llama-3" else "\n"

    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(mask) == len(ids)
    masked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == f"cba{end_of_turn}{after}XY{end_of_turn}{after}"
    assert runs(mask) == 2
    unmasked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    for turn in CONVERSATION:
        if turn["role"] != "assistant":
            assert turn["content"] in unmasked
    assert ASSISTANT_HEADER[name].strip() in unmasked
    # The end of turn is one token, so the model can learn to emit it.
    assert len(tokenizer.encode(end_of_turn, add_special_tokens=False)) == 1


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_eos_is_the_end_of_turn_and_pad_is_not_eos(name):
    tokenizer, end_of_turn = templated_tokenizer(name)
    assert tokenizer.eos_token == end_of_turn
    assert tokenizer.pad_token is not None
    assert tokenizer.pad_token != tokenizer.eos_token
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert has_generation_markers(tokenizer.chat_template)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_generation_prompt_ends_with_the_assistant_header(name):
    tokenizer = tiny_tokenizer()
    apply_chat_template(tokenizer, name)
    prompt = CONVERSATION[:2]
    with_header = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(prompt, tokenize=False)
    assert with_header.endswith(ASSISTANT_HEADER[name])
    assert not without.endswith(ASSISTANT_HEADER[name])
    # Generation starts where the training text has the answer: the prompt is a prefix of the full conversation.
    full = tokenizer.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert full.startswith(with_header)
    assert full[len(with_header) :].startswith("cba")


def test_llama3_adds_its_three_special_tokens_as_single_tokens():
    tokenizer = tiny_tokenizer()
    before = len(tokenizer)
    added = apply_chat_template(tokenizer, "llama-3")
    assert added == 3
    assert len(tokenizer) == before + 3
    for token in BUILTIN_TEMPLATES["llama-3"].special_tokens:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_chatml_adds_nothing_to_a_tokenizer_that_has_its_tokens():
    tokenizer = tiny_tokenizer()
    before = len(tokenizer)
    assert apply_chat_template(tokenizer, "chatml") == 0
    assert len(tokenizer) == before


def test_applying_a_template_twice_adds_nothing_the_second_time():
    tokenizer = tiny_tokenizer()
    assert apply_chat_template(tokenizer, "llama-3") == 3
    assert apply_chat_template(tokenizer, "llama-3") == 0


def test_added_pad_token_counts_in_the_tokens_added():
    tokenizer = bare_tokenizer()
    assert apply_chat_template(tokenizer, "zephyr") == 1
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token == "</s>"


def test_ensure_pad_token_replaces_a_pad_equal_to_eos():
    tokenizer = bare_tokenizer()
    assert tokenizer.pad_token == tokenizer.eos_token
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_ensure_pad_token_uses_unk_when_it_is_not_eos():
    tokenizer = bare_tokenizer(unk="<unk>")
    before = len(tokenizer)
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<unk>"
    assert len(tokenizer) == before


def test_ensure_pad_token_keeps_a_distinct_pad():
    tokenizer = tiny_tokenizer()
    pad = tokenizer.pad_token
    assert pad != tokenizer.eos_token
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == pad


def test_jinja_string_is_set_verbatim_and_keeps_eos():
    tokenizer = tiny_tokenizer()
    eos = tokenizer.eos_token
    jinja = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert apply_chat_template(tokenizer, jinja) == 0
    assert tokenizer.chat_template == jinja
    assert tokenizer.eos_token == eos
    assert (
        tokenizer.apply_chat_template(CONVERSATION[1:3], tokenize=False)
        == "[user] reverse abc\n[assistant] cba\n"
    )


def test_no_template_keeps_the_tokenizers_own():
    tokenizer = tiny_tokenizer()
    own = tokenizer.chat_template
    assert own
    apply_chat_template(tokenizer, None)
    assert tokenizer.chat_template == own


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% generation %}{{ m }}{% endgeneration %}", True),
        ("{%- generation %}{{ m }}{%- endgeneration %}", True),
        ("{{ message['content'] }}", False),
        ("", False),
        (None, False),
    ],
    ids=["plain", "strip-left", "no-markers", "empty", "none"],
)
def test_has_generation_markers(template, expected):
    assert has_generation_markers(template) is expected


@pytest.mark.parametrize("tag", ["{% generation -%}", "{%- generation -%}", "{%generation%}"])
def test_has_generation_markers_accepts_whitespace_control(tag):
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}"
        + tag
        + "{{ m['content'] }}{% endgeneration %}"
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = template
    out = tokenizer.apply_chat_template(
        CONVERSATION[1:3], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert any(out["assistant_masks"])  # transformers honours the marker...
    assert has_generation_markers(template)  # ...so this check must too
