"""End-to-end DPO on the tiny recipe, starting from the session's tiny SFT model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import QUICK, TINY_DPO, TINY_SFT, run_script

pytestmark = pytest.mark.slow


def log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_dpo_loss_decreases_and_prefers_chosen(workdir, sft_model):
    out = workdir / "runs" / "dpo"
    run_script("dpo", TINY_DPO, *QUICK, "--model_name_or_path", str(sft_model), "--output_dir", str(out),
               "--max_steps", "40", "--loss_type", "sigmoid", cwd=workdir)  # fmt: skip
    logs = [e for e in log_history(out) if "loss" in e]
    assert logs[0]["loss"] == pytest.approx(0.693, abs=0.02)  # policy == reference at step 1: -log sigmoid(0)
    assert logs[-1]["loss"] < 0.6 * logs[0]["loss"], [e["loss"] for e in logs]
    assert logs[-1]["rewards/margins"] > 0
    final_eval = json.loads((out / "eval_results.json").read_text())
    assert final_eval["eval_rewards/accuracies"] > 0.8
    assert (out / "model.safetensors").is_file() and "DPO" in (out / "README.md").read_text()


def test_loss_type_override_changes_the_objective(workdir, sft_model):
    # IPO's loss at step 1 (policy == reference) is (0 - 1/(2 beta))^2 = 1 for beta 0.5; sigmoid's would be ln 2.
    out = workdir / "runs" / "ipo"
    run_script("dpo", TINY_DPO, "--disable_tqdm", "true", "--logging_steps", "1", "--model_name_or_path",
               str(sft_model), "--output_dir", str(out), "--max_steps", "2", "--loss_type", "ipo", "--beta", "0.5",
               cwd=workdir)  # fmt: skip
    first = next(e for e in log_history(out) if "loss" in e)
    assert first["loss"] == pytest.approx(1.0, abs=0.02)


def test_dpo_from_an_adapter_uses_the_merged_model_as_reference(workdir, sft_model):
    """At step 1 the policy is the reference, so the sigmoid loss is exactly ln 2: only if the reference is the
    merged adapter stage. TRL's default (reload `config._name_or_path`, the base) would give another value."""
    adapter = workdir / "runs" / "lora"
    run_script("sft", TINY_SFT, *QUICK, "--model_name_or_path", str(sft_model), "--output_dir", str(adapter),
               "--max_steps", "6", "--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "all-linear",
               "--learning_rate", "5e-3", cwd=workdir)  # fmt: skip
    out = workdir / "runs" / "dpo-from-adapter"
    done = run_script("dpo", TINY_DPO, "--disable_tqdm", "true", "--logging_steps", "1", "--model_name_or_path",
                      str(adapter), "--output_dir", str(out), "--max_steps", "1", "--loss_type", "sigmoid",
                      "--log_level", "info", cwd=workdir)  # fmt: skip
    first = next(e for e in log_history(out) if "loss" in e)
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert "reference model: the merged adapter stage" in done.stdout + done.stderr
