"""The dry run's data and model checks: first rows of each file type, Hub notes, model folders, speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import pytest

from alignment.check import check_folder, plan, probe_model_folders
from alignment.data.mixture import MixtureConfig, load_mixture, load_source
from alignment.data.probe import probe_mixture, read_head
from alignment.data.sources import DatasetSource, read_source
from alignment.errors import RecipeError
from alignment.recipe import parse_recipe

from .conftest import RECIPES, TINY_DPO, TINY_SFT
from .messages import assistant, user


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def conversation(i: int) -> dict:
    return {"messages": [user(f"What is {i} times 3?"), assistant(f"{3 * i}.")]}


def jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mixture(*sources: dict, **keys) -> MixtureConfig:
    return MixtureConfig.from_dict({"datasets": list(sources), **keys})


def probe(stage: str = "sft", *sources: dict, **keys) -> list[str]:
    return probe_mixture(mixture(*sources, **keys), stage)


ALPACA = [
    {"instruction": f"Name a multiple of {i}.", "input": "", "output": f"{2 * i}, for one."}
    for i in range(1, 41)
]


# --- Each file type, read to its first rows ------------------------------------------------------------


def write_alpaca(path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        return jsonl(path, ALPACA)
    if suffix == ".json":
        path.write_text(json.dumps(ALPACA, indent=1))
    elif suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text("instruction,input,output\n".replace(",", sep))
        with path.open("a") as f:
            for row in ALPACA:
                f.write(sep.join([row["instruction"], "", f'"{row["output"]}"']) + "\n")
    elif suffix == ".parquet":
        datasets.Dataset.from_list(ALPACA).to_parquet(str(path))
    elif suffix == ".arrow":
        import pyarrow as pa

        table = pa.Table.from_pylist(ALPACA)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=8)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow"])
def test_each_file_type_is_read_to_its_first_rows(tmp_path, suffix):
    path = write_alpaca(tmp_path / f"alpaca{suffix}")
    head = read_head(DatasetSource(id=str(path)), "train", rows=5)
    assert head.columns == ["instruction", "input", "output"]
    assert [row["instruction"] for row in head.rows] == [f"Name a multiple of {i}." for i in range(1, 6)]
    assert probe("sft", {"id": str(path)}) == []
    # a slice resolves as in the run, even across Arrow record batches of 8 rows
    head = read_head(DatasetSource(id=str(path)), "train[10:13]", rows=5)
    assert [row["instruction"] for row in head.rows] == [f"Name a multiple of {i}." for i in (11, 12, 13)]


def test_pretty_printed_json_objects_are_rows_as_the_run_reads_them(tmp_path):
    path = tmp_path / "export.json"
    path.write_text("".join(json.dumps(conversation(i), indent=2) + "\n" for i in range(3)))
    assert read_head(DatasetSource(id=str(path)), "train").rows == [conversation(i) for i in range(3)]
    assert read_source(DatasetSource(id=str(path)), "train").to_list() == [conversation(i) for i in range(3)]
    path.write_text(
        path.read_text()[:-3]
    )  # cut inside the last object: named by its first line, as the run does
    with pytest.raises(RecipeError, match=r"export\.json:25: not valid JSON") as probed:
        probe("sft", {"id": str(path)})
    with pytest.raises(RecipeError) as run:
        read_source(DatasetSource(id=str(path)), "train")
    assert str(run.value) == str(probed.value)


def test_text_and_saved_datasets_are_read_to_their_first_rows(tmp_path):
    (tmp_path / "notes.txt").write_text("First line.\n\nThird line, after a blank one.\n")
    head = read_head(DatasetSource(id=str(tmp_path / "notes.txt")), "train")
    assert head.rows == [{"text": "First line."}, {"text": ""}, {"text": "Third line, after a blank one."}]
    with pytest.raises(RecipeError, match=r"notes\.txt:2: empty text"):  # a blank line is a row of a .txt
        probe("cpt", {"id": str(tmp_path / "notes.txt")})

    rows = datasets.Dataset.from_list([conversation(i) for i in range(50)])
    datasets.DatasetDict({"train": rows, "test": rows.select(range(5))}).save_to_disk(str(tmp_path / "dict"))
    rows.save_to_disk(str(tmp_path / "split"))
    head = read_head(DatasetSource(id=str(tmp_path / "dict")), "test", rows=3)
    assert head.columns == ["messages"] and len(head.rows) == 3
    assert read_head(DatasetSource(id=str(tmp_path / "split")), "train[-2:]").rows == [
        conversation(48),
        conversation(49),
    ]
    assert probe("sft", {"id": str(tmp_path / "dict")}, test_split="test") == []
    assert probe("sft", {"id": str(tmp_path / "dict")}, {"id": str(tmp_path / "split")}) == []
    with pytest.raises(RecipeError, match=r"is a single saved split; it has no split 'test'"):
        probe("sft", {"id": str(tmp_path / "split")}, test_split="test")


def test_a_split_of_several_files_is_read_across_them_and_every_file_is_checked(tmp_path):
    folder = tmp_path / "shards"
    jsonl(folder / "train-00000.jsonl", [conversation(i) for i in range(3)])
    jsonl(folder / "train-00001.jsonl", [conversation(i) for i in range(3, 6)])
    head = read_head(DatasetSource(id=str(folder)), "train", rows=5)
    assert head.rows == [conversation(i) for i in range(5)]
    assert read_head(DatasetSource(id=str(folder)), "train[2:4]").rows == [conversation(2), conversation(3)]
    jsonl(folder / "train-00002.jsonl", [conversation(9)])
    (folder / "train-00002.jsonl").write_text('{"messages": [\n')  # a third shard, broken on its first line
    with pytest.raises(RecipeError, match=r"train-00002\.jsonl:1: not valid JSON"):
        probe("sft", {"id": str(folder)})


# --- Rows, as the run validates them -------------------------------------------------------------------


def test_a_csv_column_of_numbers_is_typed_as_pandas_types_it_for_the_run(tmp_path):
    """pandas reads `output` 2, 4 as integers, which no reader takes as text: the probe says what the run says."""
    path = tmp_path / "numbers.csv"
    path.write_text("instruction,input,output\nDouble it.,1,2\nDouble it.,2,4\n")
    with pytest.raises(RecipeError) as probed:
        probe("sft", {"id": str(path)})
    with pytest.raises(RecipeError) as run:
        load_mixture(mixture({"id": str(path)}), "sft")
    assert f"{path} row 1: malformed row; {path} row 2: malformed row" in str(probed.value)
    assert str(run.value) == str(probed.value).replace("of the first 2", "of 2")


def test_invalid_rows_are_named_as_the_run_names_them_and_drop_is_a_note(tmp_path):
    rows = [conversation(i) for i in range(6)]
    rows[3]["messages"].append(user("And times four?"))
    path = jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(RecipeError) as probed:
        probe("sft", {"id": str(path)})
    assert f"{path}:4: last turn not assistant" in str(probed.value)
    assert "1 invalid row(s) of the first 6" in str(probed.value)
    with pytest.raises(RecipeError, match=r"\[train\[2:6\]\] row 2: last turn not assistant"):
        probe("sft", {"id": str(path), "split": "train[2:6]"})
    assert probe("sft", {"id": str(path), "on_invalid": "drop"}) == [
        f"dataset {path} [train]: 1 of the first 6 rows invalid (last turn not assistant); "
        "`on_invalid: drop` drops and counts them"
    ]


def test_a_slice_is_validated_within_its_bounds_only(tmp_path):
    """`train[:10%]` of 50 rows is 5 rows: the invalid row 20 is not in it, for the probe as for the run."""
    rows = [conversation(i) for i in range(50)]
    rows[19]["messages"] = rows[19]["messages"][:1]
    path = jsonl(tmp_path / "chat.jsonl", rows)
    source = {"id": str(path), "split": "train[:10%]"}
    assert probe("sft", source) == []
    assert len(load_source(DatasetSource(**source), source["split"])) == 5
    with pytest.raises(RecipeError, match=r"chat\.jsonl:20: last turn not assistant"):
        probe("sft", {"id": str(path)})


def test_columns_tags_and_declared_formats_are_applied_to_the_first_rows(tmp_path):
    turns = [
        {"from": "customer", "value": "Is the shop open on Sunday?"},
        {"from": "agent", "value": "Yes, 10 to 4."},
    ]
    path = jsonl(tmp_path / "calls.jsonl", [{"dialogue": turns, "id": 1}])
    tags = {"user_tag": "customer", "assistant_tag": "agent"}
    assert probe("sft", {"id": str(path), "columns": {"conversations": "dialogue"}, "tags": tags}) == []
    with pytest.raises(RecipeError, match=r"calls\.jsonl:1: unknown role"):
        probe("sft", {"id": str(path), "columns": {"conversations": "dialogue"}})
    with pytest.raises(RecipeError, match=r"no column 'conversations' \(has dialogue, id\)"):
        probe("sft", {"id": str(path), "columns": ["conversations"]})
    with pytest.raises(RecipeError, match=r"format `prompt_completion` needs column `prompt`"):
        probe("sft", {"id": str(path), "format": "prompt_completion"})


def test_the_test_split_is_probed_first_as_the_run_reads_it_first(tmp_path):
    jsonl(tmp_path / "data" / "train.jsonl", [{"text": "not a conversation"}])
    (tmp_path / "data" / "test.jsonl").write_text(json.dumps(conversation(1)) + "\n" + '"just a string"\n')
    with pytest.raises(RecipeError, match=r"test\.jsonl:2: a row must be a JSON object, got str"):
        probe("sft", {"id": str(tmp_path / "data")}, test_split="test")


def test_decontaminate_files_must_exist(tmp_path):
    path = jsonl(tmp_path / "chat.jsonl", [conversation(1)])
    with pytest.raises(RecipeError, match=r"held-out\.jsonl: cannot read evaluation prompts \(No such file"):
        probe("sft", {"id": str(path)}, decontaminate=[str(tmp_path / "held-out.jsonl")])


# --- Hub datasets are not read -------------------------------------------------------------------------


def test_hub_sources_are_a_note_and_never_read(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a dry run read a Hub dataset")

    monkeypatch.setattr(datasets, "load_dataset", no_download)
    notes = probe("sft", {"id": "HuggingFaceH4/ultrachat_200k", "split": "train_sft"}, test_split="test_sft")
    assert notes == ["dataset HuggingFaceH4/ultrachat_200k: on the Hub, not read by a dry run"]
    assert probe("sft", {"id": "json", "data_files": "exports/*.jsonl"}) == [
        "dataset json: read through `data_files`, not by a dry run"
    ]


# --- Only the first rows -------------------------------------------------------------------------------


def test_only_the_first_rows_are_read(tmp_path):
    """10,000 lines, line 5000 broken: the probe passes in milliseconds; the run's full read finds it."""
    lines = [json.dumps(conversation(i)) for i in range(10_000)]
    lines[4999] = lines[4999][:-1]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    assert probe("sft", {"id": str(path)}) == []
    assert time.perf_counter() - started < 0.5
    with pytest.raises(RecipeError, match=r"big\.jsonl:5000: not valid JSON"):
        load_source(DatasetSource(id=str(path)), "train")


# --- Model folders and the plan ------------------------------------------------------------------------


def test_a_missing_model_folder_is_a_note_an_empty_one_an_error(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = parse_recipe("dpo", [str(TINY_DPO)])  # model: runs/tiny/sft, written by the SFT stage
    assert probe_model_folders(recipe) == [
        "model_name_or_path: runs/tiny/sft does not exist yet (an earlier stage writes it?)"
    ]
    assert plan(recipe)["notes"] == probe_model_folders(recipe)

    (workdir / "runs" / "tiny" / "sft").mkdir(parents=True)  # a run that died before saving anything
    with pytest.raises(
        RecipeError, match=r"^`model_name_or_path`: runs/tiny/sft has no config\.json or adapter_config\.json"
    ):
        plan(recipe)
    (workdir / "runs" / "tiny" / "sft" / "config.json").write_text("{}")
    with pytest.raises(
        RecipeError, match=r"^`model_name_or_path`: runs/tiny/sft has no tokenizer_config\.json or"
    ):
        plan(recipe)
    with_tokenizer = parse_recipe("dpo", [str(TINY_DPO), "--tokenizer_name_or_path", "data/tiny/model"])
    assert probe_model_folders(with_tokenizer) == []
    elsewhere = parse_recipe("dpo", [str(TINY_DPO), "--tokenizer_name_or_path", "data/tiny/dpo"])
    with pytest.raises(
        RecipeError, match=r"^`tokenizer_name_or_path`: data/tiny/dpo has no tokenizer_config"
    ):
        probe_model_folders(elsewhere)


def test_tiny_recipes_need_their_data_built_and_say_how(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/tiny here
    recipe = parse_recipe("sft", [str(TINY_SFT)])
    with pytest.raises(
        RecipeError,
        match=r"^dataset not found: data/tiny/sft \(a local path; `alignment tiny build` writes data/tiny\)$",
    ):
        plan(recipe)
    failed = check_folder(str(RECIPES))
    assert failed == sorted(str(p) for p in (RECIPES / "tiny").glob("*/*.yaml")), (
        "every tiny recipe, no other"
    )
    assert str(RECIPES / "tiny" / "sft" / "config.yaml") in failed


def test_every_shipped_recipe_dry_runs_where_the_tiny_data_is_built(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert check_folder(str(RECIPES)) == []
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{len(out) - 1} of {len(out) - 1} recipes dry-run"
    assert f"ok     {RECIPES}/tiny/sft/config.yaml  (sft, fp32, 0 notes)" in out
    assert f"ok     {RECIPES}/tiny/dpo/config.yaml  (dpo, fp32, 1 notes)" in out  # runs/tiny/sft: not yet
