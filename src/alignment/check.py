"""Dry runs: validate a recipe and print what it would do, without downloading or loading a model.

Local data is read to its first rows (data/probe.py) and local model folders are looked into; Hub
models and datasets are not fetched.

The plan describes the run on its target (the accelerate config's processes and precision, bf16 as the
recipe says); what this machine would change to run it here is listed apart, under `on_this_machine`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from alignment.errors import RecipeError
from alignment.online_rl import check_online_rl
from alignment.recipe import STAGES, Recipe
from alignment.stages import data_stage, stage
from alignment.target import LaunchTarget


def infer_stage(path: str, stages: tuple[str, ...] = STAGES) -> str:
    """The stage a recipe is for, from its folder (`recipes/<model>/<stage>/...`)."""
    for part in reversed(Path(path).parts[:-1]):
        if part in stages:
            return part
    raise RecipeError(f"{path}: cannot tell the stage from the path; pass --stage ({', '.join(stages)})")


def resolved_values(recipe: Recipe) -> dict[str, Any]:
    """Every key the recipe or the command line set, with the value it resolved to on its target."""
    out: dict[str, Any] = {}
    for obj in (recipe.args, recipe.training, recipe.model):
        for f in dataclasses.fields(obj):
            if f.name in recipe.given:
                value = getattr(obj, f.name)
                out[f.name] = getattr(value, "value", value)
    for key in ("bf16", "fp16"):  # as the recipe asks, not as this machine's fallback left them
        if key in out:
            out[key] = recipe.precision == key
    out["dataset_mixture"] = recipe.mixture.to_dict()
    return out


def default_target(recipe: Recipe, processes: int | None = None) -> LaunchTarget:
    """The launch when no accelerate config is given: `processes` or the launcher's world size."""
    world = processes or recipe.world_size
    return LaunchTarget(processes=world, distributed="ddp" if world > 1 else "single process")


def plan(
    recipe: Recipe,
    processes: int | None = None,
    target: LaunchTarget | None = None,
    memory: bool = False,
    gpu_memory: float | None = None,
) -> dict[str, Any]:
    """The dry-run summary on `target` (default: `processes`, else the launcher's world size).

    Before it is built, everything that needs no weights is checked: local model folders
    (`probe_model_folders`) and the first rows of every local data split (data/probe.py). A fault
    raises the run's own RecipeError; what was not checked (Hub datasets, a folder an earlier stage
    will write) is a note. With `memory`, it estimates the peak GPU memory per process from the model's
    config.json (alignment/memory/) and, given `gpu_memory` GiB, whether that fits.
    """
    from alignment.data.mixture import source_stage
    from alignment.data.probe import probe_mixture

    rows = data_stage(recipe.stage)
    probed = probe_model_folders(recipe) + probe_mixture(recipe.mixture, rows)
    t = recipe.training
    target = target or default_target(recipe, processes)
    world = target.processes
    if stage(recipe.stage).rewards:
        probed += check_online_rl(t, world, recipe.given, recipe.path or "command line")
    summary = {
        "stage": recipe.stage,
        "recipe": recipe.path,
        "model": recipe.model.model_name_or_path,
        "precision": recipe.precision,
        "peft": (
            "qlora-4bit"
            if recipe.model.load_in_4bit
            else "qlora-8bit"
            if recipe.model.load_in_8bit
            else "dora"
            if recipe.model.use_dora
            else "lora"
        )
        if recipe.model.use_peft
        else "full",  # fmt: skip
        "processes": world,
        "distributed": target.describe(),
        "accelerate_config": target.config_file,
        "global_batch_size": recipe.global_batch_size(world),
        "global_batch_size_formula": (
            f"{t.per_device_train_batch_size} per device x {t.gradient_accumulation_steps} accumulation "
            f"x {world} processes"
        ),
        "datasets": [
            f"{s.label} [{s.split}]"
            + (f" {s.samples} samples" if s.samples else f" weight {s.weight}" if s.weight else "")
            + (" (replay text)" if source_stage(s, rows) != rows else "")
            for s in recipe.mixture.datasets
        ]
        + ([f"eval: split {recipe.mixture.test_split} of each source"] if recipe.mixture.test_split else []),
        "output_dir": t.output_dir,
        "notes": [n for n in recipe.notes if n not in recipe.device_notes] + probed,
        "on_this_machine": recipe.device_notes,
        "resolved": resolved_values(recipe),
    }
    if memory:
        from alignment.memory import recipe_memory

        summary["memory"] = recipe_memory(recipe, target, gpu_memory)
    return summary


MODEL_FILES = ("config.json", "adapter_config.json")  # a full model, or a PEFT adapter over its base
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def probe_model_folders(recipe: Recipe) -> list[str]:
    """Check the local model and tokenizer folders a recipe names, loading nothing; return notes.

    A folder that exists must hold a model (config.json or adapter_config.json) and, unless
    `tokenizer_name_or_path` is set, a tokenizer. One that does not exist yet is only a note: in a
    pipeline a later stage names the folder an earlier stage writes (recipes/tiny/dpo reads runs/tiny/sft).
    The run itself refuses a missing folder (model.missing_model_folder).
    """
    from alignment.data.sources import is_local

    model, tokenizer = recipe.model.model_name_or_path, recipe.args.tokenizer_name_or_path
    # (key, folder, the kinds of files it must hold)
    folders = [("model_name_or_path", model, [MODEL_FILES] + ([] if tokenizer else [TOKENIZER_FILES]))]
    if tokenizer:
        folders.append(("tokenizer_name_or_path", tokenizer, [TOKENIZER_FILES]))
    notes = []
    for key, source, needs in folders:
        path = Path(source).expanduser()
        if not is_local(source):
            continue
        if not path.exists():
            notes.append(f"{key}: {source} does not exist yet (an earlier stage writes it?)")
            continue
        if not path.is_dir():
            raise RecipeError(f"`{key}`: {source} is a file; give a model folder or a Hub id")
        for names in needs:
            if not any((path / name).is_file() for name in names):
                fix = (
                    "not a saved model or adapter"
                    if names is MODEL_FILES
                    else "save the tokenizer there or set `tokenizer_name_or_path`"
                )
                raise RecipeError(f"`{key}`: {source} has no {' or '.join(names)} ({fix})")
    return notes


def check_folder(folder: str, overrides: list[str] | None = None) -> list[str]:
    """Dry-run every recipe under `folder` (the stage from each one's path), one line each; return the failures.

    This is how a recipe collection (ours, or the Alignment Handbook's) is checked against the installed
    TRL/transformers in seconds, without loading a model.
    """
    from alignment.pipeline import describe_pipeline, is_pipeline_file
    from alignment.recipe import parse_recipe

    paths = sorted(p for p in Path(folder).rglob("*.y*ml") if "accelerate_configs" not in p.parts)
    failed = []
    for path in paths:
        saved = dict(os.environ)  # a recipe's `env:` block must not leak into the next one
        try:
            if is_pipeline_file(path):  # its stages, references and files; its recipes are checked as files
                print(f"ok     {path}  ({describe_pipeline(path)})")
                continue
            # a dry run: a tracker or GPU missing here is a note about this machine, not a fault of the recipe
            recipe = parse_recipe(infer_stage(str(path)), [str(path), *(overrides or []), "--dry_run"])
            notes = plan(recipe)["notes"]  # the same checks as one recipe's dry run
            print(f"ok     {path}  ({recipe.stage}, {recipe.precision}, {len(notes)} notes)")
        except RecipeError as err:
            failed.append(str(path))
            print(f"error  {err}")  # the message starts with the file
        finally:
            os.environ.clear()
            os.environ.update(saved)
    print(f"{len(paths) - len(failed)} of {len(paths)} recipes dry-run")
    return failed


def print_plan(
    recipe: Recipe,
    processes: int | None = None,
    target: LaunchTarget | None = None,
    gpu_memory: float | None = None,
) -> dict[str, Any]:
    """Print the dry-run plan as YAML (readable, and parseable by tests and tools), once per launch, with its
    memory estimate (and, given `gpu_memory` GiB, whether it fits)."""
    summary = plan(recipe, processes, target, memory=True, gpu_memory=gpu_memory)
    if int(os.environ.get("RANK", "0")) == 0:
        from alignment.secrets import redact

        print(redact(yaml.safe_dump(summary, sort_keys=False, default_flow_style=False).rstrip()))
    return summary
