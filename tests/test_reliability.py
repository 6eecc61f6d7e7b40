"""Runs that fail safe: half-written checkpoints are skipped on resume, a NaN loss stops the run in one line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from alignment.errors import RecipeError
from alignment.training import checkpoint_is_complete, resume_checkpoint

from .conftest import TINY_SFT


class Args:
    def __init__(self, output_dir: Path, save_only_model: bool = False):
        self.output_dir, self.save_only_model, self.resume_from_checkpoint = (
            str(output_dir),
            save_only_model,
            None,
        )


def checkpoint(
    root: Path, step: int, *, state: str | None = '{"global_step": 1}', weights=True, optimizer=True
):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
    if optimizer:
        (folder / "optimizer.pt").write_bytes(b"optimizer")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_resume_takes_the_newest_complete_checkpoint_and_names_the_ones_it_skips(tmp_path, caplog):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 10)  # complete, and newer than the next by step (not by name order)
    checkpoint(tmp_path, 12, state=None)  # killed before the trainer state: the last file written
    checkpoint(tmp_path, 14, state='{"global_st')  # killed while writing it
    with caplog.at_level(logging.WARNING, logger="alignment.training"):
        assert resume_checkpoint(Args(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert "skipping incomplete checkpoint(s) checkpoint-14, checkpoint-12" in caplog.text
    assert "resuming from checkpoint-10" in caplog.text


def test_with_no_complete_checkpoint_the_run_starts_afresh(tmp_path, caplog):
    checkpoint(tmp_path, 3, weights=False)
    with caplog.at_level(logging.WARNING, logger="alignment.training"):
        assert resume_checkpoint(Args(tmp_path)) is None
    assert "starting afresh" in caplog.text


def test_optimizer_state_is_required_unless_only_the_model_is_saved(tmp_path):
    folder = checkpoint(tmp_path, 5, optimizer=False)
    assert not checkpoint_is_complete(folder)
    assert checkpoint_is_complete(folder, optimizer=False)
    assert resume_checkpoint(Args(tmp_path, save_only_model=True)) == str(folder)


@pytest.mark.slow
def test_a_nan_loss_stops_training_in_one_line_naming_the_step(workdir, monkeypatch):
    import torch
    from trl import SFTTrainer

    from alignment.callbacks import stage_callbacks
    from alignment.data.prepare import prepare_data
    from alignment.model import load_model, load_tokenizer
    from alignment.recipe import parse_recipe

    monkeypatch.chdir(workdir)
    recipe = parse_recipe(
        "sft", [str(TINY_SFT), "--max_steps", "4", "--logging_steps", "1", "--output_dir", "runs/nan",
                "--report_to", "none", "--disable_tqdm", "true"],
    )  # fmt: skip
    assert recipe.training.logging_nan_inf_filter is False  # transformers would hide the NaN in the logs
    tokenizer = load_tokenizer(recipe)
    data, _ = prepare_data(recipe, tokenizer)
    model = load_model(recipe, tokenizer)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")  # tied to the embeddings: every forward pass is NaN
    trainer = SFTTrainer(model=model, args=recipe.training, train_dataset=data["train"].select(range(64)),
                         processing_class=tokenizer, callbacks=stage_callbacks())  # fmt: skip
    with pytest.raises(
        RecipeError, match=r"^training stopped at step 1: the loss is nan \(no checkpoint yet\)"
    ):
        trainer.train()
    assert not list((workdir / "runs" / "nan").glob("checkpoint-*"))


def test_a_nan_between_logs_is_caught_before_the_save_that_would_keep_it(workdir, monkeypatch):
    """Logging every 10 steps, saving every 2: the NaN of step 3 stops the run at the step-4 save, and the
    checkpoint kept (and named) is step 2's, never a NaN one."""
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from alignment.callbacks import stage_callbacks
    from alignment.data.prepare import prepare_data
    from alignment.model import load_model, load_tokenizer
    from alignment.recipe import parse_recipe

    class PoisonAfterStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.lm_head.weight[0, 0] = float("nan")

    monkeypatch.chdir(workdir)
    recipe = parse_recipe(
        "sft", [str(TINY_SFT), "--max_steps", "8", "--logging_steps", "10", "--save_steps", "2",
                "--output_dir", "runs/nan-between", "--report_to", "none", "--disable_tqdm", "true"],
    )  # fmt: skip
    tokenizer = load_tokenizer(recipe)
    data, _ = prepare_data(recipe, tokenizer)
    trainer = SFTTrainer(model=load_model(recipe, tokenizer), args=recipe.training,
                         train_dataset=data["train"].select(range(128)), processing_class=tokenizer,
                         callbacks=[*stage_callbacks(), PoisonAfterStep2()])  # fmt: skip
    with pytest.raises(RecipeError, match=r"^training stopped at step 4: the loss is nan \(the last checkpoint, "
                       r"checkpoint-2, is kept\)"):  # fmt: skip
        trainer.train()
    saved = sorted(p.name for p in (workdir / "runs" / "nan-between").glob("checkpoint-*"))
    assert saved == ["checkpoint-2"]


def test_trainer_state_is_what_marks_a_checkpoint_complete():
    # transformers writes trainer_state.json last in `_save_checkpoint`; the completeness rule relies on it.
    import inspect

    from transformers import Trainer

    source = inspect.getsource(Trainer._save_checkpoint)
    assert (
        source.rindex("save_to_json")
        > source.index("_save_optimizer_and_scheduler")
        > source.index("save_model")
    )


# --- Reruns: resume only the same recipe -------------------------------------------------------------


def begin(workdir, *overrides):
    from alignment.recipe import parse_recipe
    from alignment.reruns import begin_run

    recipe = parse_recipe("sft", [str(TINY_SFT), "--output_dir", "runs/rerun", *overrides])
    return begin_run(recipe)


def test_first_run_records_its_recipe_and_starts_from_scratch(workdir, monkeypatch):
    from alignment.reruns import RUN_RECIPE

    monkeypatch.chdir(workdir)
    start = begin(workdir)
    assert (start.finished, start.checkpoint) == (False, None)
    record = json.loads((workdir / "runs" / "rerun" / RUN_RECIPE).read_text())
    assert record["status"] == "running" and record["values"]["learning_rate"] == 1.5e-3


def test_a_rerun_with_other_training_values_is_refused_naming_each_key(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    begin(workdir)
    with pytest.raises(RecipeError) as err:
        begin(workdir, "--learning_rate", "1e-5", "--num_train_epochs", "3")
    message = str(err.value)
    assert "`learning_rate` 0.0015 -> 1e-05" in message and "`num_train_epochs` 2 -> 3.0" in message
    assert "--output_dir" in message and "--overwrite_output_dir true" in message
    begin(workdir, "--logging_steps", "5", "--report_to", "none")  # logging is not training: resumes
    begin(workdir, "--dataloader_num_workers", "2")  # how batches load, not which
    for changed, message in ((("--truncation", "drop"), '`truncation` "truncate" -> "drop"'),  # other rows
                             (("--dataloader_drop_last", "true"), "`dataloader_drop_last` false -> true")):  # fmt: skip
        with pytest.raises(RecipeError, match=re.escape(message)):
            begin(workdir, *changed)


def test_checkpoints_without_a_run_record_resume_with_a_warning(workdir, monkeypatch, caplog):
    """An output_dir from another tool or an older version: nothing to compare, so the resume is announced."""
    monkeypatch.chdir(workdir)
    checkpoint(workdir / "runs" / "rerun", 4)
    with caplog.at_level("WARNING"):
        start = begin(workdir)
    assert start.checkpoint.endswith("checkpoint-4")
    assert "holds checkpoints but no run_recipe.json" in caplog.text and "without comparing" in caplog.text


def test_a_finished_run_rerun_unchanged_has_nothing_to_do(workdir, monkeypatch):
    from alignment.reruns import mark_finished

    monkeypatch.chdir(workdir)
    begin(workdir)
    mark_finished(workdir / "runs" / "rerun")
    assert begin(workdir).finished


def test_overwrite_output_dir_starts_afresh_keeping_nothing_stale(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    begin(workdir)
    checkpoint(workdir / "runs" / "rerun", 4)
    start = begin(workdir, "--learning_rate", "1e-5", "--overwrite_output_dir", "true")
    assert (start.finished, start.checkpoint) == (False, None)
    assert not (workdir / "runs" / "rerun" / "checkpoint-4").exists()


def test_whole_run_loss_weights_each_logged_interval_by_its_steps():
    from alignment.reruns import whole_run_loss

    history = [
        {"loss": 4.0, "step": 2},
        {"loss": 2.0, "step": 4},
        {"eval_loss": 9.0, "step": 4},
        {"loss": 1.0, "step": 5},
    ]
    assert whole_run_loss(history) == pytest.approx((4 * 2 + 2 * 2 + 1 * 1) / 5)
