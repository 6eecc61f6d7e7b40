"""Chat templates: the assistant mask covers exactly the answers plus end of turn (built-ins and TRL's
training templates); EOS and pad rules, and what TRL's collators make of pad == EOS."""

from __future__ import annotations

import copy
import logging
from importlib.resources import files

import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from alignment.chat_templates import (
    BUILTIN_TEMPLATES,
    PAD_TOKEN,
    apply_chat_template,
    ensure_generation_markers,
    ensure_pad_token,
    has_generation_markers,
)
from alignment.errors import RecipeError
from alignment.model import load_tokenizer
from alignment.recipe import parse_recipe
from alignment.tiny.build import TinyModelConfig, build_model, build_tokenizer

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


def bare_tokenizer(
    unk: str | None = None, pad: str | None = "</s>", eos: str | None = "</s>"
) -> PreTrainedTokenizerFast:
    """A Llama-like tokenizer: EOS `</s>`, pad set to EOS (or as given), no chat tokens, optionally an unk token."""
    vocab = {"</s>": 0, "a": 1, "b": 2}
    if unk:
        vocab[unk] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pad, unk_token=unk)


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
def test_eos_is_the_end_of_turn_and_the_tokenizers_own_pad_is_kept(name):
    tokenizer, end_of_turn = templated_tokenizer(name)
    assert tokenizer.eos_token == end_of_turn
    assert tokenizer.pad_token == PAD_TOKEN  # the tiny tokenizer's own, distinct from EOS
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


def test_a_pad_equal_to_eos_is_kept_and_nothing_is_added():
    tokenizer = bare_tokenizer()
    assert apply_chat_template(tokenizer, "zephyr") == 0
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_a_tokenizer_without_pad_pads_with_the_templates_end_of_turn():
    tokenizer = bare_tokenizer(pad=None)
    before = len(tokenizer)
    assert apply_chat_template(tokenizer, "llama-3") == 3  # the template's tokens, no pad token
    assert tokenizer.pad_token == tokenizer.eos_token == "<|eot_id|>"
    assert len(tokenizer) == before + 3


def test_ensure_pad_token_uses_eos_rather_than_unk():
    tokenizer = bare_tokenizer(unk="<unk>", pad=None)
    before = len(tokenizer)
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "</s>"
    assert len(tokenizer) == before


def test_ensure_pad_token_adds_one_only_without_pad_or_eos():
    tokenizer = bare_tokenizer(pad=None, eos=None)
    before = len(tokenizer)
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == PAD_TOKEN
    assert len(tokenizer) == before + 1


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


# ---- TRL's training templates for a tokenizer whose own template has no markers ----------------

TRL_FAMILIES = {
    # family: (special tokens its template needs, BOS, what the assistant mask covers in CONVERSATION)
    "llama3": (("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               "<|begin_of_text|>", "cba<|eot_id|>XY<|eot_id|>"),
    # TRL's Qwen2.5 training template opens the marked block before the newline after the header.
    "qwen2_5": ((), None, "\ncba<|im_end|>\n\nXY<|im_end|>\n"),
}  # fmt: skip


def trl_template(family: str) -> str:
    """TRL's shipped (non-training) template for `family`, read from the installed package."""
    return (files("trl") / "chat_templates" / f"{family}.jinja").read_text(encoding="utf-8")


def family_tokenizer(family: str):
    """The tiny tokenizer dressed as `family`: its template verbatim and the special tokens it needs."""
    tokens, bos, _ = TRL_FAMILIES[family]
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(list(tokens), special_tokens=True)
    if bos is not None:
        tokenizer.bos_token = bos
    tokenizer.chat_template = trl_template(family)
    return tokenizer


@pytest.mark.parametrize("family", sorted(TRL_FAMILIES))
def test_trls_training_template_replaces_a_known_template_without_markers(family, caplog):
    tokenizer = family_tokenizer(family)
    assert not has_generation_markers(tokenizer.chat_template)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)

    with caplog.at_level(logging.INFO, logger="alignment"):
        assert ensure_generation_markers(tokenizer) == f"{family}_training.jinja"
    assert f"using TRL's {family}_training.jinja" in caplog.text
    assert has_generation_markers(tokenizer.chat_template)
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == rendered  # same text, now marked

    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == TRL_FAMILIES[family][2]
    assert runs(mask) == 2
    # Each answer's marked stretch ends on the end-of-turn token (then at most a newline): the model learns to stop.
    end_of_turn = tokenizer.convert_tokens_to_ids("<|eot_id|>" if family == "llama3" else "<|im_end|>")
    for k in range(len(mask)):
        if mask[k] and (k + 1 == len(mask) or not mask[k + 1]):
            assert end_of_turn in ids[k - 1 : k + 1]
    assert ensure_generation_markers(tokenizer) is None  # marked now: left alone


def test_trls_training_template_replaces_only_the_default_of_named_variants():
    tokenizer = family_tokenizer("llama3")
    tools = "{{ 'tools' }}"
    tokenizer.chat_template = {"default": tokenizer.chat_template, "tool_use": tools}
    assert ensure_generation_markers(tokenizer) == "llama3_training.jinja"
    assert has_generation_markers(tokenizer.chat_template)
    assert tokenizer.chat_template["tool_use"] == tools


def write_recipe(tmp_path, **keys) -> str:
    base = {"model_name_or_path": str(tmp_path / "tok"), "dataset_name": "data/tiny/sft",
            "output_dir": str(tmp_path / "runs"), "assistant_only_loss": True}  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**base, **keys}))
    return str(path)


def test_load_tokenizer_swaps_in_trls_template_for_a_hub_style_tokenizer(tmp_path):
    family_tokenizer("qwen2_5").save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(parse_recipe("sft", [write_recipe(tmp_path)]))
    assert tokenizer.chat_template == trl_template("qwen2_5_training")


@pytest.mark.parametrize(
    "template", [None, "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"], ids=["none", "unknown"]
)
def test_a_template_without_markers_that_trl_does_not_know_is_refused_in_one_line(tmp_path, template):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = template
    tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(RecipeError) as refused:
        load_tokenizer(parse_recipe("sft", [write_recipe(tmp_path)]))
    message = str(refused.value)
    assert "\n" not in message
    assert "`assistant_only_loss: true`" in message and "set `chat_template`" in message


def test_no_markers_are_needed_without_assistant_only_loss(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(parse_recipe("sft", [write_recipe(tmp_path, assistant_only_loss=False)]))
    assert loaded.chat_template == tokenizer.chat_template


# ---- pad == EOS under TRL 1.16's collators ------------------------------------------------------


def pad_is_eos():
    """The tiny tokenizer with pad set to EOS (`<|im_end|>`), and a 1-layer model for it."""
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model = build_model(tokenizer, TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32))  # fmt: skip
    return tokenizer, model


def eos_labels(ids: list[int], labels: list[int], eos: int) -> list[bool]:
    """For each EOS in the row, whether it is trained on."""
    return [label != -100 for i, label in zip(ids, labels, strict=True) if i == eos]


@pytest.mark.parametrize("data", ["messages", "prompt-completion"])
def test_pad_equal_to_eos_still_trains_on_the_end_of_turn_in_sft(tmp_path, data):
    """TRL 1.16's SFT masks padding by position, not by `label == pad_token_id`: with pad == EOS, the EOS
    that ends each answer keeps its label while the padding (the same token id) gets -100. So pad == EOS
    does not stop the model from learning to stop, and no extra pad token is needed."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer, model = pad_is_eos()
    eos = tokenizer.eos_token_id
    short, long = ("reverse abc", "cba"), ("upper xy", "XYXYXY")
    if data == "messages":  # assistant_only_loss through our template's markers
        rows = {"messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                             for q, a in (short, long)]}  # fmt: skip
    else:  # completion-only loss, TRL's default for this format
        rows = {"prompt": [[{"role": "user", "content": q}] for q, _ in (short, long)],
                "completion": [[{"role": "assistant", "content": a}] for _, a in (short, long)]}  # fmt: skip
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=data == "messages", max_length=None,
                     report_to="none", use_cpu=True, bf16=False)  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(rows), processing_class=tokenizer
    )
    examples = [trainer.train_dataset[i] for i in range(2)]

    batch = trainer.data_collator(examples)
    (short_ids, long_ids), (short_labels, long_labels) = batch["input_ids"].tolist(), batch["labels"].tolist()
    n = len(examples[0]["input_ids"])
    assert short_ids[n:] == [eos] * (len(short_ids) - n) and len(short_ids) > n  # padded with EOS
    # The user turn's EOS is prompt (-100), the answer's EOS is trained, the padding EOS is not.
    assert eos_labels(short_ids, short_labels, eos) == [False, True] + [False] * (len(short_ids) - n)
    assert eos_labels(long_ids, long_labels, eos) == [False, True]
    trained = [i for i, label in zip(short_ids, short_labels, strict=True) if label != -100]
    assert tokenizer.decode(trained) == "cba<|im_end|>\n"

    # Padding-free batches mark sequence starts by position too.
    flat = DataCollatorForLanguageModeling(pad_token_id=eos, padding_free=True)(examples)
    assert eos_labels(flat["input_ids"][0].tolist(), flat["labels"][0].tolist(), eos) == [False, True] * 2


def test_pad_equal_to_eos_still_scores_the_end_of_turn_in_dpo(tmp_path):
    """TRL 1.16's DPO collator builds `completion_mask` from the lengths of prompt and completion, not from
    token ids: with pad == EOS, the chosen answer's EOS is scored and its EOS padding is not."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, model = pad_is_eos()
    eos = tokenizer.eos_token_id
    rows = {"prompt": [[{"role": "user", "content": "reverse abc"}]],
            "chosen": [[{"role": "assistant", "content": "cba"}]],
            "rejected": [[{"role": "assistant", "content": "abcabcabc"}]]}  # fmt: skip
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_dict(rows), processing_class=tokenizer)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[0]])
    (chosen_ids, rejected_ids), (chosen_mask, rejected_mask) = (
        batch["input_ids"].tolist(),
        batch["completion_mask"].tolist(),
    )
    assert chosen_ids[-6:] == [eos] * 6  # "cba" is 6 tokens shorter than "abcabcabc": padded with EOS
    scored = [i for i, m in zip(chosen_ids, chosen_mask, strict=True) if m]
    assert tokenizer.decode(scored) == "cba<|im_end|>\n"
    assert [m for i, m in zip(chosen_ids, chosen_mask, strict=True) if i == eos] == [0, 1] + [0] * 6
    assert [m for i, m in zip(rejected_ids, rejected_mask, strict=True) if i == eos] == [0, 1]


# ---- Tool use: `tools`, assistant `tool_calls`, `tool` results ------------------------------------

# The templates as they were before tool use was added (frozen here): without tools or calls, today's
# templates must render every conversation exactly as these did, since trained tiny models depend on it.
LEGACY_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token + '\n' }}{% endgeneration %}"
        "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    "llama-3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
}

MULTI_TURN = [
    {"role": "user", "content": " upper xy\n"},
    {"role": "assistant", "content": "XY\n"},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": ""},
]
# Rendered by the templates before tool use was added (the tiny tokenizer: zephyr's EOS is `<|im_end|>`).
RENDERED_BEFORE_TOOLS = {
    ("chatml", "system"): (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nreverse abc<|im_end|>\n"
        "<|im_start|>assistant\ncba<|im_end|>\n<|im_start|>user\nupper xy<|im_end|>\n"
        "<|im_start|>assistant\nXY<|im_end|>\n"
    ),
    ("chatml", "multi-turn"): (
        "<|im_start|>user\n upper xy\n<|im_end|>\n<|im_start|>assistant\nXY\n<|im_end|>\n"
        "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
    ),
    ("zephyr", "system"): (
        "<|system|>\nbe brief<|im_end|>\n<|user|>\nreverse abc<|im_end|>\n<|assistant|>\ncba<|im_end|>\n"
        "<|user|>\nupper xy<|im_end|>\n<|assistant|>\nXY<|im_end|>\n"
    ),
    ("zephyr", "multi-turn"): (
        "<|user|>\n upper xy\n<|im_end|>\n<|assistant|>\nXY\n<|im_end|>\n<|user|>\nagain<|im_end|>\n"
        "<|assistant|>\n<|im_end|>\n"
    ),
    ("llama-3", "system"): (
        "<|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nreverse abc<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\ncba<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nupper xy<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nXY<|eot_id|>"
    ),
    ("llama-3", "multi-turn"): (
        "<|start_header_id|>user<|end_header_id|>\n\nupper xy<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nXY<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nagain<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>"
    ),
}


@pytest.mark.parametrize(("name", "conversation"), sorted(RENDERED_BEFORE_TOOLS))
def test_conversations_without_tools_render_byte_for_byte_as_before(name, conversation):
    tokenizer, _ = templated_tokenizer(name)
    messages = CONVERSATION if conversation == "system" else MULTI_TURN
    expected = RENDERED_BEFORE_TOOLS[name, conversation]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    assert tokenizer.apply_chat_template(messages, tools=None, tokenize=False) == expected
    assert tokenizer.apply_chat_template(messages, tools=[], tokenize=False) == expected  # [] is no tools


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_without_tools_every_rendering_matches_the_frozen_legacy_template(name):
    tokenizer, _ = templated_tokenizer(name)
    tokenizer.bos_token = "<|im_start|>"  # so llama-3's `bos_token` renders something
    odd_contents = ["", " ", "\n", "  two  spaces\n\n", "tab\there", "a{{ b }}c", "<|im_end|>", "ünïcode"]
    conversations = [CONVERSATION, MULTI_TURN, CONVERSATION[1:3], CONVERSATION[:1]]
    conversations += [[{"role": "system", "content": c}, {"role": "user", "content": c},
                       {"role": "assistant", "content": c}] for c in odd_contents]  # fmt: skip
    conversations.append([*CONVERSATION[1:3], {"role": "system", "content": "late system"}, CONVERSATION[3]])
    for messages in conversations:
        for generation_prompt in (False, True):
            for kwargs in ({}, {"tools": []}):
                now = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
                )
                before = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt,
                    chat_template=LEGACY_TEMPLATES[name],
                )  # fmt: skip
                assert now == before, (messages, generation_prompt, kwargs)
        now = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        before = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True,
                                               chat_template=LEGACY_TEMPLATES[name])  # fmt: skip
        assert now["assistant_masks"] == before["assistant_masks"]  # the assistant mask too


TOOLS = [
    {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
]  # fmt: skip
TOOLS_BLOCK = (
    "<tools>\n"
    '{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": '
    '{"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, '
    '"required": ["a", "b"]}}}\n'
    '{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}\n'
    "</tools>"
)
ADD_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
NOW_CALL = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'


def call(name: str, arguments: str | dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# A call with no text, its result, then the answer (arguments as the canonical JSON string).
CALL_THEN_ANSWER = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "add 2 3"},
    {"role": "assistant", "content": "", "tool_calls": [call("add", '{"a": 2, "b": 3}')]},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "it is 5"},
]
# No system message; text then two calls (one with dict arguments), then both results.
TWO_CALLS = [
    {"role": "user", "content": "add 2 3, and the time"},
    {
        "role": "assistant",
        "content": "on it",
        "tool_calls": [call("add", {"a": 2, "b": 3}), call("now", "{}")],
    },
    {"role": "tool", "content": "5"},
    {"role": "tool", "content": "12:00"},
]
RENDERED_WITH_TOOLS = {
    ("chatml", "call-then-answer"): (
        f"<|im_start|>system\nbe brief\n\n{TOOLS_BLOCK}<|im_end|>\n<|im_start|>user\nadd 2 3<|im_end|>\n"
        f"<|im_start|>assistant\n{ADD_CALL}<|im_end|>\n<|im_start|>tool\n5<|im_end|>\n"
        "<|im_start|>assistant\nit is 5<|im_end|>\n"
    ),
    ("chatml", "two-calls"): (
        f"<|im_start|>system\n{TOOLS_BLOCK}<|im_end|>\n<|im_start|>user\nadd 2 3, and the time<|im_end|>\n"
        f"<|im_start|>assistant\non it\n{ADD_CALL}\n{NOW_CALL}<|im_end|>\n"
        "<|im_start|>tool\n5<|im_end|>\n<|im_start|>tool\n12:00<|im_end|>\n"
    ),
    ("zephyr", "call-then-answer"): (
        f"<|system|>\nbe brief\n\n{TOOLS_BLOCK}<|im_end|>\n<|user|>\nadd 2 3<|im_end|>\n"
        f"<|assistant|>\n{ADD_CALL}<|im_end|>\n<|tool|>\n5<|im_end|>\n<|assistant|>\nit is 5<|im_end|>\n"
    ),
    ("zephyr", "two-calls"): (
        f"<|system|>\n{TOOLS_BLOCK}<|im_end|>\n<|user|>\nadd 2 3, and the time<|im_end|>\n"
        f"<|assistant|>\non it\n{ADD_CALL}\n{NOW_CALL}<|im_end|>\n"
        "<|tool|>\n5<|im_end|>\n<|tool|>\n12:00<|im_end|>\n"
    ),
    ("llama-3", "call-then-answer"): (
        f"<|start_header_id|>system<|end_header_id|>\n\nbe brief\n\n{TOOLS_BLOCK}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nadd 2 3<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{ADD_CALL}<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n5<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nit is 5<|eot_id|>"
    ),
    ("llama-3", "two-calls"): (
        f"<|start_header_id|>system<|end_header_id|>\n\n{TOOLS_BLOCK}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nadd 2 3, and the time<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\non it\n{ADD_CALL}\n{NOW_CALL}<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n5<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n12:00<|eot_id|>"
    ),
}
TOOL_CONVERSATIONS = {"call-then-answer": CALL_THEN_ANSWER, "two-calls": TWO_CALLS}


@pytest.mark.parametrize(("name", "conversation"), sorted(RENDERED_WITH_TOOLS))
def test_tools_calls_and_results_render_in_each_builtin(name, conversation):
    tokenizer, _ = templated_tokenizer(name)
    rendered = tokenizer.apply_chat_template(TOOL_CONVERSATIONS[conversation], tools=TOOLS, tokenize=False)
    assert rendered == RENDERED_WITH_TOOLS[name, conversation]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_tool_calls_render_without_tools_and_tools_without_calls(name):
    tokenizer, _ = templated_tokenizer(name)
    # Calls in the data but no schemas passed: the calls are still rendered, with no tools block.
    rendered = tokenizer.apply_chat_template(CALL_THEN_ANSWER, tokenize=False)
    assert ADD_CALL in rendered and "<tools>" not in rendered
    # Schemas but no calls: only the block is added.
    with_block = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False)
    assert (
        with_block.replace(f"be brief\n\n{TOOLS_BLOCK}", "be brief") == RENDERED_BEFORE_TOOLS[name, "system"]
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_string_and_dict_arguments_render_the_same(name):
    tokenizer, _ = templated_tokenizer(name)
    as_dict = copy.deepcopy(CALL_THEN_ANSWER)
    as_dict[2]["tool_calls"] = [call("add", {"a": 2, "b": 3})]
    assert tokenizer.apply_chat_template(as_dict, tools=TOOLS, tokenize=False) == (
        tokenizer.apply_chat_template(CALL_THEN_ANSWER, tools=TOOLS, tokenize=False)
    )


def masked_runs(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The text of each contiguous stretch of the assistant mask, in order."""
    runs_, current = [], []
    for token, m in zip(ids, mask, strict=True):
        if m:
            current.append(token)
        elif current:
            runs_.append(current)
            current = []
    if current:
        runs_.append(current)
    return [tokenizer.decode(run) for run in runs_]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_assistant_mask_covers_the_calls_and_end_of_turn_but_not_the_tool_result(name):
    tokenizer, end_of_turn = templated_tokenizer(name)
    after = "" if name == "llama-3" else "\n"
    out = tokenizer.apply_chat_template(
        CALL_THEN_ANSWER, tools=TOOLS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert masked_runs(tokenizer, ids, mask) == [
        f"{ADD_CALL}{end_of_turn}{after}",
        f"it is 5{end_of_turn}{after}",
    ]
    unmasked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert TOOLS_BLOCK in unmasked
    tool_turn = {"chatml": "<|im_start|>tool\n5<|im_end|>\n", "zephyr": "<|tool|>\n5<|im_end|>\n",
                 "llama-3": "<|start_header_id|>ipython<|end_header_id|>\n\n5<|eot_id|>"}[name]  # fmt: skip
    assert tool_turn in unmasked


def test_tiny_tokenizer_masks_the_call_not_the_tool_result():
    """The tiny tokenizer's own template (ChatML, one token a character), as the tiny recipes use it."""
    tokenizer = tiny_tokenizer()
    out = tokenizer.apply_chat_template(
        TWO_CALLS + [{"role": "assistant", "content": "5, at 12:00"}],
        tools=TOOLS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )  # fmt: skip
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert masked_runs(tokenizer, ids, mask) == [
        f"on it\n{ADD_CALL}\n{NOW_CALL}<|im_end|>\n",
        "5, at 12:00<|im_end|>\n",
    ]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert [m for i, m in zip(ids, mask, strict=True) if i == im_end] == [0, 0, 1, 0, 0, 1]
    # The tool results sit between the two masked stretches, all unmasked.
    masked = [k for k, m in enumerate(mask) if m]
    first_end, second_start = next((a, b) for a, b in zip(masked, masked[1:], strict=False) if b != a + 1)
    between = tokenizer.decode(ids[first_end + 1 : second_start])
    assert (
        between == "<|im_start|>tool\n5<|im_end|>\n<|im_start|>tool\n12:00<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_tool_calls_none_renders_as_absent(name):
    tokenizer, _ = templated_tokenizer(name)
    with_none = [{**message, "tool_calls": None} for message in CONVERSATION]
    assert tokenizer.apply_chat_template(with_none, tokenize=False) == RENDERED_BEFORE_TOOLS[name, "system"]
    with_empty = [{**message, "tool_calls": []} for message in CONVERSATION]
    assert tokenizer.apply_chat_template(with_empty, tokenize=False) == RENDERED_BEFORE_TOOLS[name, "system"]
    without, none = (
        tokenizer.apply_chat_template(
            messages, tools=TOOLS, return_dict=True, return_assistant_tokens_mask=True
        )
        for messages in (CONVERSATION, with_none)
    )
    assert none["input_ids"] == without["input_ids"] and none["assistant_masks"] == without["assistant_masks"]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_rows_back_from_arrow_render_as_written(name):
    """Arrow gives each message every field of the column's struct: `tool_calls: None` where it had none."""
    from datasets import Dataset

    tokenizer, _ = templated_tokenizer(name)
    rows = [{"messages": CALL_THEN_ANSWER}, {"messages": CONVERSATION}]
    back = Dataset.from_list(rows)
    assert back[1]["messages"][0]["tool_calls"] is None  # the shape this guards against
    for row, original in zip(back, rows, strict=True):
        assert tokenizer.apply_chat_template(row["messages"], tools=TOOLS, tokenize=False) == (
            tokenizer.apply_chat_template(original["messages"], tools=TOOLS, tokenize=False)
        )


def one_layer_model(tokenizer):
    """A 1-layer model for the tiny tokenizer, with room for a conversation with tools (a token a char)."""
    config = TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             max_position_embeddings=512)  # fmt: skip
    return build_model(tokenizer, config)


def test_sft_trains_on_tool_calls_from_a_tools_column(tmp_path):
    """Through TRL's SFT tokenisation (`tools` as a JSON string column, Arrow-filled `tool_calls: None`,
    `assistant_only_loss`): the labels are the call, the answer and their ends of turn; the tool result
    is not trained on."""
    import json

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = tiny_tokenizer()
    model = one_layer_model(tokenizer)
    rows = [
        {"messages": CALL_THEN_ANSWER, "tools": json.dumps(TOOLS)},
        {"messages": CONVERSATION, "tools": None},
    ]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, report_to="none",
                     use_cpu=True, bf16=False)  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trained = [
        tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True)
    ]
    assert trained == [f"{ADD_CALL}<|im_end|>\nit is 5<|im_end|>\n", "cba<|im_end|>\nXY<|im_end|>\n"]
    first = tokenizer.decode(batch["input_ids"][0].tolist())
    assert first.startswith(f"<|im_start|>system\nbe brief\n\n{TOOLS_BLOCK}<|im_end|>\n")
    assert "<|im_start|>tool\n5<|im_end|>\n" in first


def test_dpo_scores_a_chosen_tool_call_after_a_tool_history(tmp_path):
    """Through TRL's DPO tokenisation: the prompt (with the tools block, a call and its result) renders as a
    prefix of prompt + answer, so the scored completion is exactly the answer: a call, or text."""
    import json

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = tiny_tokenizer()
    model = one_layer_model(tokenizer)
    rows = [
        {"prompt": CALL_THEN_ANSWER[:2], "chosen": [CALL_THEN_ANSWER[2]],
         "rejected": [{"role": "assistant", "content": "it is 6"}], "tools": json.dumps(TOOLS)},
        {"prompt": CALL_THEN_ANSWER[:4], "chosen": [CALL_THEN_ANSWER[4]],
         "rejected": [{"role": "assistant", "content": "it is 6"}], "tools": json.dumps(TOOLS)},
    ]  # fmt: skip
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    scored = [
        tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
        for ids, mask in zip(batch["input_ids"].tolist(), batch["completion_mask"].tolist(), strict=True)
    ]
    # The collator stacks chosen rows, then rejected rows.
    assert scored == [
        f"{ADD_CALL}<|im_end|>\n",
        "it is 5<|im_end|>\n",
        "it is 6<|im_end|>\n",
        "it is 6<|im_end|>\n",
    ]
