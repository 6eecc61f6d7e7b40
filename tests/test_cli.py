"""The `alignment` command and the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO


def alignment(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignment.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_check_prints_plan_with_global_batch_size():
    done = alignment("check", "recipes/zephyr-7b-beta/sft/config_full.yaml", "--num_processes", "8")
    assert done.returncode == 0, done.stderr
    plan = yaml.safe_load(done.stdout)
    assert plan["stage"] == "sft" and plan["model"] == "mistralai/Mistral-7B-v0.1"
    assert plan["global_batch_size"] == 16 * 1 * 8
    assert plan["datasets"][0].startswith("HuggingFaceH4/ultrachat_200k")


def test_check_reports_bad_override_in_one_line():
    done = alignment("check", "recipes/tiny/dpo/config.yaml", "--beta", "x")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: `beta`")


def test_unknown_command():
    done = alignment("trian")
    assert done.returncode == 2 and "unknown command 'trian'" in done.stderr


def test_help_lists_stages():
    done = alignment("--help")
    assert done.returncode == 0 and "alignment sft RECIPE" in done.stdout and "alignment demo" in done.stdout


@pytest.mark.slow
def test_demo_shows_real_learning(tmp_path):
    """The whole embedded pipeline, as `make demo` runs it: SFT must learn, DPO must fix the miscounts."""
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    done = alignment("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "tiny" / "demo_results.json").read_text())
    base, sft, dpo = results["base"], results["sft"], results["dpo"]
    assert base["exact_match/all"] < 0.05
    assert (
        sft["exact_match/all"] > 0.6 and sft["exact_match/count"] < 0.3
    )  # learned the skills, and the miscount
    assert dpo["exact_match/all"] > sft["exact_match/all"] + 0.15 and dpo["exact_match/count"] > 0.7
    assert dpo["dpo_reward_accuracy"] > 0.9
    assert "| dpo |" in done.stdout
