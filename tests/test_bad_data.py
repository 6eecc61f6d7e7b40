"""Every malformed data file of tests/bad_data/ is refused in one line naming the file (and line or row).

Each case of tests/bad_data/cases.yaml replaces the data of recipes/tiny/<stage>/config.yaml and runs
through the stage script's own `main`, in-process, the model loader replaced by one that fails the
test: the run must exit 2 with one `error:` line holding the case's `expect` text before any model
loads. The dry run must refuse it with the same line (but for the row count) when the index says
`caught`, and pass when the fault lies beyond the first rows it reads (`passes: why`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import TINY_DPO, TINY_SFT
from .test_bad_recipes import refusal, script_main

BAD_DATA = Path(__file__).parent / "bad_data"
CASES = yaml.safe_load((BAD_DATA / "cases.yaml").read_text())
RECIPES = {"sft": TINY_SFT, "dpo": TINY_DPO}


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def makers() -> dict:
    spec = importlib.util.spec_from_file_location("bad_data_generate", BAD_DATA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MAKERS


def test_the_corpus_is_large_and_each_case_says_what_is_wrong():
    assert len(CASES) >= 25
    assert len({case["name"] for case in CASES}) == len(CASES)
    for case in CASES:
        assert set(case) <= {
            "name",
            "stage",
            "files",
            "make",
            "source",
            "mixture",
            "why",
            "expect",
            "dry_run",
        }
        assert case["stage"] in RECIPES and case["why"] and case["expect"], case["name"]
        assert case["dry_run"] == "caught" or case["dry_run"].startswith("passes: "), case["name"]
        made = "make" in case
        assert made or all((BAD_DATA / f).exists() for f in case["files"]), case["name"]
        assert not made or case["make"] in makers(), case["name"]
        source_id = (case.get("source") or {}).get("id", case["files"][0])
        assert Path(case["files"][0]).name in case["expect"] or source_id in case["expect"], case["name"]
    passes = [case["name"] for case in CASES if case["dry_run"] != "caught"]
    assert 3 <= len(passes) <= 6  # a few faults lie beyond the first rows; the dry run catches the rest


def prepare(case: dict, workdir: Path) -> list[str]:
    """Write the case's files under workdir/bad_data; the overrides pointing the tiny recipe at them."""
    folder = workdir / "bad_data"
    folder.mkdir(exist_ok=True)
    if "make" in case:
        makers()[case["make"]](folder)
    else:
        for name in case["files"]:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(BAD_DATA / name, folder / name)
    assert all((folder / name).exists() for name in case["files"]), case["name"]
    source = {"id": case["files"][0], **(case.get("source") or {})}
    source["id"] = f"bad_data/{source['id']}"
    mixture = {"datasets": [source], **(case.get("mixture") or {})}
    # the DPO recipe starts from the SFT run's folder; these runs never get that far
    return ["--dataset_mixture", json.dumps(mixture), "--model_name_or_path", "data/tiny/model",
            "--output_dir", "runs/bad"]  # fmt: skip


@pytest.fixture
def no_model(monkeypatch):
    import alignment.model

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was refused")

    monkeypatch.setattr(alignment.model, "load_model", fail)


def same_fault(line: str) -> str:
    """An error line with its row count left out: the run counts the split's rows, the dry run its first rows."""
    return re.sub(r"invalid row\(s\) of (the first )?\d+", "invalid row(s) of N", line)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_bad_data_is_refused_by_the_run_and_by_the_dry_run_in_the_same_line(
    case, workdir, monkeypatch, capsys, no_model
):
    monkeypatch.chdir(workdir)
    argv = [str(RECIPES[case["stage"]]), *prepare(case, workdir)]
    main = script_main(case["stage"])
    code, errors = refusal(main, argv, capsys)
    assert code == 2
    assert len(errors) == 1, errors
    assert case["expect"] in errors[0], errors[0]

    dry_code, dry_errors = refusal(main, [*argv, "--dry_run"], capsys)
    if case["dry_run"] != "caught":
        assert (dry_code, dry_errors) == (0, []), dry_errors
        return
    assert dry_code == 2
    assert len(dry_errors) == 1, dry_errors
    assert same_fault(dry_errors[0]) == same_fault(errors[0])  # the `expect` text, and all the rest
