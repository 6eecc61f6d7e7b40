"""Trainer callbacks every stage adds.

transformers' `logging_nan_inf_filter` (on by default) replaces a NaN or infinite step loss with the
running average in the logs, so a diverged run keeps training and saving NaN weights while its logs
look normal. The recipe parser turns that filter off; this callback then stops the run at the first
non-finite logged loss or gradient norm, with one line naming the step, before it saves over the last
good checkpoint. Losses are seen only when they are logged, so a step that saves also logs (see
`on_step_end`): otherwise, with `save_steps` not a multiple of `logging_steps`, a NaN step could be
saved as a checkpoint before any log showed it, and that checkpoint then named as the good one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from alignment.errors import RecipeError


class StopOnNonFiniteLoss(TrainerCallback):
    """Raise at the first logged `loss` or `grad_norm` that is NaN or infinite (all ranks log the same value)."""

    WATCHED = ("loss", "grad_norm")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # transformers logs before it saves in the same step, so a forced log checks the loss first. It
        # also makes the log reach every checkpoint and the last step (which saves), so the whole-run
        # `train_loss` of a resumed run (reruns.whole_run_loss) leaves no step out.
        if control.should_save:
            control.should_log = True

    on_epoch_end = on_step_end  # `save_strategy: epoch` saves here

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        for key in self.WATCHED:
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                checkpoints = sorted(
                    Path(args.output_dir).glob("checkpoint-*"), key=lambda p: p.stat().st_mtime
                )
                kept = (
                    f"the last checkpoint, {checkpoints[-1].name}, is kept"
                    if checkpoints
                    else "no checkpoint yet"
                )
                raise RecipeError(
                    f"training stopped at step {state.global_step}: the {key} is {value} ({kept}); "
                    "lower `learning_rate`, set `max_grad_norm`, or check the data"
                )


def stage_callbacks(recipe: Any = None) -> list[TrainerCallback]:
    """The callbacks a stage passes to its trainer: the NaN stop always, early stopping when the recipe asks."""
    callbacks: list[TrainerCallback] = [StopOnNonFiniteLoss()]
    patience = getattr(getattr(recipe, "args", None), "early_stopping_patience", None)
    if patience is not None:
        from transformers import EarlyStoppingCallback

        threshold = recipe.args.early_stopping_threshold or 0.0
        callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
        )
    return callbacks
