"""Around `trainer.train()`: the model card's metadata, the push through the Trainer, the trackers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers.integrations
from huggingface_hub import ModelCard

from alignment.data.mixture import DatasetSource
from alignment.errors import RecipeError
from alignment.recipe import parse_recipe
from alignment.trackers import require_trackers
from alignment.training import write_model_card

from .conftest import TINY_SFT, run_script


def tiny_recipe(output_dir: Path, *overrides: str):
    return parse_recipe("sft", [str(TINY_SFT), "--output_dir", str(output_dir), *overrides])


def with_model_and_sources(recipe, model: str, *source_ids: str):
    recipe.model.model_name_or_path = model
    sources = [DatasetSource(id=i, split="train") for i in source_ids]
    return dataclasses.replace(recipe, mixture=dataclasses.replace(recipe.mixture, datasets=sources))


def write_adapter_config(folder: Path, base: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": base})
    )


# ---- Model card --------------------------------------------------------------


def test_card_of_an_adapter_names_hub_ids_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.jsonl").write_text("")
    out = tmp_path / "out"
    write_adapter_config(out, "Qwen/Qwen2.5-0.5B")
    recipe = tiny_recipe(out, "--license", "apache-2.0")
    recipe = with_model_and_sources(
        recipe,
        "Qwen/Qwen2.5-0.5B",
        "HuggingFaceH4/ultrachat_200k",
        "local.jsonl",
        "data/tiny/sft",
        "trl-lib/tldr",
    )
    card = ModelCard.load(write_model_card(out, recipe, {"train_loss": 0.5}, extra_tags=["sft", "trackio"]))
    assert card.data.to_dict() == {
        "base_model": "Qwen/Qwen2.5-0.5B",
        "datasets": ["HuggingFaceH4/ultrachat_200k", "trl-lib/tldr"],
        "library_name": "peft",
        "license": "apache-2.0",
        "pipeline_tag": "text-generation",
        "tags": [
            "alignment",
            "sft",
            "trl",
            "transformers",
            "lora",
            "base_model:adapter:Qwen/Qwen2.5-0.5B",
            "trackio",
        ],
    }
    assert "- `local.jsonl`, split `train`" in card.text and "| train_loss | 0.5 |" in card.text
    assert "peft 0.21" in card.text and "A LORA adapter (PEFT) for `Qwen/Qwen2.5-0.5B`" in card.text


def test_card_of_a_local_full_model_invents_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    recipe = tiny_recipe(out)  # model data/tiny/model and data data/tiny/sft: local paths
    recipe.notes.append("bf16 off: no GPU")
    card = ModelCard.load(write_model_card(out, recipe, {"train_samples": 3}))
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["alignment", "sft", "trl"],
    }
    assert "Adjustments made when the recipe was read:\n\n- bf16 off: no GPU\n" in card.text
    assert "model_name_or_path: data/tiny/model" in card.text  # the recipe as run
    assert f"command-line overrides: `--output_dir {out}`" in card.text


def test_card_of_a_stage_on_an_adapter_folder_names_its_hub_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_adapter_config(tmp_path / "runs" / "lora", "meta-llama/Llama-3.2-1B")
    (out := tmp_path / "out").mkdir()
    recipe = with_model_and_sources(tiny_recipe(out), "runs/lora", "data/tiny/sft")
    card = ModelCard.load(write_model_card(out, recipe, {}))
    assert card.data.base_model == "meta-llama/Llama-3.2-1B" and card.data.library_name == "transformers"


# ---- Push through the Trainer ------------------------------------------------


class LocalHub:
    """Stands in for transformers' `hf_api()`: repos are folders under `root` (no network here)."""

    def __init__(self, root: Path, events: list[str]):
        self.root, self.events, self.created = root, events, []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        self.created.append({"repo_id": repo_id, "private": private})
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None, revision=None, run_as_future=False,
                      path_in_repo=None, **kwargs):  # fmt: skip
        from huggingface_hub.utils import filter_repo_objects

        self.events.append("upload")
        folder = Path(folder_path)
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        target = self.root / repo_id / (revision or "main") / (path_in_repo or "")
        for name in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes((folder / name).read_bytes())
        if not run_as_future:
            return SimpleNamespace(commit_url=f"local://{repo_id}")
        done = Future()
        done.set_result(None)
        return done


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_push_goes_through_the_trainer_with_our_card(workdir, monkeypatch, adapter):
    """Trainer.push_to_hub runs the callbacks' on_push_begin, saves once, uploads our card, then trackers end;
    a token planted with --hub_token is in no pushed file and no file of the run."""
    import transformers.trainer
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from alignment.data.mixture import load_mixture
    from alignment.model import load_model, load_tokenizer, peft_config_for
    from alignment.training import finish_training

    from .test_secrets import HUB_TOKEN

    events: list[str] = []
    hub = LocalHub(workdir / "hub", events)
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_TOKEN", "placeholder")  # restored after the test: parsing moves the token here
    lora = (
        ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"]
        if adapter
        else []
    )
    recipe = tiny_recipe(workdir / "runs" / "m", "--report_to", "none", "--disable_tqdm", "true", "--max_steps",
                         "2", "--save_steps", "1", "--push_to_hub", "true", "--hub_model_id", "me/tiny-sft",
                         "--hub_private_repo", "true", "--hub_revision", "v1", "--hub_token", HUB_TOKEN,
                         *lora)  # fmt: skip

    class RecordPush(TrainerCallback):
        def on_push_begin(self, args, state, control, **kwargs):
            events.append("push_begin")

    tokenizer = load_tokenizer(recipe)
    model = load_model(recipe, tokenizer)
    data = {"train": load_mixture(recipe.mixture)["train"].select(range(32))}
    trainer = SFTTrainer(model=model, args=recipe.training, train_dataset=data["train"], processing_class=tokenizer,
                         peft_config=peft_config_for(recipe, model), callbacks=[RecordPush()])  # fmt: skip
    result = trainer.train()
    events.clear()  # the checkpoint pushes during training are the Trainer's own business
    saves = []
    save_model, end = trainer.save_model, trainer.end
    monkeypatch.setattr(trainer, "save_model", lambda *a, **k: (saves.append(a), save_model(*a, **k)))
    monkeypatch.setattr(trainer, "end", lambda: (events.append("end"), end()))

    finish_training(trainer, recipe, result, data)

    assert events == ["push_begin", "upload", "end"] and len(saves) == 1
    assert hub.created == [{"repo_id": "me/tiny-sft", "private": True}]
    pushed = workdir / "hub" / "me" / "tiny-sft" / "v1"
    names = {p.name for p in pushed.iterdir()}
    assert not any(n.startswith("checkpoint-") for n in names) and "generation_config.json" in names
    assert (
        {"adapter_config.json", "adapter_model.safetensors"} <= names
        if adapter
        else "model.safetensors" in names
    )
    card = ModelCard.load(pushed / "README.md")
    assert card.data.library_name == ("peft" if adapter else "transformers")
    assert {"alignment", "sft", "trl"} <= set(card.data.tags) and ("lora" in card.data.tags) == adapter
    assert "recipes/tiny/sft/config.yaml" in card.text and "train_loss" in card.text  # ours, not TRL's
    assert (workdir / "runs" / "m" / "README.md").read_text() == (pushed / "README.md").read_text()
    written = [p for folder in (pushed, workdir / "runs" / "m") for p in folder.rglob("*") if p.is_file()]
    assert len(written) > 10 and not [p for p in written if HUB_TOKEN.encode() in p.read_bytes()]


# ---- Trackers ------------------------------------------------------------------


def test_require_trackers_names_the_missing_package_and_the_extra(monkeypatch):
    require_trackers([])
    require_trackers(["none"])
    require_trackers("all")
    require_trackers(["wandb"])  # installed by the dev extra
    monkeypatch.setattr(transformers.integrations, "is_wandb_available", lambda: False)
    monkeypatch.setattr(transformers.integrations, "is_trackio_available", lambda: False)
    monkeypatch.setattr(transformers.integrations, "is_tensorboard_available", lambda: False)
    with pytest.raises(
        RecipeError, match=r"`wandb` needs `wandb`, which is not installed.*pip install 'alignment\[wandb\]'"
    ):
        require_trackers(["wandb"])
    with pytest.raises(RecipeError, match=r"`trackio`.*pip install 'alignment\[trackio\]'"):
        require_trackers(["none", "trackio"])
    with pytest.raises(RecipeError, match=r"`tensorboard` needs `tensorboard`.*pip install tensorboard`"):
        require_trackers(["tensorboard"])
    with pytest.raises(RecipeError, match=r"`wandbb` is not a tracker.*did you mean `wandb`"):
        require_trackers(["wandbb"])


def trackio_values(project: str, run: str, metric: str) -> list[float]:
    """A run's values of one metric, through trackio's own CLI (it reads TRACKIO_DIR)."""
    got = subprocess.run(
        [sys.executable, "-m", "trackio.cli", "get", "metric", "--project", project, "--run", run,
         "--metric", metric, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [v["value"] for v in json.loads(got.stdout)["values"]]


@pytest.mark.slow
def test_tiny_sft_logs_its_metrics_to_trackio(workdir, tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    run_script("sft", TINY_SFT, "--disable_tqdm", "true", "--logging_steps", "2", "--max_steps", "6",
               "--report_to", "trackio", "--project", "alignment-tests", "--run_name", "tiny",
               "--output_dir", "runs/trackio", cwd=workdir)  # fmt: skip
    losses = trackio_values("alignment-tests", "tiny", "train/loss")
    assert len(losses) == 3 and losses[-1] < losses[0], losses  # steps 2, 4, 6
    state = json.loads((workdir / "runs" / "trackio" / "trainer_state.json").read_text())
    logged = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses == pytest.approx(logged)
    # The final evaluation runs after training ended: it still reaches the tracker.
    assert len(trackio_values("alignment-tests", "tiny", "eval/loss")) == 1
