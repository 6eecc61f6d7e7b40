"""Every shipped recipe and accelerate config is valid: recipes dry-run offline, configs load in accelerate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignment.check import infer_stage, plan
from alignment.pipeline import is_pipeline_file
from alignment.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]
# Pipeline files (a `stages:` list) are not stage recipes: tests/test_pipeline.py loads them.
RECIPE_FILES = sorted(p for p in (REPO / "recipes").glob("**/*.yaml") if not is_pipeline_file(p))
ACCELERATE_CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
ZEPHYR_SFT_FULL = REPO / "recipes" / "zephyr-7b-beta" / "sft" / "config_full.yaml"


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """One process, no distributed launcher; and undo any `env:` block a recipe sets."""
    saved = dict(os.environ)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


def test_recipes_are_found():
    assert len(RECIPE_FILES) >= 4
    assert ZEPHYR_SFT_FULL in RECIPE_FILES


@pytest.mark.parametrize("path", RECIPE_FILES, ids=[rel(p) for p in RECIPE_FILES])
def test_recipe_dry_runs(path, request, monkeypatch):
    if "tiny" in path.parts:  # its data is local: the dry run reads its first rows, so build it first
        monkeypatch.chdir(request.getfixturevalue("workdir"))
    stage = infer_stage(str(path))
    assert stage == path.parent.name
    # --dry_run, as `alignment check` parses: what the GPU target has (vLLM, a tracker) is not refused here
    recipe = parse_recipe(stage, [str(path), "--dry_run"])
    summary = plan(recipe)
    t = recipe.training
    assert summary["stage"] == stage
    assert summary["model"] == recipe.model.model_name_or_path
    assert summary["model"]
    assert summary["datasets"]
    assert all(isinstance(d, str) for d in summary["datasets"])
    assert summary["processes"] == 1
    assert summary["global_batch_size"] == t.per_device_train_batch_size * t.gradient_accumulation_steps * 1
    assert summary["output_dir"] == t.output_dir
    # print_plan emits this as YAML; it must serialise and read back.
    assert yaml.safe_load(yaml.safe_dump(summary))["global_batch_size"] == summary["global_batch_size"]


def test_zephyr_full_sft_global_batch_is_128_on_8_gpus(monkeypatch):
    recipe = parse_recipe("sft", [str(ZEPHYR_SFT_FULL)])
    assert plan(recipe, processes=8)["global_batch_size"] == 128
    # Under a launcher the world size comes from the environment (set after parsing: with WORLD_SIZE set,
    # TrainingArguments would try to join an 8-process group).
    monkeypatch.setenv("WORLD_SIZE", "8")
    summary = plan(recipe)
    assert summary["processes"] == 8
    assert summary["global_batch_size"] == 128


def dry_run(tmp_path: Path, **extra_env: str) -> tuple[subprocess.CompletedProcess, Path]:
    hf_home = tmp_path / "hf"  # empty cache: any download attempt would fail loudly
    drop = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "WANDB_MODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra_env)
    done = subprocess.run(
        [sys.executable, "scripts/run_sft.py", rel(ZEPHYR_SFT_FULL), "--dry_run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, hf_home


def test_dry_run_script_prints_a_yaml_plan_offline(tmp_path):
    done, hf_home = dry_run(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = yaml.safe_load(done.stdout)
    assert isinstance(summary, dict)
    assert summary["global_batch_size"] == 16  # 16 per device x 1 accumulation x 1 process
    assert summary["model"] == "mistralai/Mistral-7B-v0.1"
    assert summary["stage"] == "sft"
    for sign in ("Traceback", "OfflineModeIsEnabled", "huggingface.co", "Couldn't reach"):
        assert sign not in done.stderr
    downloaded = [p for p in hf_home.rglob("*") if p.is_file()] if hf_home.exists() else []
    assert downloaded == []


def test_dry_run_stdout_is_yaml_with_wandb_offline(tmp_path):
    done, _ = dry_run(tmp_path, WANDB_MODE="offline")
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load(done.stdout)["global_batch_size"] == 16


# --- Accelerate configs --------------------------------------------------------------------------------

ZERO_STAGE = {"zero2": 2, "zero3": 3, "zero3_offload": 3, "multi_node": 3}


def load_accelerate_config(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def value(x) -> str:
    return str(getattr(x, "value", x))


def test_accelerate_configs_are_found():
    names = {p.stem for p in ACCELERATE_CONFIGS}
    assert {"ddp", "fsdp", "zero2", "zero3", "zero3_offload", "multi_node"} <= names


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.stem for p in ACCELERATE_CONFIGS])
def test_accelerate_config_loads_with_bf16(path):
    config = load_accelerate_config(path)
    assert value(config.mixed_precision) == "bf16"
    assert config.num_processes % config.num_machines == 0
    assert value(config.distributed_type) in ("MULTI_GPU", "DEEPSPEED", "FSDP")


@pytest.mark.parametrize("name", sorted(ZERO_STAGE))
def test_deepspeed_config_has_the_zero_stage_its_name_says(name):
    config = load_accelerate_config(REPO / "accelerate_configs" / f"{name}.yaml")
    assert value(config.distributed_type) == "DEEPSPEED"
    ds = config.deepspeed_config
    assert ds["zero_stage"] == ZERO_STAGE[name]
    offload = "cpu" if "offload" in name else "none"
    assert ds["offload_optimizer_device"] == offload
    assert ds["offload_param_device"] == offload


def test_every_deepspeed_config_is_checked():
    deepspeed = {
        p.stem for p in ACCELERATE_CONFIGS if value(load_accelerate_config(p).distributed_type) == "DEEPSPEED"
    }
    assert deepspeed == set(ZERO_STAGE)


def test_multi_node_config_spans_two_nodes_of_eight():
    config = load_accelerate_config(REPO / "accelerate_configs" / "multi_node.yaml")
    assert (config.num_machines, config.num_processes) == (2, 16)


def test_fsdp_config_is_fsdp2():
    config = load_accelerate_config(REPO / "accelerate_configs" / "fsdp.yaml")
    assert value(config.distributed_type) == "FSDP"
    assert config.fsdp_config["fsdp_version"] == 2
    # The trainer turns on gradient checkpointing; the FSDP one must stay off so they are not both on.
    assert config.fsdp_config["fsdp_activation_checkpointing"] is False


def test_check_folder_reports_every_recipe_in_one_line(tmp_path, capsys):
    """`alignment check FOLDER`: how a whole collection (ours, the Handbook's) is checked against this stack."""
    from alignment.check import check_folder

    good = {**yaml.safe_load(ZEPHYR_SFT_FULL.read_text()), "packing": False}
    for stage, keys in (("sft", good), ("dpo", good)):  # SFT keys such as `packing` are not DPO keys
        (tmp_path / "model" / stage).mkdir(parents=True)
        (tmp_path / "model" / stage / "config.yaml").write_text(yaml.safe_dump(keys))
    failed = check_folder(str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert failed == [str(tmp_path / "model" / "dpo" / "config.yaml")]
    assert out[-1] == "1 of 2 recipes dry-run"
    assert out[0] == f"error  {tmp_path}/model/dpo/config.yaml: unknown key `packing` for stage dpo"
    assert out[1].startswith("ok") and "(sft, bf16," in out[1]
