"""scripts/launch_slurm.sh in print-only mode: the per-node command it would run, and its argument checks."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "launch_slurm.sh"
RECIPE = "recipes/zephyr-7b-beta/sft/config_full.yaml"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def launch(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "ALIGNMENT_")) and k not in ("MASTER_PORT", "MASTER_ADDR")
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=cwd,
        env={**base, "ALIGNMENT_SLURM_PRINT_ONLY": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def printed_command(done: subprocess.CompletedProcess) -> list[str]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return shlex.split(lines[0])


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} not in {argv}"
    return argv[argv.index(name) + 1]


def program(argv: list[str]) -> list[str]:
    """What follows the launcher's options: the script, the recipe and the overrides."""
    return argv[next(i for i, a in enumerate(argv) if a.startswith("scripts/run_")) :]


def test_prints_the_accelerate_launch_command_with_the_recipe_and_overrides():
    argv = printed_command(launch("sft", RECIPE, "zero3", "--learning_rate", "1e-6"))
    assert argv[:2] == ["accelerate", "launch"]
    assert option(argv, "--config_file") == "accelerate_configs/zero3.yaml"
    assert option(argv, "--num_machines") == "1"
    assert option(argv, "--machine_rank") == "0"
    assert option(argv, "--main_process_ip") == "localhost"
    assert option(argv, "--main_process_port") == "6000"
    assert program(argv) == ["scripts/run_sft.py", RECIPE, "--learning_rate", "1e-6"]
    # The launcher's options all come before the training script.
    assert argv.index("--config_file") < argv.index("scripts/run_sft.py")


def test_stage_picks_the_training_script():
    argv = printed_command(launch("dpo", "recipes/zephyr-7b-beta/dpo/config_full.yaml", "zero3"))
    assert program(argv)[:2] == ["scripts/run_dpo.py", "recipes/zephyr-7b-beta/dpo/config_full.yaml"]


def test_overrides_with_spaces_survive_quoting():
    argv = printed_command(launch("sft", RECIPE, "zero2", "--run_name", "my run; echo x"))
    assert program(argv)[-2:] == ["--run_name", "my run; echo x"]


def test_a_recipe_with_any_name_outside_the_repo_works(tmp_path):
    recipe = tmp_path / "my_run.yaml"
    shutil.copy(REPO / RECIPE, recipe)
    # Relative to where sbatch was called from: made absolute, since training runs from the repository root.
    argv = printed_command(launch("sft", "my_run.yaml", "zero3", "--seed", "3", cwd=tmp_path))
    script, printed_recipe, *overrides = program(argv)
    assert script == "scripts/run_sft.py"
    assert os.path.isabs(printed_recipe)
    assert os.path.samefile(printed_recipe, recipe)
    assert overrides == ["--seed", "3"]
    assert option(argv, "--config_file") == "accelerate_configs/zero3.yaml"


def test_an_accelerate_config_path_is_used_as_given(tmp_path):
    config = tmp_path / "mine.yaml"
    shutil.copy(REPO / "accelerate_configs" / "ddp.yaml", config)
    argv = printed_command(launch("sft", RECIPE, str(config)))
    assert option(argv, "--config_file") == str(config)


def test_slurm_allocation_sets_machines_and_processes():
    done = launch("sft", RECIPE, "multi_node", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_PROCID="1")
    argv = printed_command(done)
    assert option(argv, "--num_machines") == "2"
    assert option(argv, "--num_processes") == "8"
    assert option(argv, "--machine_rank") == "1"
    assert option(argv, "--rdzv_backend") == "c10d"
    assert option(argv, "--config_file") == "accelerate_configs/multi_node.yaml"


def test_master_port_comes_from_the_environment():
    argv = printed_command(launch("sft", RECIPE, "zero3", MASTER_PORT="29555"))
    assert option(argv, "--main_process_port") == "29555"


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_missing_accelerate_config_fails_naming_it():
    error = one_line_error(launch("sft", RECIPE, "zero9"))
    assert "zero9" in error
    assert "zero3" in error  # lists the available ones


def test_missing_accelerate_config_path_fails_naming_it(tmp_path):
    error = one_line_error(launch("sft", RECIPE, str(tmp_path / "nope.yaml")))
    assert "nope.yaml" in error


def test_missing_recipe_fails_naming_it():
    error = one_line_error(launch("sft", "recipes/zephyr-7b-beta/sft/nope.yaml", "zero3"))
    assert "recipes/zephyr-7b-beta/sft/nope.yaml" in error


def test_unknown_stage_fails_naming_it():
    error = one_line_error(launch("ppo", RECIPE, "zero3"))
    assert "ppo" in error


def test_too_few_arguments_print_usage():
    done = launch("sft", RECIPE)
    assert done.returncode == 2
    assert "usage" in done.stderr
    assert done.stdout == ""
