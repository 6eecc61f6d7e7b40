"""The real-model recipes and pipelines: what they would run on their GPUs, checked without training.

The reward model and RLOO recipes for Qwen2.5-0.5B, the one-GPU RLHF pipeline (sft -> rm -> rloo) and the
Zephyr pipeline (sft -> dpo on 8 GPUs): each stage's recipe, with the pipeline's overrides applied, is
dry-run on the pipeline's own launch, so a batch that would not make whole generation groups or a reward
model that is not the rm stage's output fails here, not hours into a GPU job.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.check import plan
from alignment.pipeline import load_pipeline, plan_pipeline, to_cli
from alignment.recipe import parse_recipe

from .conftest import RECIPES

QWEN = RECIPES / "qwen2.5-0.5b"
RLOO = QWEN / "rloo" / "config_full.yaml"
RM = QWEN / "rm" / "config_full.yaml"
RLHF_PIPELINE = QWEN / "pipeline_rlhf.yaml"
ZEPHYR_PIPELINE = RECIPES / "zephyr-7b-beta" / "pipeline.yaml"


@pytest.fixture(autouse=True)
def one_process(monkeypatch, away_from_the_checkout):
    """No launcher's world size; an empty folder, so no earlier run's output or marker is seen."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def dry_parse(stage: str, path: Path | str, *overrides: str):
    # --dry_run: vLLM and bf16 describe the GPU target; this CPU machine only adds notes
    return parse_recipe(stage, [str(path), *overrides, "--dry_run"])


# --- RLOO: generation on the target launch ---------------------------------------------------------------


@pytest.mark.parametrize(("processes", "prompts"), [(1, 32), (8, 256)])
def test_rloo_generation_round_is_whole_groups_with_vllm_colocated(processes, prompts):
    recipe = dry_parse("rloo", RLOO)
    t = recipe.training
    assert (t.use_vllm, t.vllm_mode, t.num_generations) == (True, "colocate", 4)
    summary = plan(recipe, processes=processes)
    completions = t.per_device_train_batch_size * t.gradient_accumulation_steps * processes
    assert summary["global_batch_size"] == completions == prompts * t.num_generations
    notes = summary["notes"]
    assert (
        f"online RL: {prompts} prompts x 4 completions per generation round on {processes} process(es)"
        in notes
    )
    assert (
        "vLLM colocate: generation shares the training GPUs, 30% of each GPU's memory for vLLM, tensor parallel 1"
        in notes
    )
    assert t.vllm_max_model_length > t.max_completion_length  # room for the prompt in vLLM's window


def test_rloo_scores_with_the_rm_recipes_output_and_rm_evaluates_pairwise_accuracy():
    rloo, rm = dry_parse("rloo", RLOO), dry_parse("rm", RM)
    assert rloo.args.reward_model_name_or_path == rm.training.output_dir == "data/qwen2.5-0.5b-rm"
    assert rloo.args.reward_funcs is None  # the reward model alone: the InstructGPT path
    assert rloo.model.model_name_or_path == rm.model.model_name_or_path == "data/qwen2.5-0.5b-sft"
    assert rloo.training.beta > 0  # a KL pull to the SFT model: a learned reward can be gamed
    # eval_accuracy (pairs ranked right) needs held-out pairs and an eval schedule
    assert rm.mixture.test_split == "test_prefs"
    assert (rm.training.eval_strategy, rm.training.eval_steps) == ("steps", 100)
    assert rm.training.center_rewards_coefficient == 0.01


# --- Pipelines ---------------------------------------------------------------------------------------------


def test_rlhf_pipeline_chains_sft_into_rm_and_both_into_rloo():
    pipeline = load_pipeline(RLHF_PIPELINE)
    sft, rm, rloo = pipeline.stages
    assert [(s.name, s.stage) for s in pipeline.stages] == [("sft", "sft"), ("rm", "rm"), ("rloo", "rloo")]
    assert sft.output_dir == "data/qwen2.5-0.5b-sft"
    assert rm.overrides["model_name_or_path"] == sft.output_dir
    assert rloo.overrides["model_name_or_path"] == sft.output_dir  # the policy starts from SFT, not the RM
    assert rloo.overrides["reward_model_name_or_path"] == rm.output_dir == "data/qwen2.5-0.5b-rm"
    assert rloo.inputs == ["sft", "rm"]  # a changed rm reruns rloo
    assert all(Path(s.accelerate_config).name == "ddp.yaml" and s.num_processes == 1 for s in pipeline.stages)
    assert pipeline.log_dir == Path("runs/qwen2.5-0.5b-rlhf/logs")


def test_zephyr_pipeline_runs_dpo_on_the_sft_output_on_8_gpus_with_zero3():
    pipeline = load_pipeline(ZEPHYR_PIPELINE)
    sft, dpo = pipeline.stages
    assert [(s.name, s.stage) for s in pipeline.stages] == [("sft", "sft"), ("dpo", "dpo")]
    assert (
        dpo.overrides == {"model_name_or_path": sft.output_dir}
        and sft.output_dir == "data/zephyr-7b-sft-full"
    )
    assert dpo.inputs == ["sft"]
    assert all(
        Path(s.accelerate_config).name == "zero3.yaml" and s.num_processes == 8 for s in pipeline.stages
    )


@pytest.mark.parametrize(
    ("pipeline", "batches"),
    [(RLHF_PIPELINE, {"sft": 128, "rm": 64, "rloo": 128}), (ZEPHYR_PIPELINE, {"sft": 128, "dpo": 128})],
    ids=["qwen2.5-0.5b-rlhf", "zephyr-7b-beta"],
)
def test_every_pipeline_stage_dry_runs_on_the_pipelines_launch(pipeline, batches):
    """Each stage's recipe with the pipeline's overrides, planned on the pipeline's process count."""
    loaded = load_pipeline(pipeline)
    plans = plan_pipeline(loaded)  # also refuses a bf16/fp16 that disagrees with the accelerate config
    assert [p.action for p in plans] == ["run"] * len(batches)
    for stage in loaded.stages:
        recipe = dry_parse(stage.stage, stage.recipe, *to_cli(stage.overrides))
        summary = plan(recipe, processes=stage.num_processes)
        assert summary["global_batch_size"] == batches[stage.name], stage.name
        assert summary["output_dir"] == stage.output_dir
        assert recipe.precision == "bf16"
    commands = {p.stage.name: p.command for p in plans}
    last = commands[loaded.stages[-1].name]
    assert last[last.index("--num_processes") + 1] == str(loaded.stages[-1].num_processes)
    if "rloo" in commands:
        assert commands["rloo"][-4:] == [
            "--model_name_or_path",
            "data/qwen2.5-0.5b-sft",
            "--reward_model_name_or_path",
            "data/qwen2.5-0.5b-rm",
        ]


# --- Smoke run of the RLOO recipe: what a CPU replaces ----------------------------------------------------


def test_rloo_smoke_setup_drops_vllm_and_scores_with_a_tiny_reward_model(tmp_path):
    from alignment.smoke import prepare_smoke, smoke_cli

    recipe = dry_parse("rloo", RLOO)
    setup = prepare_smoke(recipe, tmp_path / "smoke")
    model = str(tmp_path / "smoke" / "model")
    assert setup.overrides == {
        "use_vllm": False,  # vLLM needs CUDA
        "num_generations": 2,  # the smoke batch of 2 completions is one whole group
        "max_completion_length": 16,
        "reward_model_name_or_path": model,
    }
    assert "use_vllm: True -> False" in setup.notes
    assert "reward model: data/qwen2.5-0.5b-rm -> the smoke model with a new one-output head" in setup.notes
    # UltraFeedback's columns [chosen, rejected] are kept: the generated rows are pairs, read for their prompts
    first = (tmp_path / "smoke" / "data" / "source0" / "train_prefs.jsonl").read_text().splitlines()[0]
    assert first.startswith('{"chosen": [{"role": "user"')
    cli = smoke_cli(tmp_path, recipe.training, setup.overrides)
    assert "--dataset_num_proc" not in cli  # RLOOConfig has no such key and would refuse it
    assert cli[cli.index("--reward_model_name_or_path") + 1] == model
