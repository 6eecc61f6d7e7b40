"""run_manifest.json and `alignment rerun`: no credential recorded, code and data identified, a rerun repeats."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignment import manifest as manifest_module
from alignment.manifest import (
    MANIFEST,
    PACKAGES,
    data_record,
    file_digest,
    git_of,
    git_state,
    package_versions,
    record_start,
)
from alignment.recipe import drop_options
from alignment.secrets import REDACTED

from .conftest import QUICK, TINY_SFT, run_script

HUB_TOKEN = "hf_PLANTEDmanifestTOKEN0123456789"
CLI_TOKEN = "hf_PLANTEDcommandLINEtoken987654"
WANDB_KEY = "wandbPLANTEDmanifestKEY5555555555"


@pytest.fixture
def clean_env(monkeypatch):
    """Variables a recipe's `env:` block or `hub_token` sets are restored after the test."""
    for name in ("HF_TOKEN", "WANDB_API_KEY", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so monkeypatch restores the original
        monkeypatch.delenv(name)
    return monkeypatch


def git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit holding a recipe."""
    root = tmp_path / "repo"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "r.yaml").write_text("learning_rate: 1.0e-4\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "recipe")
    return root


# --- What the manifest records ----------------------------------------------------------------------


def test_no_planted_credential_reaches_the_manifest(workdir, clean_env):
    """hub_token (file and command line) and an env: key are left out, and argv is redacted."""
    from alignment.recipe import parse_recipe

    clean_env.chdir(workdir)
    recipe_file = workdir / "secret.yaml"
    mapping = yaml.safe_load(TINY_SFT.read_text())
    mapping.update(hub_token=HUB_TOKEN, env={"WANDB_API_KEY": WANDB_KEY, "TOKENIZERS_PARALLELISM": "false"})
    recipe_file.write_text(yaml.safe_dump(mapping))
    argv = ["secret.yaml", "--hub_token", CLI_TOKEN, "--output_dir", "runs/m", "--max_steps", "3"]
    clean_env.setattr(sys, "argv", ["scripts/run_sft.py", *argv])
    recipe = parse_recipe("sft", argv)

    path = record_start(recipe)

    text = path.read_text()
    assert path.resolve() == workdir / "runs" / "m" / MANIFEST
    assert HUB_TOKEN not in text and CLI_TOKEN not in text and WANDB_KEY not in text
    recorded = json.loads(text)
    assert "hub_token" not in recorded["recipe"] and recorded["recipe"]["learning_rate"] == 1.5e-3
    assert recorded["recipe"]["env"] == {"TOKENIZERS_PARALLELISM": "false"}
    assert recorded["overrides"] == ["--output_dir", "runs/m", "--max_steps", "3"]
    assert recorded["credentials_removed"] == ["hub_token", "env.WANDB_API_KEY", "--hub_token"]
    assert recorded["command"]["argv"] == ["scripts/run_sft.py", "secret.yaml", "--hub_token", REDACTED,
                                           "--output_dir", "runs/m", "--max_steps", "3"]  # fmt: skip
    assert recorded["resolved"]["max_steps"] == 3 and recorded["resolved"]["output_dir"] == "runs/m"
    assert recorded["seeds"] == {"seed": 42, "data_seed": None, "mixture_seed": 0}
    assert recorded["hardware"]["world_size"] == 1 and recorded["hardware"]["cpu_count"] >= 1
    assert recorded["stage"] == "sft" and recorded["data"] is None and recorded["finished"] is None


def test_hub_token_is_dropped_from_overrides_in_both_spellings():
    assert drop_options(["--hub_token", "x" * 12, "--seed", "1"], ("hub_token",)) == (
        ["--seed", "1"],
        ["--hub_token"],
    )
    assert drop_options(["--hub_token=" + "x" * 12, "--seed", "1"], ("hub_token",)) == (
        ["--seed", "1"],
        ["--hub_token"],
    )
    assert drop_options(["--seed", "1"], ("hub_token",)) == (["--seed", "1"], [])


def test_git_commit_and_dirty_flag_of_the_recipe_repository(repo, tmp_path, monkeypatch):
    commit = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "recipes") == {"root": str(repo.resolve()), "commit": commit, "dirty": False}
    (repo / "recipes" / "r.yaml").write_text("learning_rate: 2.0e-4\n")
    assert git_state(repo)["dirty"] is True

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "r.yaml").write_text("seed: 1\n")
    monkeypatch.chdir(outside)
    assert git_state(outside) is None
    assert git_of(str(outside / "r.yaml")) is None  # neither the recipe's folder nor the cwd is a repo
    assert git_of(str(repo / "recipes" / "r.yaml"))["commit"] == commit
    monkeypatch.chdir(repo)
    assert git_of(str(outside / "r.yaml"))["commit"] == commit  # the recipe is not in one: the cwd's

    monkeypatch.setenv("PATH", str(outside))  # no git program at all
    assert git_state(repo) is None


def test_package_versions_are_the_installed_ones():
    import torch
    import transformers

    versions = package_versions()
    assert set(versions) == {"python", *PACKAGES}
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__
    assert versions["alignment"] == importlib.metadata.version("alignment")
    assert package_versions(("no-such-package-here",))["no-such-package-here"] is None


def test_data_record_counts_rows_and_hashes_every_local_file(tmp_path, monkeypatch):
    from datasets import Dataset

    from alignment.data.mixture import MixtureConfig
    from alignment.data.report import DataReport, SourceReport

    monkeypatch.chdir(tmp_path)
    Path("chats").mkdir()
    Path("chats/train.jsonl").write_text('{"messages": [{"role": "user", "content": "Reverse abc"}]}\n')
    Path("chats/test.jsonl").write_text('{"messages": [{"role": "user", "content": "Upper xyz"}]}\n')
    Path("extra").mkdir()
    Path("extra/part-1.jsonl").write_text('{"prompt": "Sort: c a b", "completion": "a b c"}\n' * 40)
    Path("eval.jsonl").write_text('{"prompt": "Count the letters of hello"}\n')
    mixture = MixtureConfig.from_dict(
        {
            "datasets": [{"id": "chats"}, {"id": "extra/*.jsonl"}, {"id": "org/hub-dataset"}],
            "decontaminate": ["eval.jsonl"],
        }
    )
    train = Dataset.from_dict({"messages": [[{"role": "user", "content": "Reverse abc"}]] * 41})
    report = DataReport(
        stage="sft", sources=[SourceReport("chats", "train", "messages", rows_read=1, rows_kept=1)]
    )
    monkeypatch.setattr(manifest_module, "HASH_CHUNK", 7)  # many chunks: the same digest as one read

    record = data_record({"train": train}, report, mixture)

    assert record["splits"] == {"train": {"rows": 41, "fingerprint": train._fingerprint}}
    files = ["chats/test.jsonl", "chats/train.jsonl", "eval.jsonl", "extra/part-1.jsonl"]
    assert sorted(record["files"]) == files  # the Hub id has no local file
    for name in files:
        content = Path(name).read_bytes()
        assert record["files"][name] == {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    assert record["sources"] == [
        {
            "id": "chats",
            "split": "train",
            "role": "train",
            "rows_read": 1,
            "rows_kept": 1,
            "rows_trained": None,
        }
    ]
    assert file_digest(Path("eval.jsonl"))["bytes"] == len(Path("eval.jsonl").read_bytes())


def test_a_finished_run_keeps_its_manifest_when_rerun_into_its_folder(workdir, monkeypatch):
    """`alignment rerun` without `--output_dir` trains nothing, and the record of the run stays as it was."""
    from alignment.recipe import parse_recipe
    from alignment.reruns import begin_run, mark_finished

    monkeypatch.chdir(workdir)
    recipe = parse_recipe("sft", [str(TINY_SFT), "--output_dir", "runs/done"])
    assert begin_run(recipe).finished is False
    mark_finished(workdir / "runs" / "done")
    written = (workdir / "runs" / "done" / MANIFEST).read_bytes()
    assert begin_run(recipe).finished is True
    assert (workdir / "runs" / "done" / MANIFEST).read_bytes() == written


# --- alignment rerun ------------------------------------------------------------------------------------


def run_cli(*args: str) -> int:
    from alignment.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such manifest"),
        ("{not json", "not a readable JSON manifest"),
        ('{"recipe": {}}', "not a run manifest (needs `stage` and a `recipe` mapping)"),
        ('{"stage": "sft"}', "not a run manifest (needs `stage` and a `recipe` mapping)"),
        ('{"stage": "ppo", "recipe": {}}', "stage 'ppo' has no script"),
    ],
    ids=["missing", "not-json", "no-stage", "no-recipe", "unknown-stage"],
)
def test_rerun_refuses_a_bad_manifest_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / MANIFEST
    if content is not None:
        path.write_text(content)
    assert run_cli("rerun", str(path)) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and message in line


def test_rerun_runs_the_recorded_recipe_with_recorded_then_new_overrides(tmp_path, repo, monkeypatch, caplog):
    """The stage script gets the recorded mapping, the overrides in order, the recorded world size;
    each code difference and the credentials taken from here are one warning line each."""
    import alignment.launch

    recorded = {
        "stage": "sft",
        "recipe_path": "recipes/r.yaml",
        "recipe": {"learning_rate": 1e-4, "eval_strategy": "no", "env": {"TOKENIZERS_PARALLELISM": "false"}},
        "overrides": ["--max_steps", "6", "--output_dir", "runs/first"],
        "credentials_removed": ["hub_token"],
        "packages": {"torch": "0.0.1", "trl": importlib.metadata.version("trl")},
        "git": {"root": str(repo), "commit": "0" * 40, "dirty": False},
        "hardware": {"world_size": 2},
        "command": {"cwd": str(tmp_path / "elsewhere"), "env": {"WORLD_SIZE": "2"}},
    }
    path = tmp_path / "runs" / "first" / MANIFEST
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(recorded))
    calls = []

    def fake_run_stage(stage, recipe, overrides, **launch):
        calls.append((stage, yaml.safe_load(Path(recipe).read_text()), overrides, launch, Path(recipe)))
        return subprocess.CompletedProcess([], 0)

    monkeypatch.setattr(alignment.launch, "run_stage", fake_run_stage)
    monkeypatch.chdir(tmp_path)

    assert run_cli("rerun", str(path), "--output_dir", "runs/again") == 0

    [(stage, mapping, overrides, launch, recipe_file)] = calls
    assert stage == "sft" and mapping == recorded["recipe"]
    assert overrides == ["--max_steps", "6", "--output_dir", "runs/first", "--output_dir", "runs/again"]
    assert launch == {"accelerate_config": None, "num_processes": 2}
    assert (
        recipe_file.name == "rerun_recipe.yaml" and not recipe_file.parent.exists()
    )  # a temp folder, removed
    assert sorted(path.parent.iterdir()) == [path]  # the recorded run's folder is left as it was
    warnings = [r.getMessage() for r in caplog.records if r.name == "alignment.manifest"]
    commit = git(repo, "rev-parse", "HEAD")
    assert warnings == [
        "rerun: credentials not recorded (hub_token) are taken from this environment at rerun time "
        "(hub_token: HF_TOKEN)",
        f"rerun: git commit differs: recorded {'0' * 40}, now {commit} of {repo.resolve()}",
        f"rerun: torch differs: recorded 0.0.1, installed {importlib.metadata.version('torch')}",
        f"rerun: recorded in {tmp_path / 'elsewhere'}: the recipe's relative paths are read from here instead",
    ]
    calls.clear()
    assert run_cli("rerun", str(path), "--num_processes", "1") == 0
    assert calls[0][3] == {"accelerate_config": None, "num_processes": 1}


# --- End to end ------------------------------------------------------------------------------------------


def final_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_a_rerun_from_the_manifest_reproduces_the_run(workdir):
    """Same loss and weights from the recorded recipe, even after the recipe file was edited."""
    recipe = workdir / "recipe.yaml"
    recipe.write_text(TINY_SFT.read_text())
    run_script("sft", recipe, *QUICK, "--max_steps", "6", "--save_strategy", "no", "--output_dir", "runs/first",
               cwd=workdir)  # fmt: skip
    first = workdir / "runs" / "first"
    recorded = json.loads((first / MANIFEST).read_text())
    results = json.loads((first / "all_results.json").read_text())
    assert recorded["data"]["splits"]["train"]["rows"] == results["train_samples"] == 3000
    assert recorded["data"]["splits"]["test"]["rows"] == results["eval_samples"] == 200
    train_file = workdir / "data" / "tiny" / "sft" / "train.jsonl"
    assert (
        recorded["data"]["files"]["data/tiny/sft/train.jsonl"]["sha256"]
        == hashlib.sha256(train_file.read_bytes()).hexdigest()
    )
    assert sum(s["rows_read"] for s in recorded["data"]["sources"] if s["role"] == "train") == 3000
    assert recorded["started"] <= recorded["finished"] and recorded["recipe"]["learning_rate"] == 1.5e-3

    recipe.write_text(recipe.read_text().replace("learning_rate: 1.5e-3", "learning_rate: 3.0e-4"))
    command = [sys.executable, "-m", "alignment.cli", "rerun", str(first / MANIFEST)]
    done = subprocess.run(
        [*command, "--output_dir", "runs/again"], cwd=workdir, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]

    again = workdir / "runs" / "again"
    loss = json.loads((again / "all_results.json").read_text())["train_loss"]
    assert loss == pytest.approx(results["train_loss"], rel=1e-6)
    before, after = final_weights(first), final_weights(again)
    assert before.keys() == after.keys()
    assert max((before[k] - after[k]).abs().max().item() for k in before) <= 1e-6
    repeated = json.loads((again / MANIFEST).read_text())
    assert repeated["recipe"] == recorded["recipe"]  # the recorded mapping, not the edited file
    assert repeated["data"]["files"] == recorded["data"]["files"]
    assert repeated["data"]["splits"] == recorded["data"]["splits"]  # rows and datasets fingerprints
