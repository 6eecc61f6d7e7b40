"""Dataset mixtures: per-source weights and counts, eval sets kept apart, local sources, config errors.

Rows here are plain `text` rows, so the mixture is built for the `cpt` stage (its canonical row is `text`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import datasets
import pytest

from alignment.data.mixture import SOURCE_COLUMN, MixtureConfig, build_mixture, load_mixture
from alignment.errors import RecipeError


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """Arrow caches of the test files go under tmp_path, not the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def numbered(n: int, prefix: str = "r") -> list[dict]:
    return [{"text": f"{prefix}{i}", "n": i} for i in range(n)]


def mix(raw: dict) -> datasets.DatasetDict:
    return load_mixture(MixtureConfig.from_dict(raw), stage="cpt")


def texts(rows: datasets.Dataset) -> list[str]:
    return list(rows["text"])


# --- Weights and seeds ---------------------------------------------------------------------------------


def test_weight_half_keeps_exactly_half_of_the_rows_after_a_shuffle(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(100))
    out = mix({"datasets": [{"id": str(source), "weight": 0.5}]})
    kept = texts(out["train"])
    assert len(kept) == 50
    assert len(set(kept)) == 50
    assert set(kept) <= {f"r{i}" for i in range(100)}
    # A seeded shuffle, not the first half of the file (what TRL's mixture does).
    assert kept != [f"r{i}" for i in range(50)]
    assert set(out) == {"train"}


def test_two_weighted_sources_give_the_requested_counts(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", numbered(100, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", numbered(40, "b"))
    out = mix({"datasets": [{"id": str(a), "weight": 0.3}, {"id": str(b), "weight": 0.25}]})
    kept = texts(out["train"])
    assert sum(t.startswith("a") for t in kept) == 30
    assert sum(t.startswith("b") for t in kept) == 10
    assert len(kept) == 40


def test_full_weight_keeps_every_row_in_file_order(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(20))
    out = mix({"datasets": [{"id": str(source), "weight": 1}]})
    assert texts(out["train"]) == [f"r{i}" for i in range(20)]


def test_same_seed_gives_the_same_rows_in_the_same_order(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(100))
    raw = {"datasets": [{"id": str(source), "weight": 0.3}], "seed": 7}
    first, second = mix(raw)["train"], mix(raw)["train"]
    assert texts(first) == texts(second)
    assert first._fingerprint == second._fingerprint


def test_different_seed_gives_different_rows(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(100))
    one = mix({"datasets": [{"id": str(source), "weight": 0.3}], "seed": 1})["train"]
    two = mix({"datasets": [{"id": str(source), "weight": 0.3}], "seed": 2})["train"]
    assert len(one) == len(two) == 30
    assert set(texts(one)) != set(texts(two))


def test_each_source_logs_how_many_rows_it_kept(tmp_path, caplog):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(100))
    with caplog.at_level(logging.INFO, logger="alignment.data.mixture"):
        mix({"datasets": [{"id": str(source), "weight": 0.5}]})
    assert any(
        "kept 50 of 100 rows" in r.getMessage() and str(source) in r.getMessage() for r in caplog.records
    )


# --- Eval sets -----------------------------------------------------------------------------------------


def split_folder(root: Path, prefix: str, n_train: int, n_test: int) -> Path:
    write_jsonl(root / "train.jsonl", numbered(n_train, f"{prefix}-train-"))
    write_jsonl(root / "test.jsonl", numbered(n_test, f"{prefix}-test-"))
    return root


def test_test_split_is_each_sources_test_file_and_never_in_train(tmp_path):
    a = split_folder(tmp_path / "a", "a", 30, 5)
    b = split_folder(tmp_path / "b", "b", 20, 4)
    out = mix({"datasets": [{"id": str(a)}, {"id": str(b)}], "test_split": "test"})
    train, test = set(texts(out["train"])), texts(out["test"])
    assert sorted(test) == sorted([f"a-test-{i}" for i in range(5)] + [f"b-test-{i}" for i in range(4)])
    assert len(train) == 50
    assert not train & set(test)
    assert all("-train-" in t for t in train)


def test_a_training_split_emptied_by_curation_is_refused_saying_where_the_rows_went(tmp_path):
    rows = numbered(6, "same-")  # the eval file holds the very same rows: every training row is contaminated
    write_jsonl(tmp_path / "a" / "train.jsonl", rows)
    write_jsonl(tmp_path / "a" / "test.jsonl", rows)
    with pytest.raises(
        RecipeError, match=r"no train rows left of 6 read \(invalid 0, duplicates 0, decontaminated 6\)"
    ):
        mix({"datasets": [{"id": str(tmp_path / "a")}], "test_split": "test"})


def test_weight_subsamples_train_but_the_test_split_stays_whole(tmp_path):
    a = split_folder(tmp_path / "a", "a", 40, 6)
    out = mix({"datasets": [{"id": str(a), "weight": 0.25}], "test_split": "test"})
    assert len(out["train"]) == 10
    assert len(out["test"]) == 6


@pytest.mark.parametrize(("size", "expected_test"), [(10, 10), (0.25, 25)], ids=["count", "fraction"])
def test_split_size_carves_an_exact_eval_set_out_of_the_mixture(tmp_path, size, expected_test):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(100))
    out = mix({"datasets": [{"id": str(source)}], "test_split_size": size})
    train, test = texts(out["train"]), texts(out["test"])
    assert len(test) == expected_test
    assert len(train) + len(test) == 100
    assert set(train).isdisjoint(test)
    assert set(train) | set(test) == {f"r{i}" for i in range(100)}


def test_split_size_is_taken_after_the_weights(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(100))
    out = mix({"datasets": [{"id": str(source), "weight": 0.4}], "test_split_size": 0.25})
    assert (len(out["train"]), len(out["test"])) == (30, 10)


# --- Columns -------------------------------------------------------------------------------------------


def test_columns_selects_the_named_columns_in_train_and_test(tmp_path):
    root = tmp_path / "src"
    write_jsonl(root / "train.jsonl", [{"text": f"t{i}", "n": i, "extra": "x"} for i in range(5)])
    write_jsonl(root / "test.jsonl", [{"text": "e0", "n": 0, "extra": "y"}])
    out = mix({"datasets": [{"id": str(root), "columns": ["text"]}], "test_split": "test"})
    assert out["train"].column_names == ["text"]
    assert out["test"].column_names == ["text"]


def test_sources_with_different_columns_mix_once_columns_align_them(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "n": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "b", "score": 0.5}])
    out = mix({"datasets": [{"id": str(a), "columns": ["text"]}, {"id": str(b), "columns": ["text"]}]})
    assert texts(out["train"]) == ["a", "b"]


def test_missing_column_raises_naming_the_column(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(3))
    with pytest.raises(RecipeError, match="messages"):
        mix({"datasets": [{"id": str(source), "columns": ["text", "messages"]}]})


# --- MixtureConfig.from_dict ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"datasets": [{"id": "a.jsonl", "weigth": 0.5}]}, ["weigth", "did you mean `weight`"]),
        ({"datasets": [{"id": "a.jsonl"}], "test_splt": "test"}, ["test_splt", "did you mean `test_split`"]),
        ({"datasets": [{"id": "a.jsonl", "weight": 0}]}, ["weight", "0"]),
        ({"datasets": [{"id": "a.jsonl", "weight": -0.5}]}, ["weight", "-0.5"]),
        ({"datasets": [{"id": "a.jsonl", "weight": "0.5"}]}, ["weight", "'0.5'"]),
        ({"datasets": [{"id": "a.jsonl", "weight": True}]}, ["weight"]),
        ({"datasets": [{"id": "a.jsonl", "weight": 0.5, "samples": 3}]}, ["weight", "samples"]),
        ({"datasets": [{"id": "a.jsonl", "samples": 0}]}, ["samples", "0"]),
        ({"datasets": [{"id": "a.jsonl", "samples": 2.5}]}, ["samples", "2.5"]),
        ({"datasets": [{"id": "a.jsonl", "format": "sharegtp"}]}, ["format", "did you mean `sharegpt`"]),
        ({"datasets": [{"id": "a.jsonl", "on_invalid": "skip"}]}, ["on_invalid", "error, drop"]),
        ({"datasets": [{"id": "a.jsonl", "dedup": "fuzzy"}]}, ["dedup", "exact, minhash, none"]),
        ({"datasets": [{"id": "a.jsonl"}], "dedup": "yes"}, ["dataset_mixture.dedup"]),
        ({"datasets": [{"id": "a.jsonl", "tags": {"role": "from"}}]}, ["tags.role"]),
        ({"datasets": [{"id": "a.jsonl"}], "decontaminate_ngram": 0}, ["decontaminate_ngram"]),
        ({"datasets": []}, ["datasets"]),
        ({"seed": 0}, ["datasets"]),
        ({"datasets": [{"weight": 0.5}]}, ["datasets[0]", "`id`"]),
        ({"datasets": [{"id": "a.jsonl"}, {"split": "train"}]}, ["datasets[1]", "`id`"]),
        ({"datasets": [{"id": "a.jsonl"}], "test_split": "test", "test_split_size": 0.1}, ["test_split", "test_split_size"]),
        ({"datasets": [{"id": "a.jsonl"}], "test_split_size": 1.5}, ["test_split_size", "1.5"]),
        ({"datasets": [{"id": "a.jsonl"}], "test_split_size": 0}, ["test_split_size"]),
        ({"datasets": [{"id": "a.jsonl"}], "test_split_size": "10%"}, ["test_split_size"]),
        ({"datasets": [{"id": "a.jsonl", "columns": "messages"}]}, ["columns"]),
        ({"datasets": [{"id": "a.jsonl"}], "seed": "0"}, ["seed"]),
        (["a.jsonl"], ["dataset_mixture"]),
    ],
    ids=[
        "typo-weight", "typo-test_split", "weight-0", "weight-negative", "weight-string",
        "weight-bool", "weight-and-samples", "samples-0", "samples-float", "format-typo", "on_invalid-unknown",
        "dedup-unknown", "mixture-dedup", "tags-unknown", "ngram-0", "empty-datasets", "no-datasets", "missing-id", "missing-id-second", "both-test-keys",
        "test_split_size-1.5", "test_split_size-0", "test_split_size-string", "columns-not-list", "seed-string",
        "not-a-mapping",
    ],
)  # fmt: skip
def test_from_dict_rejects_malformed_mixtures_naming_the_key(raw, names):
    with pytest.raises(RecipeError) as err:
        MixtureConfig.from_dict(raw, origin="my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: ")
    for name in names:
        assert name in message
    assert "\n" not in message


def test_from_dict_accepts_integer_weight_and_count_and_keeps_the_values():
    config = MixtureConfig.from_dict(
        {"datasets": [{"id": "a.jsonl", "weight": 1, "split": "dev", "columns": ["text"]}], "seed": 3,
         "test_split_size": 1}
    )  # fmt: skip
    [source] = config.datasets
    assert (source.id, source.split, source.columns, source.weight) == ("a.jsonl", "dev", ["text"], 1.0)
    assert isinstance(source.weight, float)
    assert (config.seed, config.test_split_size, config.test_split) == (3, 1, None)


# --- Local sources -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing-folder", "missing.jsonl"])
def test_missing_local_path_raises_naming_the_path(tmp_path, name):
    missing = tmp_path / name
    with pytest.raises(RecipeError, match=name):
        mix({"datasets": [{"id": str(missing)}]})


def test_missing_relative_file_raises_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="data/train.jsonl"):
        mix({"datasets": [{"id": "data/train.jsonl"}]})


def test_missing_relative_folder_raises_recipe_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="data/tiny/sft"):
        mix({"datasets": [{"id": "data/tiny/sft"}]})


def test_jsonl_file_source_loads_every_row(tmp_path):
    source = write_jsonl(tmp_path / "rows.jsonl", numbered(12))
    out = mix({"datasets": [{"id": str(source)}]})
    assert out["train"].to_list() == [{"text": row["text"]} for row in numbered(12)]


def test_file_source_has_no_test_split(tmp_path):
    source = write_jsonl(tmp_path / "rows.jsonl", numbered(12))
    with pytest.raises(RecipeError, match="only a `train` split"):
        mix({"datasets": [{"id": str(source)}], "test_split": "test"})


def test_dataset_saved_to_disk_is_a_source(tmp_path):
    datasets.Dataset.from_list(numbered(10)).save_to_disk(str(tmp_path / "saved"))
    out = mix({"datasets": [{"id": str(tmp_path / "saved"), "weight": 0.5}]})
    assert len(out["train"]) == 5
    assert set(texts(out["train"])) <= {f"r{i}" for i in range(10)}


def test_dataset_dict_saved_to_disk_gives_its_splits(tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train_sft": datasets.Dataset.from_list(numbered(8, "train")),
            "test_sft": datasets.Dataset.from_list(numbered(3, "test")),
        }
    ).save_to_disk(str(saved))
    out = mix({"datasets": [{"id": str(saved), "split": "train_sft"}], "test_split": "test_sft"})
    assert texts(out["train"]) == [f"train{i}" for i in range(8)]
    assert texts(out["test"]) == [f"test{i}" for i in range(3)]


def test_single_saved_dataset_has_no_test_split(tmp_path):
    datasets.Dataset.from_list(numbered(10)).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(RecipeError, match="test"):
        mix({"datasets": [{"id": str(tmp_path / "saved")}], "test_split": "test"})


def test_saved_dataset_dict_without_the_split_raises_naming_it(tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(numbered(4))}).save_to_disk(str(saved))
    with pytest.raises(RecipeError, match="test"):
        mix({"datasets": [{"id": str(saved)}], "test_split": "test"})


# --- Counts: weights above 1, exact samples ------------------------------------------------------------


def build(raw: dict, stage: str = "cpt"):
    data, reports, notes = build_mixture(MixtureConfig.from_dict(raw), stage)
    return data, {(r.id, r.split): r for r in reports}, notes


def test_weight_above_one_repeats_rows_and_the_report_counts_the_repeats(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(10))
    data, reports, _ = build({"datasets": [{"id": str(source), "weight": 2.5}]})
    kept = texts(data["train"])
    assert len(kept) == 25
    assert Counter(Counter(kept).values()) == {3: 5, 2: 5}  # two whole copies and a seeded half
    report = reports[(str(source), "train")]
    assert (report.rows_read, report.rows_kept, report.repeated, report.subsampled) == (10, 25, 15, 0)


@pytest.mark.parametrize(("samples", "repeated", "subsampled"), [(7, 0, 3), (10, 0, 0), (23, 13, 0)])
def test_samples_is_an_exact_count(tmp_path, samples, repeated, subsampled):
    source = write_jsonl(tmp_path / "a.jsonl", numbered(10))
    data, reports, _ = build({"datasets": [{"id": str(source), "samples": samples}]})
    assert len(data["train"]) == samples
    report = reports[(str(source), "train")]
    assert (report.rows_kept, report.repeated, report.subsampled) == (samples, repeated, subsampled)


# --- Formats mixed, invalid rows, curation ----------------------------------------------------------------


def conversation(i: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"{2 * i}"}]


def test_sources_of_three_formats_mix_into_one_messages_column(tmp_path):
    a = write_jsonl(tmp_path / "openai.jsonl", [{"messages": conversation(i)} for i in range(3)])
    b = write_jsonl(
        tmp_path / "sharegpt.jsonl",
        [{"conversations": [{"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"{2 * i}"}]}
         for i in range(3, 5)],
    )  # fmt: skip
    c = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{2 * i}"} for i in range(5, 6)],
    )
    data, reports, _ = build({"datasets": [{"id": str(a)}, {"id": str(b)}, {"id": str(c)}]}, stage="sft")
    assert data["train"].column_names == ["messages", "tools", SOURCE_COLUMN]
    got = [[{"role": m["role"], "content": m["content"]} for m in row] for row in data["train"]["messages"]]
    assert got == [conversation(i) for i in range(6)]
    assert [reports[(str(p), "train")].format for p in (a, b, c)] == ["messages", "sharegpt", "alpaca"]


def invalid_rows() -> list[dict]:
    rows = [{"messages": conversation(i)} for i in range(10)]
    rows[2]["messages"] = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"},
                           {"role": "assistant", "content": "x"}]  # fmt: skip
    rows[5]["messages"] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    rows[7]["messages"] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]
    rows[9]["messages"] = [{"role": "user", "content": "no answer"}]
    return rows


def test_invalid_rows_stop_the_run_naming_file_row_reason_and_count(tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", invalid_rows())
    with pytest.raises(RecipeError) as err:
        build({"datasets": [{"id": str(source)}]}, stage="sft")
    message = str(err.value)
    assert "4 invalid row(s) of 10" in message
    assert f"{source}:3: consecutive user turns" in message
    assert f"{source}:6: empty answer" in message and f"{source}:8: empty answer" in message
    assert ":10:" not in message  # the first three offenders only
    assert "on_invalid: drop" in message and "\n" not in message


def test_on_invalid_drop_drops_and_counts_per_reason(tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", invalid_rows())
    data, reports, _ = build({"datasets": [{"id": str(source), "on_invalid": "drop"}]}, stage="sft")
    assert len(data["train"]) == 6
    assert reports[(str(source), "train")].invalid == {
        "consecutive user turns": 1, "empty answer": 2, "last turn not assistant": 1,
    }  # fmt: skip


def test_exact_duplicates_are_counted_per_source_first_occurrence_wins(tmp_path):
    a = write_jsonl(
        tmp_path / "a.jsonl", [{"text": "The cat sat."}, {"text": "the  CAT sat. "}, {"text": "A dog."}]
    )
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "A  dog."}, {"text": "A bird."}])
    data, reports, _ = build({"datasets": [{"id": str(a)}, {"id": str(b)}]})
    assert texts(data["train"]) == ["The cat sat.", "A dog.", "A bird."]
    assert reports[(str(a), "train")].duplicates == 1
    assert reports[(str(b), "train")].duplicates == 1


def test_dedup_none_on_one_source_keeps_its_duplicates(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "same"}, {"text": "same"}])
    data, reports, _ = build({"datasets": [{"id": str(a), "dedup": "none"}]})
    assert texts(data["train"]) == ["same", "same"]
    assert reports[(str(a), "train")].duplicates == 0


LONG_QUESTION = "in which year did the first person walk on the surface of the moon and who was it exactly"


def test_training_rows_sharing_13_words_with_an_eval_prompt_are_dropped_and_counted(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", [
        {"messages": [{"role": "user", "content": "Quiz: " + LONG_QUESTION + "?"}, {"role": "assistant", "content": "1969"}]},
        {"messages": conversation(1)},
    ])  # fmt: skip
    write_jsonl(tmp_path / "d" / "test.jsonl", [
        {"messages": [{"role": "user", "content": LONG_QUESTION.capitalize() + "?"}, {"role": "assistant", "content": "x"}]},
    ])  # fmt: skip
    data, reports, _ = build({"datasets": [{"id": str(tmp_path / "d")}], "test_split": "test"}, stage="sft")
    assert len(data["train"]) == 1 and len(data["test"]) == 1
    assert reports[(str(tmp_path / "d"), "train")].decontaminated == 1


def test_decontaminate_files_of_eval_prompts_are_checked_too(tmp_path):
    source = write_jsonl(
        tmp_path / "a.jsonl", [{"text": "Notes: " + LONG_QUESTION}, {"text": "unrelated text"}]
    )
    prompts = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": LONG_QUESTION}])
    data, reports, _ = build({"datasets": [{"id": str(source)}], "decontaminate": [str(prompts)]})
    assert texts(data["train"]) == ["unrelated text"]
    assert reports[(str(source), "train")].decontaminated == 1
    data, reports, _ = build(
        {"datasets": [{"id": str(source)}], "decontaminate": [str(prompts)], "decontaminate_ngram": 30}
    )
    assert len(data["train"]) == 2  # the question has fewer than 30 words: nothing to match


def test_column_mapping_renames_a_file_column_for_its_reader(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"dialog": conversation(1), "id": 1}])
    out = load_mixture(
        MixtureConfig.from_dict({"datasets": [{"id": str(source), "columns": {"messages": "dialog"}}]}), "sft"
    )
    assert [m["content"] for m in out["train"][0]["messages"]] == ["What is 1 + 1?", "2"]


def test_sources_with_and_without_tool_calls_mix_and_read_back_exactly(tmp_path):
    call = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    with_tools = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 3}'},
        {"role": "assistant", "content": "3 degrees."},
    ]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"messages": conversation(i)} for i in range(3)])
    tools = write_jsonl(tmp_path / "tools.jsonl", [{"messages": with_tools, "tools": [{"name": "weather"}]}])
    out = load_mixture(MixtureConfig.from_dict({"datasets": [{"id": str(plain)}, {"id": str(tools)}]}), "sft")
    rows = out["train"].to_list()
    assert [r["messages"] for r in rows] == [conversation(i) for i in range(3)] + [with_tools]
    assert "tool_calls" not in rows[0]["messages"][1]  # no `tool_calls: None` for templates to trip on
    assert json.loads(rows[3]["tools"]) == [{"name": "weather"}]


def test_llama_factory_description_maps_columns_and_roles(tmp_path):
    rows = [
        {
            "dialog": [
                {"speaker": "customer", "text": "My order is late."},
                {"speaker": "agent", "text": "Sorry!"},
            ]
        }
    ]
    source = write_jsonl(tmp_path / "support.jsonl", rows)
    raw = {"datasets": [{
        "id": str(source), "columns": {"messages": "dialog"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent"},
    }]}  # fmt: skip
    out = load_mixture(MixtureConfig.from_dict(raw), "sft")
    assert out["train"][0]["messages"] == [
        {"role": "user", "content": "My order is late."}, {"role": "assistant", "content": "Sorry!"},
    ]  # fmt: skip


def test_eval_prompts_shorter_than_n_words_are_matched_as_whole_prompts(tmp_path):
    rows = [
        chat_row("reverse abcd", "dcba"),
        chat_row("Reverse  ABCD", "d-c-b-a"),
        chat_row("reverse abcde", "edcba"),
    ]
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    prompts = write_jsonl(
        tmp_path / "eval.jsonl", [{"prompt": [{"role": "user", "content": "reverse abcd"}]}]
    )
    data, reports, notes = build(
        {"datasets": [{"id": str(source)}], "decontaminate": [str(prompts)]}, stage="sft"
    )
    assert [r["messages"][0]["content"] for r in data["train"]] == ["reverse abcde"]
    assert reports[(str(source), "train")].decontaminated == 2
    assert notes == ["decontamination: 1 of 1 eval prompts are shorter than 13 words: matched only against "
                     "training prompts equal to them"]  # fmt: skip


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_columns_no_reader_uses_are_listed_in_the_report(tmp_path):
    rows = [{"id": "a1", "prompt": "Name a prime.", "chosen": "7", "rejected": "9", "score_chosen": 9.0}]
    source = write_jsonl(tmp_path / "pairs.jsonl", rows)
    _, reports, _ = build({"datasets": [{"id": str(source)}]}, stage="dpo")
    assert reports[(str(source), "train")].unused_columns == ["id", "score_chosen"]


def test_a_training_row_equal_to_an_eval_row_is_never_trained_on(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"messages": conversation(i)} for i in range(4)])
    write_jsonl(tmp_path / "d" / "test.jsonl", [{"messages": conversation(2)}])
    data, reports, _ = build({"datasets": [{"id": str(tmp_path / "d")}], "test_split": "test"}, stage="sft")
    assert [row["messages"] for row in data["train"]] == [conversation(i) for i in (0, 1, 3)]
    assert data["test"]["messages"] == [conversation(2)]
    assert reports[(str(tmp_path / "d"), "train")].decontaminated == 1


def test_a_mixture_of_formats_is_deterministic_by_fingerprint(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"messages": conversation(i)} for i in range(40)])
    b = write_jsonl(
        tmp_path / "b.jsonl", [{"instruction": f"Echo {i}", "input": "", "output": f"{i}"} for i in range(30)]
    )
    raw = {"datasets": [{"id": str(a), "weight": 0.5}, {"id": str(b), "samples": 45}], "seed": 3}
    first, _, _ = build(raw, stage="sft")
    second, _, _ = build(raw, stage="sft")
    assert first["train"]._fingerprint == second["train"]._fingerprint
    assert first["train"].to_list() == second["train"].to_list()
    assert len(first["train"]) == 20 + 45


def test_minhash_dedup_drops_a_near_duplicate_that_exact_dedup_keeps(tmp_path):
    words = [f"word{i}" for i in range(40)]
    near = [*words[:-1], "changed"]
    rows = [{"text": " ".join(words)}, {"text": " ".join(near)}, {"text": "something else entirely"}]
    source = write_jsonl(tmp_path / "a.jsonl", rows)
    exact, reports, _ = build({"datasets": [{"id": str(source)}]})
    assert len(exact["train"]) == 3
    near_dedup, reports, _ = build({"datasets": [{"id": str(source), "dedup": "minhash"}]})
    assert texts(near_dedup["train"]) == [rows[0]["text"], rows[2]["text"]]
    assert reports[(str(source), "train")].duplicates == 1


def test_invalid_rows_of_a_sliced_split_are_named_by_row_of_the_slice(tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", invalid_rows())
    with pytest.raises(RecipeError, match=r"chat\.jsonl \[train\[2:6\]\] row 1: consecutive user turns"):
        build({"datasets": [{"id": str(source), "split": "train[2:6]"}]}, stage="sft")


def test_a_tsv_label_column_with_a_blank_field_keeps_its_integer_labels(tmp_path):
    """pandas reads labels 1, 0, (blank) as 1.0, 0.0, NaN: the good rows keep integer labels, the blank one
    is a missing label (not three malformed rows)."""
    source = tmp_path / "spam.tsv"
    source.write_text("text\tlabel\nwin a prize now\t1\nsee you at noon\t0\nno label here\t\ncall me\t0\n")
    data, reports, _ = build({"datasets": [{"id": str(source), "on_invalid": "drop"}]}, stage="classify")
    assert data["train"].features["label"].dtype == "int64"
    assert sorted(zip(data["train"]["text"], data["train"]["label"], strict=True)) == [
        ("call me", 0), ("see you at noon", 0), ("win a prize now", 1)]  # fmt: skip
    assert reports[(str(source), "train")].invalid == {"missing label": 1}
    # Refused, it is named as the file's third record (row 3, on line 4 after the header), not as `spam.tsv:3`.
    with pytest.raises(RecipeError, match=r"spam\.tsv row 3: missing label"):
        build({"datasets": [{"id": str(source)}]}, stage="classify")


def test_converted_rows_are_recomputed_when_the_packages_code_changes(tmp_path, monkeypatch):
    """datasets caches a map by the function it is given, not the readers that one calls: a fixed reader
    would leave the cached conversion stale. The data layer's maps add a hash of our code (fresh_map)."""
    from alignment.data import cache, formats

    source = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"Echo {i}", "input": "", "output": f"{i}"}
                                               for i in range(8)])  # fmt: skip
    before, _, _ = build({"datasets": [{"id": str(source)}]}, stage="sft")
    assert list((tmp_path / "hf-datasets-cache").rglob("cache-*.arrow"))  # the conversion was cached
    original = formats._READERS["alpaca"]

    def upgraded(row, stage, context):
        converted = original(row, stage, context)
        converted["messages"][-1]["content"] += "!"
        return converted

    monkeypatch.setitem(formats._READERS, "alpaca", upgraded)
    same_code, _, _ = build({"datasets": [{"id": str(source)}]}, stage="sft")
    assert same_code["train"].to_list() == before["train"].to_list()  # the cache hit: datasets cannot tell
    monkeypatch.setattr(cache, "code_hash", lambda: "an upgraded package")
    after, _, _ = build({"datasets": [{"id": str(source)}]}, stage="sft")
    assert all(row["messages"][-1]["content"].endswith("!") for row in after["train"])
