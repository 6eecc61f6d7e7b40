"""Dedup and decontamination: exact counts of what each step drops, and the eval-prompt files it reads."""

from __future__ import annotations

import json
import sys

import pytest
from datasets import Dataset

from alignment.data.curation import (
    EvalNgrams,
    ExactDeduplicator,
    NearDeduplicator,
    dedup_keys,
    eval_texts,
    ngrams,
    normalise,
    read_eval_prompts,
    row_text,
    shingles,
)
from alignment.errors import RecipeError

# 40 words, no word repeated, so its 5-shingles are 36 distinct sets.
FORTY = (
    "after three days of heavy rain our village council quietly moved every family up to an old stone "
    "school on a windy hill where kind volunteers served soup bread and tea until floodwater finally went "
    "down again last sunday morning"
)
# 21 words of an "evaluation prompt".
EVAL_PROMPT = (
    "A train leaves Lisbon at noon travelling north at sixty kilometres per hour while a second train "
    "leaves Porto heading south"
)


def chat(user: str, answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer, **extra}]
    }


def exact_keep(rows: list[dict], stage: str = "sft", dedup: ExactDeduplicator | None = None) -> list[bool]:
    batch = {column: [row[column] for row in rows] for column in rows[0]}
    return (dedup or ExactDeduplicator()).keep_mask(dedup_keys(batch, stage=stage)["_dedup_key"])


# ---- row text and normalisation ----------------------------------------------


def test_normalise_collapses_whitespace_then_strips_and_lowercases():
    assert normalise("  Hello\t\n  World  \r\n") == "hello world"
    assert normalise("data set") != normalise("dataset")


def test_row_text_covers_every_message_list_and_tool_call():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    sft = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?", "tool_calls": None},  # as Arrow returns it
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "4C, rain", "tool_calls": None},
            {"role": "assistant", "content": "4C and raining.", "tool_calls": None},
        ],
        "tools": None,
    }
    assert row_text(sft, "sft") == (
        "[messages]\nuser: Weather in Oslo?\nassistant: \n"
        'assistant calls get_weather({"city": "Oslo"})\ntool: 4C, rain\nassistant: 4C and raining.'
    )
    dpo = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    assert row_text(dpo, "dpo") == "[prompt]\nuser: Q\n[chosen]\nassistant: good\n[rejected]\nassistant: bad"
    swapped = {**dpo, "chosen": dpo["rejected"], "rejected": dpo["chosen"]}
    assert row_text(swapped, "rm") != row_text(dpo, "rm")
    kto = {"prompt": dpo["prompt"], "completion": dpo["chosen"], "label": False}
    assert row_text(kto, "kto") == "[prompt]\nuser: Q\n[completion]\nassistant: good\n[label] False"
    assert row_text({"text": "Some prose."}, "cpt") == "Some prose."
    assert row_text({"text": "Great film", "label": 1}, "classify") == "Great film\nlabel: 1"


def test_row_text_names_a_missing_column_and_an_unknown_stage():
    with pytest.raises(RecipeError, match=r"a dpo row has no `rejected` column \(it has chosen, prompt\)"):
        row_text({"prompt": [], "chosen": []}, "dpo")
    with pytest.raises(RecipeError, match="unknown stage `dp0`.*did you mean `dpo`"):
        row_text({}, "dp0")


# ---- exact deduplication ----------------------------------------------------------


def test_exact_dedup_counts_whitespace_and_case_variants_but_not_changes_inside_a_word():
    rows = [
        chat("What is the capital of France?", "Paris."),
        chat("what is the  capital of\nFrance? ", "PARIS."),  # spacing and case: a duplicate
        chat("What is the capital of France?", "Paris."),  # verbatim: a duplicate
        chat("What is the capital of Frances?", "Paris."),  # one letter inside a word: different
        chat("Name the data set.", "Iris."),
        chat("Name the dataset.", "Iris."),  # a space removed inside a word: different
        chat("What is the capital of France?", "Lyon."),  # same prompt, different answer: different
    ]
    assert exact_keep(rows) == [True, False, False, True, True, True, True]


def test_exact_dedup_is_first_wins_across_sources():
    dedup = ExactDeduplicator()
    source_a = [chat("Say hi.", "Hi!"), chat("Count to 3.", "1 2 3")]
    source_b = [chat("Say bye.", "Bye!"), chat("say  HI.", "hi!"), chat("Say bye.", "Bye!")]
    assert exact_keep(source_a, dedup=dedup) == [True, True]
    assert exact_keep(source_b, dedup=dedup) == [True, False, False]
    assert len(dedup.seen) == 3


def test_dedup_keys_as_a_batched_map_over_arrow_rows():
    rows = [
        {"prompt": "Translate: cat", "completion": "chat", "label": True},
        {"prompt": "Translate:  Cat", "completion": "Chat", "label": True},
        {"prompt": "Translate: cat", "completion": "chat", "label": False},  # the label differs
    ]
    mapped = Dataset.from_list(rows).map(dedup_keys, batched=True, batch_size=2, fn_kwargs={"stage": "kto"})
    keys = mapped["_dedup_key"]
    assert keys[0] == keys[1] != keys[2]
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)


# ---- near deduplication ----------------------------------------------------------------


def jaccard(a: str, b: str, size: int = 5) -> float:
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / len(sa | sb)


def test_minhash_catches_a_near_duplicate_that_exact_dedup_misses():
    words = FORTY.split()
    assert len(words) == 40 == len(set(words))
    last_changed = " ".join([*words[:-1], "eventually"])  # 1 of 36 shingles changes: Jaccard 35/37
    first_changed = " ".join(["a", *words[1:]])  # likewise at the start
    different = (
        "quarterly revenue grew eight percent as the company opened two new warehouses in the north "
        "and hired forty engineers to rebuild its ordering software before the busy holiday season began "
        "next year"
    )
    assert jaccard(FORTY, last_changed) == pytest.approx(35 / 37)
    assert jaccard(FORTY, different) == 0.0
    texts = [FORTY, last_changed, different, first_changed]

    assert ExactDeduplicator().keep_mask([normalise(t) for t in texts]) == [True, True, True, True]
    assert NearDeduplicator().keep_mask(texts) == [True, False, True, False]


def test_minhash_threshold_and_memory_across_calls():
    words = FORTY.split()
    middle_changed = " ".join([*words[:20], "suddenly", *words[21:]])
    # A word in the middle changes 5 of 36 shingles: Jaccard 31/41 = 0.76, under the default 0.8.
    assert jaccard(FORTY, middle_changed) == pytest.approx(31 / 41)
    assert NearDeduplicator(threshold=0.8).keep_mask([FORTY, middle_changed]) == [True, True]
    # The index remembers what it kept: a later call (the next source) is checked against it.
    dedup = NearDeduplicator()
    assert dedup.keep_mask([FORTY]) == [True]
    assert dedup.keep_mask(["Short one.", FORTY.upper()]) == [True, False]


def test_minhash_shingles_short_texts_whole():
    assert shingles("Hello  there World", 5) == {b"hello there world"}
    assert NearDeduplicator().keep_mask(["Hello there", "hello  THERE", "hello there friend"]) == [
        True,
        False,
        True,
    ]


def test_minhash_without_datasketch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasketch", None)
    with pytest.raises(
        RecipeError, match=r"^dedup: minhash needs datasketch \(pip install 'alignment\[minhash\]'\)$"
    ):
        NearDeduplicator()


# ---- decontamination ---------------------------------------------------------------------


def test_ngrams_are_word_ngrams_of_the_normalised_text():
    assert ngrams("The  cat\nSAT down", 3) == {("the", "cat", "sat"), ("cat", "sat", "down")}
    assert ngrams("too short", 3) == set()


def test_a_shared_13_gram_contaminates_and_a_12_gram_does_not():
    words = EVAL_PROMPT.split()
    assert len(words) == 21
    # Words are split on whitespace: the overlap must stand apart from punctuation to match.
    thirteen = "Here is a puzzle:\n" + " ".join(words[3:16]).upper() + " - solve it step by step."
    twelve = "Here is a puzzle: " + "  ".join(words[3:15]) + " and then? Solve it step by step."
    unrelated = "Write a haiku about trains leaving a station at noon."
    index = EvalNgrams.from_texts([EVAL_PROMPT, "What is 2+2?"])
    assert (index.n, index.texts, index.too_short) == (13, 2, 1)
    assert index.contaminated_mask([thirteen, twelve, unrelated]) == [True, False, False]
    # n is configurable: at 12 words the shorter overlap counts too.
    assert EvalNgrams.from_texts([EVAL_PROMPT], n=12).contaminated_mask([thirteen, twelve, unrelated]) == [
        True,
        True,
        False,
    ]


def test_eval_prompts_too_short_to_check_are_counted_and_match_nothing():
    index = EvalNgrams.from_texts(["What is 2+2?", "Name a colour."], n=13)
    assert (index.texts, index.too_short, len(index.grams)) == (2, 2, 0)
    assert index.contaminated_mask(["What is 2+2?"]) == [False]
    with pytest.raises(RecipeError, match="n-gram size is 0"):
        EvalNgrams.from_texts(["x"], n=0)


def test_eval_texts_are_the_user_turns_of_canonical_rows():
    sft = [
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "First question"},
                {"role": "assistant", "content": "Answer"},
                {"role": "user", "content": "Follow-up"},
                {"role": "assistant", "content": "Done"},
            ]
        }
    ]
    assert eval_texts(sft, "sft") == ["First question\nFollow-up"]
    dpo = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "Which is bigger?"}],
                "chosen": [{"role": "assistant", "content": "9"}],
                "rejected": [{"role": "assistant", "content": "8"}],
            }
        ]
    )
    assert eval_texts(dpo, "dpo") == ["Which is bigger?"]
    assert eval_texts([{"text": "A doc.", "label": 0}], "classify") == ["A doc."]


# ---- evaluation prompt files ------------------------------------------------------------------


def write_lines(path, *lines: str) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_read_eval_prompts_reads_every_prompt_key(tmp_path):
    rows = [
        {"prompt": "Plain prompt"},
        {"prompt": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Chat prompt"}]},
        {
            "messages": [
                {"role": "user", "content": "Turn one"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "Turn two"},
            ]
        },
        {"question": "A question?", "answer": "42"},
        {"instruction": "Summarise this.", "input": "Long text."},
        {"instruction": "Tell a joke.", "input": ""},
        {"text": "Raw text", "id": 7},
        {"prompt": "Prompt wins", "text": "not this"},
    ]
    path = write_lines(
        tmp_path / "eval.jsonl", *(json.dumps(r) for r in rows[:4]), "", *(json.dumps(r) for r in rows[4:])
    )
    assert read_eval_prompts(path) == [
        "Plain prompt",
        "Chat prompt",
        "Turn one\nTurn two",
        "A question?",
        "Summarise this.\nLong text.",
        "Tell a joke.",
        "Raw text",
        "Prompt wins",
    ]
    listed = tmp_path / "eval.json"
    listed.write_text(json.dumps(rows[:2], indent=2), encoding="utf-8")
    assert read_eval_prompts(str(listed)) == ["Plain prompt", "Chat prompt"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "ok"}', '{"prompt": "broken"'], r"eval\.jsonl:2: not valid JSON"),
        ([], r"eval\.jsonl: no evaluation prompts"),
        (
            ['{"prompt": "ok"}', '{"answer": "42"}'],
            r"eval\.jsonl:2: no prompt; give the row one of the keys prompt, "
            r"messages, question, instruction, text \(it has answer\)",
        ),
        (['["a list"]'], r"eval\.jsonl:1: expected a JSON object with a prompt, got list"),
        (['{"prompt": 3}'], r"eval\.jsonl:1: `prompt` must be a string or a message list, got int"),
        (
            ['{"messages": "hi"}'],
            r"eval\.jsonl:1: `messages` must be a list of \{role, content\} messages, got str",
        ),
        (
            ['{"messages": [{"role": "assistant", "content": "A"}]}'],
            r"eval\.jsonl:1: `messages` has no user message",
        ),
        (
            ['{"prompt": [{"role": "user"}]}'],
            r"eval\.jsonl:1: `prompt` must be a list of \{role, content\} messages",
        ),
        (['{"instruction": "Do.", "input": 5}'], r"eval\.jsonl:1: `input` must be a string, got int"),
        (['{"question": null}'], r"eval\.jsonl:1: `question` must be a string, got NoneType"),
    ],
)
def test_read_eval_prompts_names_the_line_at_fault(tmp_path, lines, message):
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(RecipeError, match=message):
        read_eval_prompts(str(path))


def test_read_eval_prompts_rejects_invalid_utf8_and_bad_json_lists(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(b'{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(
        RecipeError, match=r"eval\.jsonl:3: not valid UTF-8 \(byte 15\); save the file as UTF-8"
    ):
        read_eval_prompts(str(path))
    listed = tmp_path / "eval.json"
    listed.write_text('[\n  {"prompt": "one"},\n  {"prompt": }\n]', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"eval\.json:3: not valid JSON"):
        read_eval_prompts(str(listed))
    listed.write_text('[{"prompt": "one"}, {"query": "two"}]', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"eval\.json: item 1: no prompt"):
        read_eval_prompts(str(listed))
    with pytest.raises(RecipeError, match=r"missing\.jsonl: cannot read evaluation prompts"):
        read_eval_prompts(str(tmp_path / "missing.jsonl"))


def test_decontamination_ignores_punctuation_glued_to_words():
    question = "what is the name of the river that flows through the middle of the old town at noon"
    grams = EvalNgrams.from_texts([question + "?"], n=13)
    leaked = "Q: What is the name of the river, that flows through the middle of the old town at noon."
    assert grams.contaminated_mask([leaked, "an unrelated training answer"]) == [True, False]
