"""Shared fixtures: the tiny model and task, built once per session, and a way to run the stage scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.tiny.build import build_tiny
from alignment.tiny.task import TinyTaskConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
TINY_SFT = RECIPES / "tiny" / "sft" / "config.yaml"
TINY_DPO = RECIPES / "tiny" / "dpo" / "config.yaml"
TINY_RM = RECIPES / "tiny" / "rm" / "config.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A workdir with `data/tiny` built (smaller task than the demo's), so recipes' relative paths resolve."""
    work = tmp_path_factory.mktemp("work")
    build_tiny(work / "data" / "tiny", task=TinyTaskConfig(sft_train=3000, dpo_train=400, eval_prompts=40))
    return work


@pytest.fixture
def away_from_the_checkout(tmp_path: Path, monkeypatch) -> Path:
    """Run in an empty folder: a test of parsing must not see the data/tiny that `make demo` built in the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def workdir(tiny_data: Path, tmp_path: Path) -> Path:
    """A fresh folder per test whose `data/` is the session's tiny data (runs/ starts empty)."""
    (tmp_path / "data").symlink_to(tiny_data / "data")
    return tmp_path


def run_script(stage: str, recipe: Path | str, *overrides: str, cwd: Path, launcher: list[str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    """Run scripts/run_<stage>.py the way a user does, from `cwd`; fail the test with the output tail on error."""
    command = [
        *(launcher or [sys.executable]),
        str(REPO / "scripts" / f"run_{stage}.py"),
        str(recipe),
        *overrides,
    ]
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    if check and done.returncode != 0:
        pytest.fail(f"{stage} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


QUICK = ("--disable_tqdm", "true", "--logging_steps", "2", "--report_to", "none")


@pytest.fixture(scope="session")
def sft_model(tiny_data: Path) -> Path:
    """A tiny SFT model trained once for the session (the starting point of DPO and reload tests)."""
    out = tiny_data / "runs" / "tiny" / "sft"
    if not (out / "model.safetensors").exists():
        shutil.rmtree(out, ignore_errors=True)
        run_script("sft", TINY_SFT, *QUICK, "--max_steps", "80", "--save_steps", "40", cwd=tiny_data)
    return out


@pytest.fixture(scope="session")
def rm_model(tiny_data: Path, sft_model: Path) -> Path:
    """A tiny reward model trained once for the session: recipes/tiny/rm/config.yaml on `sft_model`, for 150 of
    its 304 steps (what the tests here need; the demo test holds the full recipe to its numbers)."""
    out = tiny_data / "runs" / "tiny" / "rm"  # the recipe's output_dir; its model_name_or_path is sft_model
    if not (out / "model.safetensors").exists():
        shutil.rmtree(out, ignore_errors=True)
        run_script("rm", TINY_RM, *QUICK, "--max_steps", "150", cwd=tiny_data)
    return out
