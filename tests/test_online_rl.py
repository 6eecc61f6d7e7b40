"""Online RL (grpo, rloo): rewards by name or import path, checks on the target launch, and runs that learn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alignment.check import plan
from alignment.errors import RecipeError
from alignment.recipe import parse_recipe
from alignment.rewards import exact_answer, resolve_reward, tiny_format
from alignment.target import LaunchTarget
from tests.conftest import RECIPES, REPO

TINY_GRPO = RECIPES / "tiny" / "grpo" / "config.yaml"
TINY_RLOO = RECIPES / "tiny" / "rloo" / "config.yaml"


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --- Rewards -------------------------------------------------------------------------------------------


def test_exact_answer_compares_with_the_reference_and_skips_rows_without_one():
    completions = [assistant("olleh"), assistant(" 5\n"), assistant("ABC"), "plain"]
    assert exact_answer(completions, answer=["olleh", "5", "ABc", None]) == [1.0, 1.0, 0.0, None]


def test_tiny_format_rewards_the_shape_of_the_answer_right_or_wrong():
    prompts = [
        [{"role": "user", "content": p}] for p in ("count abcd", "count abcd", "upper abc", "sort dcba")
    ]
    completions = [assistant(t) for t in ("5", "five", "ABC", "abdc")]
    assert tiny_format(prompts, completions) == [1.0, 0.0, 1.0, 1.0]


def test_a_reward_is_a_builtin_or_an_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def short(completions, **kw):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_reward("my_rewards:short")([assistant("a")]) == [1.0]
    assert resolve_reward("my_rewards.short") is resolve_reward("my_rewards:short")
    with pytest.raises(RecipeError, match="unknown reward 'exact_anwser'; did you mean `exact_answer`"):
        resolve_reward("exact_anwser")
    with pytest.raises(RecipeError, match="cannot import 'no_such_module'"):
        resolve_reward("no_such_module:f")
    with pytest.raises(RecipeError, match="'my_rewards' has no function 'long'"):
        resolve_reward("my_rewards:long")


# --- Parsing and the plan (no model is loaded) ------------------------------------------------------------


@pytest.mark.usefixtures("away_from_the_checkout")
def test_rewards_are_required_by_online_rl_and_refused_elsewhere(tmp_path):
    no_reward = tmp_path / "grpo.yaml"
    no_reward.write_text(TINY_GRPO.read_text().replace("reward_funcs: [exact_answer]", ""))
    with pytest.raises(RecipeError, match="stage grpo needs a reward: set `reward_funcs`"):
        parse_recipe("grpo", [str(no_reward)])
    with pytest.raises(RecipeError, match="`reward_funcs`: unknown reward 'exact'"):
        parse_recipe("grpo", [str(TINY_GRPO), "--reward_funcs", "exact"])
    with pytest.raises(RecipeError, match="`reward_model_name_or_path` is read only by the online-RL stages"):
        parse_recipe(
            "sft", [str(RECIPES / "tiny" / "sft" / "config.yaml"), "--reward_model_name_or_path", "x"]
        )


@pytest.fixture
def in_workdir(workdir, monkeypatch) -> Path:
    """The plan reads the first rows of the recipe's local data: run where data/tiny is built."""
    monkeypatch.chdir(workdir)
    return workdir


@pytest.mark.usefixtures("in_workdir")
def test_generation_rounds_are_checked_for_the_target_process_count():
    """TRL checks the generation batch with the world size of the process that parses: 1 on a laptop."""
    args = ["--per_device_train_batch_size", "8", "--generation_batch_size", "32", "--num_generations", "8"]
    recipe = parse_recipe("grpo", [str(TINY_GRPO), *args])
    assert any("4 prompts x 8 completions" in note for note in plan(recipe, processes=1)["notes"])
    assert any("4 prompts x 8 completions" in note for note in plan(recipe, processes=4)["notes"])
    with pytest.raises(
        RecipeError, match="`generation_batch_size` 32 must be a multiple of .* 3 processes = 24"
    ):
        plan(recipe, processes=3)


@pytest.mark.usefixtures("in_workdir")
def test_vllm_settings_are_checked_and_a_cpu_run_is_refused():
    colocate = [str(TINY_GRPO), "--use_vllm", "true", "--vllm_tensor_parallel_size", "2"]
    recipe = parse_recipe("grpo", [*colocate, "--dry_run"])  # the dry run describes the GPU node
    assert any("vLLM needs a CUDA GPU" in note for note in recipe.device_notes)
    with pytest.raises(RecipeError, match="`vllm_tensor_parallel_size` 2 must divide the 3 training process"):
        plan(recipe, target=LaunchTarget(processes=3))
    notes = plan(recipe, target=LaunchTarget(processes=4))["notes"]
    assert any(note.startswith("vLLM colocate") for note in notes)
    server = parse_recipe(
        "grpo", [str(TINY_GRPO), "--use_vllm", "true", "--vllm_mode", "server", "--dry_run"]
    )
    with pytest.raises(RecipeError, match="`vllm_mode: server` needs the server's address"):
        plan(server, processes=4)
    with pytest.raises(RecipeError, match="vLLM needs a CUDA GPU.*set `use_vllm: false`"):
        parse_recipe("grpo", colocate)


# --- Runs -------------------------------------------------------------------------------------------
# GRPO against the checker and RLOO against the learned reward model train for real in `make demo`'s
# pipeline, whose test (tests/test_cli.py::test_demo_shows_real_learning) checks what each one fixed.


def test_the_online_rl_scripts_dry_run_without_loading_a_model(workdir):
    for recipe, stage in ((TINY_GRPO, "grpo"), (TINY_RLOO, "rloo")):
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / f"run_{stage}.py"), str(recipe), "--dry_run"],
            cwd=workdir, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"stage: {stage}" in done.stdout
        assert "prompts x 8 completions per generation round" in done.stdout
