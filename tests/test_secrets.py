"""Secrets: a planted token appears in no file a run writes, no log line, no plan; pushes are private."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from alignment.errors import RecipeError
from alignment.recipe import parse_recipe
from alignment.secrets import REDACTED, redact

from .conftest import QUICK, TINY_SFT, run_script

HUB_TOKEN = "hf_PLANTEDhubTOKENdoNotLeak0123456789"
WANDB_KEY = "wandbPLANTEDkeyDoNotLeak9876543210"


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.setenv(
        "HF_TOKEN", "placeholder"
    )  # recorded, so the token a test moves here is removed after it
    monkeypatch.delenv("HF_TOKEN")
    return monkeypatch


def test_hub_token_leaves_the_training_config_for_the_environment(workdir, clean_env):
    clean_env.chdir(workdir)
    recipe = parse_recipe("sft", [str(TINY_SFT), "--hub_token", HUB_TOKEN])
    assert recipe.training.hub_token is None  # so training_args.bin cannot hold it
    assert os.environ["HF_TOKEN"] == HUB_TOKEN  # huggingface_hub authenticates the push with it
    assert redact(f"--hub_token {HUB_TOKEN}") == f"--hub_token {REDACTED}"
    assert any("hub_token moved to the HF_TOKEN" in note for note in recipe.notes)


def test_pushes_are_private_unless_the_recipe_says_otherwise(workdir, clean_env):
    clean_env.chdir(workdir)
    assert parse_recipe("sft", [str(TINY_SFT), "--push_to_hub", "true"]).training.hub_private_repo is True
    public = parse_recipe("sft", [str(TINY_SFT), "--push_to_hub", "true", "--hub_private_repo", "false"])
    assert public.training.hub_private_repo is False


def test_dry_run_plan_never_prints_a_token(workdir, clean_env):
    recipe = dict(yaml.safe_load(TINY_SFT.read_text()), env={"WANDB_API_KEY": WANDB_KEY}, hub_token=HUB_TOKEN)
    path = workdir / "secret.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = subprocess.run(
        [sys.executable, "-m", "alignment.cli", "check", str(path), "--stage", "sft"],
        cwd=workdir, capture_output=True, text=True, env={**os.environ, "HF_TOKEN": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert HUB_TOKEN not in done.stdout + done.stderr
    assert WANDB_KEY not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_planted_token_is_in_no_file_and_no_log_of_a_run(workdir, clean_env):
    """Token on the command line and in the recipe's `env:` block; search every byte the run writes."""
    recipe = dict(yaml.safe_load(TINY_SFT.read_text()), env={"WANDB_API_KEY": WANDB_KEY})
    path = workdir / "secret.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = workdir / "runs" / "secret"
    done = run_script(
        "sft", path, *QUICK, "--max_steps", "2", "--save_steps", "1", "--hub_token", HUB_TOKEN,
        "--output_dir", str(out), cwd=workdir,
    )  # fmt: skip
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "README.md" for p in files)
    for secret in (HUB_TOKEN, WANDB_KEY):
        assert secret not in done.stdout + done.stderr
        for file in files:  # every file, including what a push would upload and the checkpoints
            assert secret.encode() not in file.read_bytes(), file
    card = (out / "README.md").read_text()
    assert f"--hub_token {REDACTED}" in card and f"WANDB_API_KEY: {REDACTED}" in card


def pickle_only_copy(model_dir, target, marker):
    """`model_dir` with its weights saved as a pickle that also writes `marker` when unpickled."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(model_dir, target)
    state = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()

    class Payload:  # what a malicious pickle does: run code at load time
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({**state, "payload": Payload()}, target / "pytorch_model.bin")
    return target


def test_pickle_weights_are_refused_while_parsing_unless_allowed(workdir, tmp_path):
    from alignment.model import load_model, load_tokenizer

    marker = tmp_path / "pickle-ran"
    model = pickle_only_copy(workdir / "data" / "tiny" / "model", tmp_path / "pickled", marker)
    args = [str(TINY_SFT), "--model_name_or_path", str(model)]
    with pytest.raises(RecipeError, match=r"`model_name_or_path`: .*pickled has only pickle weights "
                       r"\(pytorch_model.bin\).*`allow_pickle_weights: true`"):  # fmt: skip
        parse_recipe("sft", args)
    assert not marker.exists()
    # Opted in: transformers reads the pickle with torch's weights_only loader, which still refuses code.
    recipe = parse_recipe("sft", [*args, "--allow_pickle_weights", "true"])
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        load_model(recipe, load_tokenizer(recipe))
    assert not marker.exists()


def test_a_hub_model_with_only_pickle_weights_is_named_in_one_line(workdir, tmp_path, monkeypatch):
    import transformers

    from alignment.model import load_model, load_tokenizer

    monkeypatch.chdir(workdir)
    recipe = parse_recipe("sft", [str(TINY_SFT)])
    calls = []

    def hub_without_safetensors(source, **kwargs):  # what transformers raises for such a repo
        calls.append(kwargs["use_safetensors"])
        raise OSError(f"{source} does not appear to have a file named model.safetensors or "
                      "model.safetensors.index.json and thus cannot be loaded with `safetensors`.")  # fmt: skip

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", hub_without_safetensors)
    with pytest.raises(
        RecipeError, match="has no safetensors weights, only pickle ones.*allow_pickle_weights"
    ):
        load_model(recipe, load_tokenizer(recipe))
    assert calls == [True]


def test_trust_remote_code_is_off_by_default_and_loud_when_on(workdir, clean_env, caplog):
    clean_env.chdir(workdir)
    assert parse_recipe("sft", [str(TINY_SFT)]).training.trust_remote_code is False
    with caplog.at_level("WARNING"):
        recipe = parse_recipe("sft", [str(TINY_SFT), "--trust_remote_code", "true"])
    assert recipe.training.trust_remote_code is True
    assert "trust_remote_code is on: Python code from the model's repository will run" in caplog.text


def test_a_learning_rate_of_zero_is_run_with_a_note_and_a_negative_one_refused(workdir, clean_env):
    clean_env.chdir(workdir)
    recipe = parse_recipe("sft", [str(TINY_SFT), "--learning_rate", "0"])
    assert "learning_rate is 0: the weights will not change" in recipe.notes
    with pytest.raises(RecipeError, match="learning_rate"):
        parse_recipe("sft", [str(TINY_SFT), "--learning_rate", "-1e-5"])
