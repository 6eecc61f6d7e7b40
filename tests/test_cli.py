"""The `alignment` command and the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO


def alignment(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """`alignment ARGS` run from `cwd`. `check` (a plan or a refusal) runs in this process: the same `main`,
    its stdout, stderr and exit status, without ~8 s of imports a time; the rest in a process of its own, as a
    user runs them (`test_check_is_quiet_apart_from_the_plan` keeps a real `check` process)."""
    if args and args[0] == "check":
        return in_process(list(args), cwd)
    return subprocess.run(
        [sys.executable, "-m", "alignment.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def in_process(args: list[str], cwd) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import os

    from alignment.cli import main

    out, err, status = io.StringIO(), io.StringIO(), 0
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)  # a recipe's `env:` block sets variables
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(args)
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


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
    assert done.returncode == 2 and "invalid choice: 'trian'" in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error:")


def test_help_lists_commands_and_each_has_its_own():
    done = alignment("--help")
    assert done.returncode == 0
    for command in ("sft", "dpo", "check", "tiny", "demo"):
        assert f"    {command} " in done.stdout
    for command in ("sft", "dpo", "check"):
        sub = alignment(command, "--help")
        assert (
            sub.returncode == 0
            and "--accelerate_config FILE" in sub.stdout
            and "--num_processes" in sub.stdout
        )
    assert "build" in alignment("tiny", "--help").stdout


def test_check_describes_the_target_launch_not_this_machine():
    """On a CPU machine, the zephyr recipe on zero3.yaml: bf16, 8 processes, global batch 128."""
    done = alignment("check", "recipes/zephyr-7b-beta/sft/config_full.yaml",
                     "--accelerate_config", "accelerate_configs/zero3.yaml")  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = yaml.safe_load(done.stdout)
    assert (plan["precision"], plan["processes"], plan["global_batch_size"]) == ("bf16", 8, 128)
    assert plan["distributed"] == "deepspeed zero-3"
    assert plan["resolved"]["bf16"] is True
    # bf16 stays in the plan; what this CPU does with it (fp32, or autocast where it has AMX) is a note apart
    assert plan["on_this_machine"][0] in (
        "bf16 requested but this machine has no GPU: training in float32 here",
        "no GPU: bf16 autocast on this CPU (it has native bf16 instructions, AMX/AVX512-BF16)",
    )
    more = alignment("check", "recipes/zephyr-7b-beta/sft/config_full.yaml",
                     "--accelerate_config", "accelerate_configs/multi_node.yaml", "--gradient_accumulation_steps", "2")  # fmt: skip
    plan = yaml.safe_load(more.stdout)
    assert (plan["processes"], plan["global_batch_size"], plan["distributed"]) == (
        16, 512, "deepspeed zero-3, 2 machines")  # fmt: skip


def test_check_refuses_a_precision_mismatch_with_the_accelerate_config(tmp_path):
    done = alignment(
        "check", "recipes/tiny/sft/config.yaml", "--accelerate_config", "accelerate_configs/zero2.yaml"
    )
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]  # after the notes of the parse, one error line
    assert "sets neither `bf16` nor `fp16`" in line and "`mixed_precision: bf16`" in line
    fp16 = tmp_path / "fp16.yaml"
    fp16.write_text(
        (REPO / "accelerate_configs" / "ddp.yaml")
        .read_text()
        .replace("mixed_precision: bf16", "mixed_precision: fp16")
    )
    done = alignment("check", "recipes/zephyr-7b-beta/sft/config_full.yaml", "--accelerate_config", str(fp16))
    assert (
        done.returncode == 2 and "sets `bf16: true`" in done.stderr and "mixed_precision: fp16" in done.stderr
    )
    # refused before launching, so no process of its own is needed to see it
    done = in_process(
        ["sft", "recipes/tiny/sft/config.yaml", "--accelerate_config", "accelerate_configs/zero2.yaml"], REPO
    )
    assert done.returncode == 2 and "mixed_precision: bf16" in done.stderr


def test_check_is_quiet_apart_from_the_plan(workdir):
    """No FutureWarning about our keys, no DeepSpeed or wandb notices: stderr carries only what we mean."""
    import os

    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "alignment.cli", "check", str(REPO / "recipes/tiny/sft/config.yaml")],
                          capture_output=True, text=True, cwd=workdir, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for noise in (
        "FutureWarning",
        "Setting accelerator to CPU",
        "Running in WANDB offline mode",
        "kernels-community",
    ):
        assert noise not in done.stderr + done.stdout


@pytest.mark.slow
def test_demo_shows_real_learning(tmp_path):
    """The whole embedded pipeline, as `make demo` runs it (recipes/tiny/pipeline.yaml), each stage's metric.

    SFT learns the skills and the annotator's miscount; DPO (offline pairs), GRPO (against a checker)
    and RLOO (against the reward model, which ranks held-out pairs) each fix the count from the SFT model.
    """
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    done = alignment("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "tiny" / "demo_results.json").read_text())
    assert list(results) == ["base", "cpt", "sft", "rm", "dpo", "grpo", "rloo", "total"]
    base, sft, dpo = results["base"], results["sft"], results["dpo"]
    assert base["exact_match/all"] < 0.05
    assert results["cpt"]["text_loss"] < 3.2  # from ~4.6 (uniform over the ~110 tokens)
    assert sft["exact_match/all"] > 0.5 and sft["exact_match/count"] < 0.3  # the skills, and the miscount
    rm = results["rm"]  # measured: all 84.5%, upper 98%, count 100%, sort 86%, reverse 54% (chance)
    assert rm["rm_accuracy/all"] > 0.8 and rm["rm_accuracy/upper"] > 0.9 and rm["rm_accuracy/count"] > 0.9
    assert rm["rm_accuracy/sort"] > 0.75
    assert dpo["exact_match/all"] > sft["exact_match/all"] + 0.15 and dpo["exact_match/count"] > 0.7
    assert dpo["dpo_reward_accuracy"] > 0.9
    grpo = results["grpo"]  # measured: 69.5% -> 90.0% (count 8% -> 82%), seeds 1 and 2: 89.5%, 88.5%
    assert grpo["exact_match/all"] > sft["exact_match/all"] + 0.15 and grpo["exact_match/count"] > 0.6
    for skill in ("reverse", "upper", "sort"):  # the fix costs no other skill (lr 1e-4 cost sort 26 points)
        assert grpo[f"exact_match/{skill}"] >= sft[f"exact_match/{skill}"] - 0.06, (skill, sft, grpo)
    rloo = results["rloo"]  # RLHF, the reward model its only teacher: measured 69.5% -> 87.5% (count 82%)
    assert rloo["exact_match/all"] > sft["exact_match/all"] + 0.12 and rloo["exact_match/count"] > 0.6
    assert rloo["exact_match/sort"] >= sft["exact_match/sort"] - 0.1  # the reward model's old gap, closed
    for row in ("| cpt |", "| rm |", "| grpo |", "| rloo |"):
        assert row in done.stdout
    assert "FutureWarning" not in done.stdout + done.stderr
    chart = tmp_path / "runs" / "tiny" / "demo_chart.png"
    assert (
        chart.read_bytes()[:4] == b"\x89PNG"
        and "chart of the stages: runs/tiny/demo_chart.png" in done.stdout
    )


def test_data_writes_canonical_rows_report_and_marked_examples(workdir):
    out = workdir / "inspect"
    done = subprocess.run(
        [sys.executable, "-m", "alignment.cli", "data", str(REPO / "recipes/tiny/sft/config.yaml"),
         "--output_dir", str(out), "--max_length", "20"],
        cwd=workdir, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    report = json.loads((out / "data_report.json").read_text())
    assert len(train) == 3000 and len(test) == 200  # every row before length accounting, which only counts
    assert {m["role"] for row in train for m in row["messages"]} == {"user", "assistant"}
    assert report["splits"]["train"]["rows"] == 3000
    assert report["splits"]["train"]["truncated"] > 0  # max_length 20 cuts some answers, and says so
    # The answer and its end-of-turn are marked as trained; the prompt is not.
    assert "<|im_start|>assistant\n[[" in done.stdout and "<|im_end|>\n]]" in done.stdout
    assert "--- example 3 of 3000 (train) ---" in done.stdout


def test_data_names_a_file_it_cannot_read_in_one_line(workdir):
    (workdir / "bad.jsonl").write_text('{"foo": 1, "bar": 2}\n')
    done = subprocess.run(
        [sys.executable, "-m", "alignment.cli", "data", str(REPO / "recipes/tiny/sft/config.yaml"),
         "--output_dir", "x", "--dataset_mixture", '{"datasets": [{"id": "bad.jsonl"}]}'],
        cwd=workdir, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: dataset bad.jsonl: cannot tell the format of columns [")
