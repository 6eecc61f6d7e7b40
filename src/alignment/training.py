"""What every stage does around `trainer.train()`: resume, save, metrics, model card, push, end.

transformers' Trainer resumes only when told which checkpoint; the Handbook's habit (resume from
the last checkpoint in `output_dir` by default) is kept here. The model card is ours because TRL's
does not record the recipe or the data that made the model; it goes through the Trainer's own push
(which runs the trackers' `on_push_begin`) in place of TRL's card.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

    from alignment.data.mixture import MixtureConfig
    from alignment.data.report import DataReport
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)

# The card's body; the front matter (`card_data`) is rendered by huggingface_hub from ModelCardData.
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Data

{% for line in data_lines %}{{ line }}
{% endfor %}
## Metrics

| metric | value |
| --- | --- |
{% for name, value in metrics %}| {{ name }} | {{ value }} |
{% endfor %}
## Recipe

File: `{{ recipe_path }}`; command-line overrides: `{{ overrides }}`

```yaml
{{ recipe_text }}
```
{% if notes %}
Adjustments made when the recipe was read:

{% for note in notes %}- {{ note }}
{% endfor %}{% endif %}
## Framework versions

- {{ versions }}
"""


def resume_checkpoint(training: Any) -> str | None:
    """The checkpoint to resume from: the recipe's `resume_from_checkpoint`, else the newest complete one.

    transformers' `get_last_checkpoint` takes the newest folder whatever it holds, so a run killed
    while saving fails every rerun on the half-written one; here it is skipped, and named.
    """
    if training.resume_from_checkpoint:
        return training.resume_from_checkpoint
    output = Path(training.output_dir)
    if not output.is_dir():
        return None
    found = sorted(
        (p for p in output.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    skipped = []
    for checkpoint in found:
        if checkpoint_is_complete(checkpoint, optimizer=not getattr(training, "save_only_model", False)):
            break
        skipped.append(checkpoint.name)
    else:
        checkpoint = None
    if skipped:
        logger.warning(
            f"skipping incomplete checkpoint(s) {', '.join(skipped)} (a run stopped while saving): "
            + (f"resuming from {checkpoint.name}" if checkpoint else "starting afresh")
        )
    elif checkpoint is not None:
        logger.info(f"resuming from {checkpoint}")
    return str(checkpoint) if checkpoint is not None else None


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
)


def checkpoint_is_complete(path: Path, optimizer: bool = True) -> bool:
    """Whether `path` holds what a resume reads: a readable trainer_state.json, weights, optimizer state.

    The Trainer writes the state last, so a kill mid-save leaves no (or a truncated) trainer_state.json.
    DeepSpeed keeps weights and optimizer in `global_step*/`.
    """
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    deepspeed = any(p.is_dir() for p in path.glob("global_step*"))
    weights = deepspeed or any((path / n).is_file() and (path / n).stat().st_size > 0 for n in WEIGHT_FILES)
    return weights and (deepspeed or not optimizer or (path / "optimizer.pt").is_file())


def finish_training(
    trainer: Any,
    recipe: Recipe,
    train_result: Any,
    datasets: Any,
    data_report: DataReport | None = None,
    resumed: bool = False,
) -> dict[str, float]:
    """Write metrics; save model, tokenizer, generation config and our card; push if asked; end the trackers."""
    from alignment.reruns import mark_finished, whole_run_loss

    output_dir = Path(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        from alignment.manifest import record_data

        record_data(recipe, datasets, data_report)  # run_manifest.json: the rows and files trained on
    metrics = dict(train_result.metrics)
    if resumed and (loss := whole_run_loss(trainer.state.log_history)) is not None:
        metrics["train_loss"] = loss  # transformers' covers only the resumed steps
    metrics["train_samples"] = len(datasets["train"])  # rows actually trained: after every counted drop
    from alignment.partial_tuning import parameter_counts

    # What trained, in the card and all_results.json: an adapter, the last layers, or everything.
    metrics["trainable_parameters"], metrics["total_parameters"] = parameter_counts(trainer.model)
    if recipe.args.early_stopping_patience is not None:
        metrics.update(early_stopping_summary(trainer.state))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    if "test" in datasets:
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_samples"] = len(datasets["test"])
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    use_our_model_card(trainer, recipe, metrics, data_report)
    save_final_model_whole(trainer)
    if trainer.args.push_to_hub:
        # Saves the model once, writes our card, runs the callbacks' on_push_begin (a tracker syncs its
        # dashboard), uploads all but checkpoint-* to `hub_model_id` at `hub_revision`.
        trainer.push_to_hub(commit_message=f"{recipe.stage} stage from {recipe.path or 'the command line'}")
    else:
        trainer.save_model()
        trainer.create_model_card()  # ours, as above
    if trainer.is_world_process_zero():
        pushed = (
            f", pushed to https://huggingface.co/{trainer.hub_model_id}" if trainer.args.push_to_hub else ""
        )
        logger.info(f"model, tokenizer, metrics and card saved to {output_dir}{pushed}")
    if trainer.is_world_process_zero():
        mark_finished(output_dir)  # last: a rerun of this recipe now has nothing to do
    trainer.accelerator.wait_for_everyone()
    trainer.end()  # finishes the trackers and destroys the process group: nothing collective after this
    return metrics


def early_stopping_summary(state: Any) -> dict[str, Any]:
    """Where the run stopped and which checkpoint it kept, logged and put in the metrics (and the card)."""
    best = state.best_model_checkpoint
    best_step = int(best.rsplit("-", 1)[-1]) if best else None
    stopped = state.global_step < state.max_steps
    logger.info(
        (f"early stopping: stopped at step {state.global_step} of {state.max_steps}" if stopped
         else f"early stopping: ran all {state.max_steps} steps")
        + (f"; the best checkpoint (step {best_step}, {state.best_metric:.4g}) is the saved model" if best else "")
    )  # fmt: skip
    summary = {"early_stopped": int(stopped), "stopped_at_step": state.global_step}
    return summary | ({"best_step": best_step, "best_metric": state.best_metric} if best else {})


FINAL_PARTIAL = "_final.partial"  # under output_dir; the Trainer's Hub pushes skip "_*" folders


def save_final_model_whole(trainer: Any) -> None:
    """Make the final `trainer.save_model` (also the one inside `push_to_hub`) write whole files only.

    transformers writes the model straight into `output_dir`: a run killed while saving leaves a
    half-written model.safetensors there, which the next stage loads (or fails on). Here the model,
    tokenizer and generation config are written to `output_dir/_final.partial` and then each file
    is moved into place by a rename, so `output_dir` holds either the previous file or the new one,
    never half of one. A rerun resumes from the last checkpoint and saves again. Checkpoint saves
    (into `checkpoint-*`) are left to the Trainer.
    """
    original = trainer.save_model
    final = Path(trainer.args.output_dir)

    def save_model(output_dir: str | None = None, _internal_call: bool = False) -> None:
        if output_dir is not None and Path(output_dir).resolve() != final.resolve():
            return original(output_dir, _internal_call=_internal_call)
        partial = final / FINAL_PARTIAL
        if trainer.args.should_save:
            shutil.rmtree(partial, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        original(str(partial), _internal_call=True)  # every rank: ZeRO-3 and FSDP gather the weights
        if trainer.args.should_save:
            # A PEFT save writes only the adapter: the generation config (EOS = end of turn) goes beside it.
            # A reward model (sequence classification) generates nothing and has none.
            generation_config = getattr(
                trainer.accelerator.unwrap_model(trainer.model), "generation_config", None
            )
            if generation_config is not None:
                generation_config.save_pretrained(partial)
            move_into_place(partial, final)
        trainer.accelerator.wait_for_everyone()

    trainer.save_model = save_model


def move_into_place(partial: Path, final: Path) -> None:
    """Move every entry of `partial` into `final` by renames (atomic per file), then remove `partial`."""
    for entry in sorted(partial.iterdir()):
        target = final / entry.name
        if entry.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(entry, target)
    partial.rmdir()


def use_our_model_card(
    trainer: Any, recipe: Recipe, metrics: dict[str, float], data_report: DataReport | None = None
) -> None:
    """Make `trainer.create_model_card` write our card: TRL's `push_to_hub` calls it after saving the model."""

    def create_model_card(
        model_name: str | None = None, tags: list[str] | None = None, **ignored: Any
    ) -> None:
        # push_to_hub passes the model's tags (TRL's stage tags, a tracker's dashboard link) as `tags`.
        if trainer.is_world_process_zero():
            write_model_card(Path(trainer.args.output_dir), recipe, metrics, tags, data_report)

    trainer.create_model_card = create_model_card


def write_model_card(
    output_dir: Path,
    recipe: Recipe,
    metrics: dict[str, float],
    extra_tags: list[str] | None = None,
    data_report: DataReport | None = None,
) -> Path:
    """README.md with the recipe as run, its data sources and its metrics, and Hub metadata in front."""
    import peft
    import torch
    import transformers
    import trl
    from huggingface_hub import ModelCard

    adapter = read_adapter_config(output_dir)
    base = recipe.model.model_name_or_path
    if adapter is not None:
        kind = adapter.get("peft_type", "PEFT")
        summary = f"A {kind} adapter (PEFT) for `{base}`, trained in the **{recipe.stage.upper()}** stage"
    elif is_reward_model(recipe):
        summary = f"A reward model (`{base}` with a one-output score head), trained in the **RM** stage"
    elif is_classifier(recipe):
        saved = Path(output_dir) / "config.json"  # saved before the card: its id2label are the classes
        labels = list(json.loads(saved.read_text()).get("id2label", {}).values()) if saved.is_file() else []
        shown = f" with {len(labels)} labels ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"
        summary = f"A text classifier{shown if labels else ''} (`{base}` with a score head), trained in the **CLASSIFY** stage"
    else:
        summary = f"`{base}` after the **{recipe.stage.upper()}** stage"
    versions = (
        f"transformers {transformers.__version__}, trl {trl.__version__}, "
        + (f"peft {peft.__version__}, " if adapter is not None else "")
        + f"torch {torch.__version__}, python {platform.python_version()}"
    )
    recipe_text = Path(recipe.path).read_text() if recipe.path else "# no recipe file: command line only\n"
    card = ModelCard.from_template(
        card_data(output_dir, recipe, extra_tags),
        template_str=CARD_TEMPLATE,
        title=Path(output_dir).name,
        summary=f"{summary}, with the `alignment` recipes.",
        data_lines=describe_mixture(recipe.mixture)
        + (["", *data_report.card_lines()] if data_report else []),
        metrics=[(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in sorted(metrics.items())],
        recipe_path=recipe.path,
        overrides=" ".join(recipe.cli_overrides) or "none",
        recipe_text=recipe_text.rstrip(),
        notes=recipe.notes,
        versions=versions,
    )
    from alignment.secrets import redact

    path = Path(output_dir) / "README.md"
    partial = path.with_suffix(".md.partial")  # written whole, then moved: a kill never leaves half a card
    partial.write_text(redact(str(card)))  # the recipe text and command line may hold a token
    partial.replace(path)
    return path


def card_data(output_dir: Path, recipe: Recipe, extra_tags: list[str] | None = None) -> ModelCardData:
    """The card's front matter. Only facts: a local model or dataset path is no Hub id and is left out.

    An adapter output says `library_name: peft` with the tags PEFT's own card uses (`transformers`,
    `lora`, `base_model:adapter:<base>`); a full model says `library_name: transformers`.
    """
    from huggingface_hub import ModelCardData

    from alignment.data.mixture import is_local
    from alignment.model import adapter_base

    model = recipe.model.model_name_or_path
    base = hub_id(adapter_base(model) or model)  # an adapter folder given as the model: its base
    tags = ["alignment", recipe.stage, "trl"]
    adapter = read_adapter_config(output_dir)
    if adapter is not None:
        tags.append("transformers")
        if adapter.get("peft_type") == "LORA":  # DoRA too: a LoRA variant
            tags.append("lora")
        if base is not None:
            tags.append(f"base_model:adapter:{base}")
    tags += extra_tags or []
    datasets = list(dict.fromkeys(s.id for s in recipe.mixture.datasets if not is_local(s.id)))
    scorer = is_reward_model(recipe) or is_classifier(recipe)  # a sequence-classification head
    return ModelCardData(
        base_model=base,
        library_name="peft" if adapter is not None else "transformers",
        license=recipe.args.license,
        datasets=datasets or None,
        pipeline_tag="text-classification" if scorer else "text-generation",
        tags=tags,
    )


def is_classifier(recipe: Recipe) -> bool:
    """The stage trains a text classifier (sequence classification, an output per label of its data)."""
    from alignment.stages import STAGES

    return recipe.stage in STAGES and STAGES[recipe.stage].head == "classify"


def is_reward_model(recipe: Recipe) -> bool:
    """The stage trains a scorer (sequence classification, one output), not a generator."""
    from alignment.stages import STAGES

    return recipe.stage in STAGES and STAGES[recipe.stage].head == "reward"


def hub_id(name: str | None) -> str | None:
    """`name` when it can be a Hub repo id, else None (a local folder or file)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from alignment.data.mixture import is_local

    if not name or is_local(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def read_adapter_config(output_dir: Path) -> dict | None:
    """The saved adapter's config when `output_dir` holds a PEFT adapter, else None."""
    path = Path(output_dir) / "adapter_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def describe_mixture(mixture: MixtureConfig) -> list[str]:
    lines = []
    for s in mixture.datasets:
        share = f", {s.samples} samples" if s.samples else f", weight {s.weight}" if s.weight else ""
        lines.append(f"- `{s.id}`" + (f" ({s.config})" if s.config else "") + f", split `{s.split}`{share}")
    if mixture.test_split:
        lines.append(f"- evaluation: split `{mixture.test_split}` of each source")
    elif mixture.test_split_size:
        lines.append(f"- evaluation: {mixture.test_split_size} of the mixed rows (seed {mixture.seed})")
    return lines
