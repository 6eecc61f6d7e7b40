"""`early_stopping_patience` / `early_stopping_threshold`: stop when the eval metric stops improving.

transformers' `EarlyStoppingCallback` does the stopping (`callbacks.stage_callbacks` adds it), but it
only works when four other arguments agree, and says so with an assertion after the model has loaded:
an eval schedule, `load_best_model_at_end`, a `metric_for_best_model`, and a save schedule that matches
the eval one (the best model must be a checkpoint to be loaded). The gap filled here: the recipe names
only the patience, and those four are set to match while parsing, each said in a note, or the recipe is
refused in one line where it set one of them to a value that cannot work.
"""

from __future__ import annotations

from typing import Any

from alignment.errors import RecipeError


def apply_early_stopping(values: dict[str, Any], explicit: set[str], origin: str) -> list[str]:
    """Set what `EarlyStoppingCallback` needs in `values` (in place); return the notes."""
    patience = values.get("early_stopping_patience")
    threshold = values.get("early_stopping_threshold")
    if patience is None:
        if threshold is not None:
            raise RecipeError(
                f"{origin}: `early_stopping_threshold` is read only with `early_stopping_patience`; set both"
            )
        return []
    if not isinstance(patience, int) or patience < 1:
        raise RecipeError(
            f"{origin}: `early_stopping_patience` is {patience!r}; it must be at least 1 (evaluations)"
        )
    if threshold is not None and threshold < 0:
        raise RecipeError(f"{origin}: `early_stopping_threshold` is {threshold!r}; it must be 0 or more")

    def plain(key: str) -> Any:
        return getattr(values.get(key), "value", values.get(key))  # an IntervalStrategy enum, or its string

    if "load_best_model_at_end" in explicit and not values.get("load_best_model_at_end"):
        raise RecipeError(
            f"{origin}: early stopping keeps the best model, but `load_best_model_at_end` is false; remove it"
        )
    evaluation, saving = plain("eval_strategy"), plain("save_strategy")
    if evaluation == "no":
        if "eval_strategy" in explicit:
            raise RecipeError(
                f"{origin}: `early_stopping_patience` counts evaluations, but `eval_strategy` is 'no'; "
                "set it to 'steps' or 'epoch'"
            )
        evaluation = saving if saving in ("steps", "epoch") else "epoch"
        values["eval_strategy"] = evaluation
        if evaluation == "steps" and values.get("eval_steps") is None:
            values["eval_steps"] = values.get("save_steps")
    if saving not in (evaluation, "best"):
        if "save_strategy" in explicit:
            raise RecipeError(
                f"{origin}: early stopping loads the best checkpoint, so `save_strategy` ({saving!r}) must match "
                f"`eval_strategy` ({evaluation!r}); set them alike"
            )
        values["save_strategy"] = evaluation
    notes = []
    if evaluation == "steps" and plain("save_strategy") == "steps":
        eval_steps = values.get("eval_steps") or values.get("logging_steps")
        if values.get("save_steps") != eval_steps:
            # Only a saved evaluation can be the best model loaded at the end: save at every one.
            if "save_steps" in explicit:
                notes.append(
                    f"early stopping: save_steps {values['save_steps']:g} -> {eval_steps:g}, to save at every evaluation"
                )
            values["save_steps"] = eval_steps
    values["load_best_model_at_end"] = True
    metric = values.get("metric_for_best_model") or "eval_loss"
    values["metric_for_best_model"] = metric
    every = (
        f"every {values.get('eval_steps') or values.get('logging_steps'):g} steps"
        if evaluation == "steps"
        else ("every epoch")
    )
    return notes + [
        f"early stopping: evaluate and save {every}, stop after {patience} evaluation(s) without a {metric} "
        f"better by more than {threshold or 0}, and load the best checkpoint at the end"
    ]
