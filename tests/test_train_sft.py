"""End-to-end SFT on the tiny recipe: learning, saving, reloading, resuming, adapters, two processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from alignment.evaluation import generate_answers, load_for_eval, read_jsonl

from .conftest import QUICK, REPO, TINY_SFT, run_script

pytestmark = pytest.mark.slow


def logged_losses(output_dir: Path) -> list[float]:
    return [value for _, value in logged(output_dir, "loss")]


def logged(output_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of each log entry with `key` in the run's trainer_state.json."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [(entry["step"], entry[key]) for entry in state["log_history"] if key in entry]


def test_sft_loss_decreases_and_outputs_are_complete(sft_model):
    losses = logged_losses(sft_model)
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json",
                 "train_results.json", "eval_results.json", "README.md"):  # fmt: skip
        assert (sft_model / name).is_file(), name
    card = ModelCard.load(sft_model / "README.md")
    for text in ("recipes/tiny/sft/config.yaml", "train_loss", "data/tiny/sft"):
        assert text in card.text, text
    # Local model and data: no base_model, no datasets in the front matter (they would not be Hub ids).
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["alignment", "sft", "trl"],
    }


def test_data_report_train_samples_and_card_agree_on_the_rows_trained(sft_model):
    report = json.loads((sft_model / "data_report.json").read_text())
    train_samples = json.loads((sft_model / "train_results.json").read_text())["train_samples"]
    assert train_samples == report["splits"]["train"]["rows_trained"]
    assert train_samples == sum(s["rows_trained"] for s in report["sources"] if s["role"] == "train")
    assert {s["format"] for s in report["sources"]} == {"messages", "sharegpt"}
    card = ModelCard.load(sft_model / "README.md").text
    assert "| `data/tiny/sft_sharegpt` | train | sharegpt |" in card
    assert f"train: {train_samples} of" in card


def test_saved_model_reloads_and_stops_at_end_of_turn(sft_model, tiny_data):
    model, tokenizer = load_for_eval(sft_model)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|pad|>"  # the tiny tokenizer's own pad, kept
    generation = json.loads((sft_model / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = read_jsonl(tiny_data / "data" / "tiny" / "eval.jsonl")[:20]
    replies = generate_answers(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=16)
    # A model that learned the format answers briefly and stops, instead of running to max_new_tokens.
    assert sum(0 < len(r) <= 8 for r in replies) >= 15, replies


# Run in the child before the script: at the end of step argv[1] (before that step's checkpoint is
# written) the process SIGKILLs itself, as a node lost mid-run would.
KILL_AT_STEP = """
import os, signal, runpy, sys
from transformers.trainer_callback import CallbackHandler
step = int(sys.argv[1])
original = CallbackHandler.on_step_end
def on_step_end(self, args, state, control, **kwargs):
    if state.global_step == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, args, state, control, **kwargs)
CallbackHandler.on_step_end = on_step_end
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_killed_run_rerun_unchanged_matches_an_uninterrupted_one(workdir):
    """SIGKILL at a random step of 24 (checkpoints every 4, logs every 5 and at each save), rerun the same
    command: same steps, logged losses, weights and train_loss (over all 24 steps) as an uninterrupted
    run. The step is in every failure message."""
    import random

    from safetensors.torch import load_file

    step = random.SystemRandom().randint(1, 23)
    at = f"killed at step {step}"
    args = ("--disable_tqdm", "true", "--report_to", "none", "--logging_steps", "5", "--max_steps", "24",
            "--save_steps", "4", "--save_total_limit", "10")  # fmt: skip
    run_script("sft", TINY_SFT, *args, "--output_dir", "runs/whole", cwd=workdir)
    killed = workdir / "runs" / "killed"
    command = [sys.executable, "-c", KILL_AT_STEP, str(step), str(REPO / "scripts" / "run_sft.py"), str(TINY_SFT),
               *args, "--output_dir", "runs/killed"]  # fmt: skip
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert done.returncode == -9, (at, done.stderr[-3000:])
    assert not (killed / "model.safetensors").exists(), at  # killed mid-run, not after it
    checkpoints = sorted(int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*"))
    assert checkpoints == list(range(4, step, 4)), at  # the killed step's own checkpoint was never written
    done = run_script(
        "sft", TINY_SFT, *args, "--output_dir", "runs/killed", "--log_level", "info", cwd=workdir
    )
    log = done.stdout + done.stderr
    assert ("resuming from" in log) == bool(checkpoints) and "FutureWarning" not in log, at
    whole_state = json.loads((workdir / "runs" / "whole" / "trainer_state.json").read_text())
    killed_state = json.loads((killed / "trainer_state.json").read_text())
    assert killed_state["global_step"] == whole_state["global_step"] == 24, at
    assert logged_losses(killed) == pytest.approx(logged_losses(workdir / "runs" / "whole"), rel=1e-4), at
    whole_loss = json.loads((workdir / "runs" / "whole" / "train_results.json").read_text())["train_loss"]
    resumed_loss = json.loads((killed / "train_results.json").read_text())["train_loss"]
    assert resumed_loss == pytest.approx(whole_loss, rel=1e-4), at  # the whole run, not the resumed steps
    a, b = (
        load_file(workdir / "runs" / "whole" / "model.safetensors"),
        load_file(killed / "model.safetensors"),
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4, at
    # Rerun unchanged: finished, nothing to train.
    again = run_script("sft", TINY_SFT, *args, "--output_dir", "runs/killed", cwd=workdir)
    assert "finished run: nothing to train" in again.stdout + again.stderr
    assert json.loads((killed / "trainer_state.json").read_text()) == killed_state


# Run in the child before the script: the final save (not a checkpoint's) writes half of
# model.safetensors and then the process SIGKILLs itself, as a node lost mid-save would.
KILL_MID_SAVE = """
import os, signal, runpy, sys
import safetensors.torch as st
original = st.save_file
def save_file(tensors, filename, metadata=None):
    if "checkpoint-" in str(filename):
        return original(tensors, filename, metadata)
    original(tensors, filename, metadata)
    with open(filename, "r+b") as f:
        f.truncate(os.path.getsize(filename) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
st.save_file = save_file
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_run_killed_while_saving_the_final_model_leaves_no_half_model_and_reruns(workdir):
    """SIGKILL inside the final save: output_dir holds no half-written weights; the rerun saves the model whole."""
    from safetensors.torch import load_file

    args = (*QUICK, "--max_steps", "8", "--save_steps", "4", "--output_dir", "runs/midsave")
    command = [
        sys.executable,
        "-c",
        KILL_MID_SAVE,
        str(REPO / "scripts" / "run_sft.py"),
        str(TINY_SFT),
        *args,
    ]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-3000:]
    out = workdir / "runs" / "midsave"
    assert (out / "checkpoint-8" / "trainer_state.json").is_file()  # training had finished
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert json.loads((out / "run_recipe.json").read_text())["status"] == "running"

    again = run_script("sft", TINY_SFT, *args, "--log_level", "info", cwd=workdir)
    assert "resuming from" in again.stdout + again.stderr
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-8" / "model.safetensors")
    assert final.keys() == last.keys() and all(final[k].equal(last[k]) for k in final)
    assert not (out / "_final.partial").exists()
    assert json.loads((out / "run_recipe.json").read_text())["status"] == "finished"


def test_dora_adapter_trains_and_next_stage_loads_it_on_its_base(workdir):
    adapter = workdir / "runs" / "lora"
    run_script("sft", TINY_SFT, *QUICK, "--output_dir", str(adapter), "--max_steps", "6", "--use_peft", "true",
               "--use_dora", "true", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
               cwd=workdir)  # fmt: skip
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["use_dora"] and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert not (adapter / "model.safetensors").exists()
    assert (adapter / "generation_config.json").is_file()
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and {"alignment", "sft", "trl", "lora"} <= set(card.data.tags)
    assert "recipes/tiny/sft/config.yaml" in card.text  # ours, not PEFT's stub
    done = run_script("sft", TINY_SFT, *QUICK, "--model_name_or_path", str(adapter), "--output_dir", "runs/after",
                      "--max_steps", "2", "--log_level", "info", cwd=workdir)  # fmt: skip
    assert "is an adapter: merging it into its base" in done.stdout + done.stderr
    assert (workdir / "runs" / "after" / "model.safetensors").is_file()


def test_qlora_4bit_runs_on_cpu(workdir):
    out = workdir / "runs" / "qlora"
    run_script("sft", TINY_SFT, *QUICK, "--output_dir", str(out), "--max_steps", "3", "--use_peft", "true",
               "--load_in_4bit", "true", "--lora_target_modules", "all-linear", cwd=workdir)  # fmt: skip
    assert (out / "adapter_config.json").is_file()


TWO_PROCESS_ARGS = (
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "1",
    "--log_level",
    "info",
)


def launch_two_processes(workdir: Path, out: str, *accelerate_args: str) -> str:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_args, "--num_processes", "2"]
    done = run_script(
        "sft", TINY_SFT, *QUICK, *TWO_PROCESS_ARGS, "--output_dir", out, cwd=workdir, launcher=launcher
    )
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def ddp_run(tiny_data: Path) -> tuple[Path, str]:
    """Plain DDP, 2 processes over gloo, launched by `alignment sft --num_processes 2` (the second door goes
    through `accelerate launch` too): the baseline the ZeRO runs are compared with."""
    command = [sys.executable, "-m", "alignment.cli", "sft", str(TINY_SFT), "--num_processes", "2", *QUICK,
               *TWO_PROCESS_ARGS, "--output_dir", "runs/ddp"]  # fmt: skip
    done = subprocess.run(command, cwd=tiny_data, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return tiny_data / "runs" / "ddp", done.stdout + done.stderr


def test_two_processes_share_the_batch(ddp_run):
    out, log = ddp_run
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in log
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    # the recipe's generation eval, each rank answering half the prompts: at the start and the last step
    assert [step for step, _ in logged(out, "eval_exact_match")] == [0, 4]


@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_deepspeed_configs_run_on_cpu_and_match_ddp(workdir, ddp_run, config, tmp_path_factory, monkeypatch):
    """The shipped ZeRO configs, 2 processes over gloo (bf16 off: no GPU). Same losses as plain DDP, within 0.5%."""
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.getbasetemp() / "torch_extensions"))
    config_file = str(Path(__file__).resolve().parents[1] / "accelerate_configs" / f"{config}.yaml")
    log = launch_two_processes(
        workdir, f"runs/{config}", "--config_file", config_file, "--mixed_precision", "no"
    )
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in log
    zero, ddp = logged_losses(workdir / "runs" / config), logged_losses(ddp_run[0])
    assert len(zero) == len(ddp) == 4  # the generation eval's log at step 4 does not replace the loss line
    # ZeRO-3 shards the weights: both ranks take part in every generate call, or this hangs
    assert [step for step, _ in logged(workdir / "runs" / config, "eval_exact_match")] == [0, 4]
    assert zero == pytest.approx(ddp, rel=5e-3)  # measured: within 0.2% (loss averaging across ranks differs)
    model, _ = load_for_eval(workdir / "runs" / config)  # a full, loadable model, gathered from the shards
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
