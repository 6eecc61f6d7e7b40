"""Reruns that never lie: a run records its resolved recipe, and a rerun into the same `output_dir` resumes
it only when nothing that shapes training has changed.

transformers resumes from whatever checkpoint `output_dir` holds, whatever the new settings: a rerun
with another learning rate or step count silently kept the old schedule (or trained 0 steps) while
the card claimed the new values. Here the first run writes `run_recipe.json`; a rerun with the same
training values resumes from the newest complete checkpoint, a finished one says so and trains
nothing, and one whose values differ is refused, naming each key with both values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError

if TYPE_CHECKING:
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)

RUN_RECIPE = "run_recipe.json"
# Keys that change what is logged, saved, evaluated or pushed, not the weights a run produces.
IGNORED_KEYS = {
    "output_dir", "overwrite_output_dir", "disable_tqdm", "report_to", "run_name", "project", "push_to_hub",
    "resume_from_checkpoint", "license", "per_device_eval_batch_size", "dataset_num_proc",
    "include_num_input_tokens_seen",
    # How batches are loaded, not which: `dataloader_drop_last` and `dataloader_in_order` are compared.
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
}  # fmt: skip
IGNORED_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "trackio_")


@dataclass
class RunStart:
    """How a run starts: `finished` (nothing to do), else from `checkpoint` (None: from scratch)."""

    finished: bool = False
    checkpoint: str | None = None


def training_values(recipe: Recipe) -> dict[str, Any]:
    """Every resolved value that shapes the weights, JSON-normalised (so a rerun compares equal)."""
    values: dict[str, Any] = {}
    values.update(dataclasses.asdict(recipe.args))
    values.update(dataclasses.asdict(recipe.model))
    values.update(recipe.training.to_dict())  # enums as values, tokens redacted
    values["dataset_mixture"] = recipe.mixture.to_dict()
    values["stage"] = recipe.stage
    kept = {k: v for k, v in values.items() if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)}
    return json.loads(json.dumps(kept, default=str, sort_keys=True))


def start_run(recipe: Recipe) -> RunStart:
    """Set up logging for the stage, then `begin_run`: what every stage script does first."""
    from alignment.logs import setup_logging

    setup_logging(recipe.training)
    return begin_run(recipe)


def begin_run(recipe: Recipe) -> RunStart:
    """Decide how this run starts from what `output_dir` holds; record the recipe. Loads nothing heavy.

    Every rank decides the same; only rank 0 writes or deletes.
    """
    from alignment.training import resume_checkpoint

    training = recipe.training
    output = Path(training.output_dir)
    main = training.process_index == 0
    values = training_values(recipe)
    with training.main_process_first(desc="output_dir"):
        if recipe.args.overwrite_output_dir and output.is_dir() and any(output.iterdir()):
            if main:
                logger.warning(f"overwrite_output_dir: deleting everything in {output} to start afresh")
                shutil.rmtree(output)
            return _record(output, values, main, RunStart(), recipe)
        previous = read_run_recipe(output)
        if previous is not None:
            changed = _differences(previous.get("values", {}), values)
            if changed:
                raise RecipeError(
                    f"output_dir {output} holds a run with other settings: {'; '.join(changed)}; "
                    "use a new `--output_dir`, or `--overwrite_output_dir true` to start afresh"
                )
            if previous.get("status") == "finished":
                logger.warning(
                    f"output_dir {output} holds this recipe's finished run: nothing to train "
                    "(`--overwrite_output_dir true` trains it again)"
                )
                return RunStart(finished=True)
        checkpoint = resume_checkpoint(training)
        if previous is None and checkpoint is not None:
            logger.warning(
                f"output_dir {output} holds checkpoints but no {RUN_RECIPE} (written by another tool or an "
                f"older version): resuming from {checkpoint} without comparing its settings; "
                "`--overwrite_output_dir true` starts afresh"
            )
        return _record(output, values, main, RunStart(checkpoint=checkpoint), recipe)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [f"`{k}` {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _record(output: Path, values: dict[str, Any], main: bool, start: RunStart, recipe: Recipe) -> RunStart:
    if main:
        from alignment.manifest import record_start

        write_run_recipe(output, values, "running")
        record_start(recipe, start.checkpoint)  # run_manifest.json: what a later `alignment rerun` repeats
    return start


def write_run_recipe(output: Path, values: dict[str, Any], status: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    path = output / RUN_RECIPE
    tmp = path.with_suffix(".tmp")  # written whole, then moved: a kill never leaves half a file
    tmp.write_text(json.dumps({"status": status, "values": values}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_run_recipe(output: Path) -> dict[str, Any] | None:
    path = output / RUN_RECIPE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # unreadable: treated as absent (the checkpoints still decide the resume)


def mark_finished(output: Path) -> None:
    """Called after the final save: a rerun of the same recipe then trains nothing."""
    record = read_run_recipe(output)
    if record is not None:
        write_run_recipe(output, record.get("values", {}), "finished")


def whole_run_loss(log_history: list[dict[str, Any]]) -> float | None:
    """Mean training loss over every step, from the logged interval means (each weighted by its steps).

    transformers' `train_loss` after a resume averages only the resumed steps' losses over all steps.
    """
    total = previous = 0.0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    return total / previous if previous else None
