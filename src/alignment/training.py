"""What every stage does around `trainer.train()`: resume, save, metrics, model card, push.

transformers' Trainer resumes only when told which checkpoint; the Handbook's habit (resume from
the last checkpoint in `output_dir` by default) is kept here. The model card is ours because TRL's
does not record the recipe or the data that made the model.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from alignment.data.mixture import MixtureConfig
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)


def resume_checkpoint(training: Any) -> str | None:
    """The checkpoint to resume from: the recipe's `resume_from_checkpoint`, else the last one in `output_dir`."""
    from transformers.trainer_utils import get_last_checkpoint

    if training.resume_from_checkpoint:
        return training.resume_from_checkpoint
    output = Path(training.output_dir)
    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    if last is not None:
        logger.info(f"resuming from {last}")
    return last


def finish_training(trainer: Any, recipe: Recipe, train_result: Any, datasets: Any) -> dict[str, float]:
    """Save model, tokenizer and generation config; write metrics and the model card; push if asked."""
    output_dir = Path(recipe.training.output_dir)
    metrics = dict(train_result.metrics)
    metrics["train_samples"] = len(datasets["train"])
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    if "test" in datasets:
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_samples"] = len(datasets["test"])
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # Trainer.save_model would also push (with TRL's card); we push once, below, with ours.
    push, trainer.args.push_to_hub = trainer.args.push_to_hub, False
    trainer.save_model(str(output_dir))
    trainer.args.push_to_hub = push
    if trainer.accelerator.is_main_process:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        # A PEFT save writes only the adapter: the generation config (EOS = end of turn) goes beside it.
        unwrapped.generation_config.save_pretrained(output_dir)
        write_model_card(output_dir, recipe, metrics)
        logger.info(f"model, tokenizer, metrics and card saved to {output_dir}")
        if recipe.training.push_to_hub:
            push_to_hub(output_dir, recipe)
    trainer.accelerator.wait_for_everyone()
    return metrics


def write_model_card(output_dir: Path, recipe: Recipe, metrics: dict[str, float]) -> Path:
    """README.md with the recipe as run, its data sources and its metrics."""
    import torch
    import transformers
    import trl

    recipe_text = Path(recipe.path).read_text() if recipe.path else "# no recipe file: command line only\n"
    overrides = " ".join(recipe.cli_overrides) or "none"
    base = recipe.model.model_name_or_path
    lines = [
        "---",
        yaml.safe_dump(
            {"base_model": base, "library_name": "transformers", "tags": ["alignment", recipe.stage, "trl"]},
            sort_keys=False,
        ).strip(),
        "---",
        "",
        f"# {Path(output_dir).name}",
        "",
        f"`{base}` after the **{recipe.stage.upper()}** stage, trained with the `alignment` recipes.",
        "",
        "## Data",
        "",
        *describe_mixture(recipe.mixture),
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in sorted(metrics.items())
        ),
        "",
        "## Recipe",
        "",
        f"File: `{recipe.path}`; command-line overrides: `{overrides}`",
        "",
        "```yaml",
        recipe_text.rstrip(),
        "```",
        "",
        *(
            ["Adjustments made when the recipe was read:", "", *(f"- {n}" for n in recipe.notes), ""]
            if recipe.notes
            else []
        ),
        "## Framework versions",
        "",
        f"- transformers {transformers.__version__}, trl {trl.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}",
        "",
    ]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


def describe_mixture(mixture: MixtureConfig) -> list[str]:
    lines = [
        f"- `{s.id}`" + (f" ({s.config})" if s.config else "") + f", split `{s.split}`, weight {s.weight}"
        for s in mixture.datasets
    ]
    if mixture.test_split:
        lines.append(f"- evaluation: split `{mixture.test_split}` of each source")
    elif mixture.test_split_size:
        lines.append(f"- evaluation: {mixture.test_split_size} of the mixed rows (seed {mixture.seed})")
    return lines


def push_to_hub(output_dir: Path, recipe: Recipe) -> str:
    """Upload the final model folder (not the intermediate checkpoints) to `hub_model_id`."""
    from huggingface_hub import HfApi

    training = recipe.training
    repo_id = training.hub_model_id or Path(output_dir).name
    api = HfApi(token=training.hub_token)
    api.create_repo(repo_id, private=bool(training.hub_private_repo), exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        revision=training.hub_revision if hasattr(training, "hub_revision") else None,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt"],
        commit_message=f"{recipe.stage} stage from {recipe.path}",
    )
    logger.info(f"pushed {output_dir} to https://huggingface.co/{repo_id}")
    return repo_id
