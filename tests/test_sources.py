"""Reading sources: every file type, globs, folders, split slicing, and one-line errors naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from alignment.data.sources import DatasetSource, is_local, read_source
from alignment.errors import RecipeError


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read(path: Path | str, split: str = "train", **kwargs) -> datasets.Dataset:
    return read_source(DatasetSource(id=str(path), **kwargs), split)


ROWS = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(10)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_each_file_type_reads_its_rows_and_columns(tmp_path, suffix):
    path = tmp_path / f"alpaca{suffix}"
    if suffix == ".jsonl":
        jsonl(path, ROWS)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    else:
        frame = datasets.Dataset.from_list(ROWS)
        if suffix == ".parquet":
            frame.to_parquet(str(path))
        else:
            frame.to_csv(str(path), index=False, sep="\t" if suffix == ".tsv" else ",")
    rows = read(path)
    assert len(rows) == 10
    assert rows[3]["instruction"] == "Say 3"
    assert set(rows.column_names) == {"instruction", "input", "output"}


def test_txt_is_one_row_per_line_in_a_text_column(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The first line.\nThe second line, with  two spaces.\n")
    rows = read(path)
    assert rows["text"] == ["The first line.", "The second line, with  two spaces."]


def test_glob_reads_every_matching_file_in_order(tmp_path):
    jsonl(tmp_path / "shards" / "part-0.jsonl", ROWS[:4])
    jsonl(tmp_path / "shards" / "part-1.jsonl", ROWS[4:])
    rows = read(tmp_path / "shards" / "*.jsonl")
    assert rows["output"] == [str(i) for i in range(10)]


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    with pytest.raises(RecipeError, match=r"nothing\*\.jsonl: the pattern matches no file"):
        read(tmp_path / "nothing*.jsonl")


def test_folder_of_split_files_reads_the_named_split(tmp_path):
    jsonl(tmp_path / "d" / "train.jsonl", ROWS[:7])
    jsonl(tmp_path / "d" / "test.jsonl", ROWS[7:])
    assert len(read(tmp_path / "d", "train")) == 7
    assert len(read(tmp_path / "d", "test")) == 3
    with pytest.raises(RecipeError, match=r"no split 'validation' \(files: test, train\)"):
        read(tmp_path / "d", "validation")


def test_saved_dataset_folder_reads_and_slices(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    assert read(tmp_path / "saved", "train[2:5]")["output"] == ["2", "3", "4"]


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("train[:30%]", ["0", "1", "2"]),
        ("train[8:]", ["8", "9"]),
        ("train[-2:]", ["8", "9"]),
        ("train", None),
    ],
)
def test_split_slicing_works_on_local_files(tmp_path, split, expected):
    rows = read(jsonl(tmp_path / "a.jsonl", ROWS), split)
    assert rows["output"] == (expected or [str(i) for i in range(10)])


def test_a_file_has_only_a_train_split(tmp_path):
    with pytest.raises(RecipeError, match=r"only a `train` split, not 'test'"):
        read(jsonl(tmp_path / "a.jsonl", ROWS), "test")


# --- One-line errors naming the file and the line --------------------------------------------------------


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + '{"instruction": "cut off\n')
    with pytest.raises(RecipeError) as err:
        read(path)
    assert str(err.value).startswith(f"{path}:3: not valid JSON")
    assert "\n" not in str(err.value)


def test_a_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(RecipeError, match=rf"{path}:2: a row must be a JSON object, got list"):
        read(path)


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(RecipeError, match=rf"{path}: the file is empty"):
        read(path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        (json.dumps(ROWS[0]) + "\n").encode()
        + '{"instruction": "caf\u00e9", "output": "x"}\n'.encode("latin-1")
    )
    with pytest.raises(RecipeError, match=rf"{path}:2: not valid UTF-8"):
        read(path)


def test_invalid_utf8_in_a_text_file_is_named(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"fine\nna\xefve\n")
    with pytest.raises(RecipeError, match=rf"{path}:2: not valid UTF-8"):
        read(path)


def test_unsupported_file_type_lists_the_supported_ones(tmp_path):
    path = tmp_path / "rows.xml"
    path.write_text("<rows/>")
    with pytest.raises(RecipeError, match=r"unsupported type \.xml; use one of .json, .jsonl"):
        read(path)


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"dataset not found: .*nope\.jsonl"):
        read(tmp_path / "nope.jsonl")


def test_hub_ids_and_local_paths_are_told_apart():
    assert not is_local("HuggingFaceH4/ultrachat_200k")
    assert not is_local("imdb")
    assert is_local("data/tiny/sft")
    assert is_local("data/*.jsonl")
    assert is_local("rows.jsonl")
