"""One function that builds any stage's TRL trainer from a parsed recipe, its tokenizer and its data.

The stage scripts differed only in the trainer class and in what it takes besides the policy (a
frozen reference for DPO and KTO, rewards for GRPO and RLOO, a one-output head for a reward model).
`alignment.stages` says which, as data; this module loads those pieces the way every stage should
(safetensors only, adapters merged, the reference being the previous stage and not its base).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from alignment.stages import stage, trl_attribute

if TYPE_CHECKING:
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)


def build_trainer(recipe: Recipe, tokenizer: Any, datasets: Any) -> Any:
    """The stage's TRL trainer (classify: ours) on `datasets["train"]` (and `datasets["test"]` when there is one)."""
    from transformers import set_seed

    from alignment.callbacks import stage_callbacks
    from alignment.data.replay import trainer_args
    from alignment.generation_eval import generation_eval_callback
    from alignment.model import load_model, load_reference_model, peft_config_for
    from alignment.speed import with_pair_length_grouping

    spec = stage(recipe.stage)
    extra: dict[str, Any] = {}
    generation_eval = generation_eval_callback(recipe, tokenizer)  # its prompts read before the model loads
    if spec.rewards:  # first: a missing reward model is found before the policy loads
        extra["reward_funcs"], extra["reward_processing_classes"] = load_rewards(recipe)
    # Seeded before the model loads, as transformers' example scripts do: a new head (the reward model's
    # score layer) is initialised at load time, before the Trainer seeds; unseeded, it differs every run.
    set_seed(recipe.training.seed)
    labels = None
    if spec.head == "classify":  # the classes come from the rows: checked before the model loads
        from alignment.classification import class_names

        labels = class_names(datasets)
    model = load_model(recipe, tokenizer, head=spec.head, labels=labels)
    if spec.reference:
        extra["ref_model"] = load_reference_model(recipe, tokenizer)
    trainer_class = with_pair_length_grouping(trl_attribute(spec.trainer))
    if spec.trainer.startswith("experimental."):  # ORPO, CPO
        datasets = render_pairs(datasets, tokenizer)
    trainer = trainer_class(
        model=model,
        args=trainer_args(recipe.training, datasets["train"]),  # tokenised replay mixtures: data/replay.py
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("test"),
        processing_class=tokenizer,
        peft_config=peft_config_for(recipe, model, spec.head),
        callbacks=stage_callbacks(recipe) + ([generation_eval] if generation_eval else []),
        **extra,
    )
    if generation_eval is not None:
        generation_eval.bind(trainer)
    return trainer


def render_pairs(datasets: Any, tokenizer: Any) -> Any:
    """Conversational pairs rendered to text with the chat template, as new string columns.

    trl.experimental's ORPO and CPO trainers apply the chat template by mapping `prompt`/`chosen`/
    `rejected` to strings in place; `datasets` then keeps our columns' message type (`Json`, even
    through `remove_columns`) and splits each string into characters. Rendered here (TRL's own
    `apply_chat_template`, the row's `tools` included) into string columns, the rows reach those
    trainers as text, which they take as it is.
    """
    import json

    from datasets import Features, Value
    from trl.data_utils import apply_chat_template

    def render(row: dict) -> dict:
        pair = {key: row[key] for key in ("prompt", "chosen", "rejected")}
        tools = json.loads(row["tools"]) if row.get("tools") else None
        return apply_chat_template(pair, tokenizer, tools=tools)

    text = Features({key: Value("string") for key in ("prompt", "chosen", "rejected")})
    return {
        name: rows.map(
            render, remove_columns=rows.column_names, features=text, desc=f"Rendering {name} pairs"
        )
        for name, rows in datasets.items()
    }


def load_rewards(recipe: Recipe) -> tuple[list[Any], list[Any]]:
    """The recipe's reward functions, then its reward model (if any), with the tokenizers TRL scores them with.

    A function needs no tokenizer (None); the reward model's own tokenizer, chat template included,
    formats prompt + completion for it, as it did when the model was trained.
    """
    from alignment.errors import RecipeError
    from alignment.rewards import load_reward_model, resolve_rewards

    functions = resolve_rewards(recipe.args.reward_funcs)
    rewards, tokenizers = list(functions), [None] * len(functions)
    path = recipe.args.reward_model_name_or_path
    if path:
        from pathlib import Path

        from alignment.data.sources import is_local

        if is_local(path) and not Path(path).expanduser().is_dir():
            raise RecipeError(
                f"`reward_model_name_or_path`: no model folder at {path} (train the rm stage first)"
            )
        model, reward_tokenizer = load_reward_model(path, recipe.args.allow_pickle_weights)
        rewards.append(model)
        tokenizers.append(reward_tokenizer)
        logger.info(f"reward model: {path}")
    names = [*(recipe.args.reward_funcs or []), *([path] if path else [])]
    logger.info(f"rewards: {', '.join(names)}")
    return rewards, tokenizers
