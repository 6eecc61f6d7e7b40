"""Pipelines: stages in order, each in its own process, the output of one the model of the next.

    alignment run recipes/tiny/pipeline_sft_dpo.yaml              # sft, then dpo on the sft model
    alignment run recipes/tiny/pipeline_sft_dpo.yaml --dry_run    # the commands; which would be skipped
    alignment run recipes/tiny/pipeline_sft_dpo.yaml --from dpo   # dpo afresh, on the finished sft
    alignment run recipes/tiny/pipeline_sft_dpo.yaml --only sft

TRL has no multi-stage runner, and a trainer's memory (GPU included) is only freed with its process: each
stage is `scripts/run_<stage>.py` in a process of its own, through `accelerate launch` when the pipeline
names an accelerate config or a process count. A stage's `model:` (by default the previous policy stage's
output) becomes its `--model_name_or_path`; an override value `"@NAME"` (or a list item) becomes the
output_dir of earlier stage NAME (a reward model for a later RL stage). A pipeline's `env:` block is set for
every stage; a stage recipe's own `env:` only for its stage.

A stage that finished is skipped on a rerun when nothing it depends on changed: its `pipeline_stage.json`
marker holds a hash of its resolved recipe and of the hashes of the stages whose outputs it reads, so a
change upstream changes every hash downstream. A stage that must run over a previous, different run is
passed `--overwrite_output_dir true`; one with no marker (a crash mid-stage) resumes its own run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError, closest
from alignment.secrets import redact

MARKER = "pipeline_stage.json"
PIPELINE_KEYS = {"name", "accelerate_config", "num_processes", "log_dir", "stages"}
STAGE_KEYS = {"name", "stage", "recipe", "overrides", "model", "accelerate_config", "num_processes"}
EVAL_STAGE_KEYS = {
    "name",
    "stage",
    "models",
    "overrides",
}  # `stage: eval`: scripts/run_eval.py on earlier outputs
LAUNCH_KEYS = ("accelerate_config", "num_processes")
TAIL_LINES = 15


@dataclass
class PipelineStage:
    """One stage as it will run: its recipe resolved (overrides and references applied) and its hash."""

    name: str
    stage: str  # which scripts/run_<stage>.py
    recipe: str
    overrides: dict[str, Any]  # passed on the command line: the file's, with `model:` and "@NAME" resolved
    values: dict[str, Any]  # the recipe file's mapping with `overrides` applied: what the hash covers
    output_dir: str
    inputs: list[str]  # the earlier stages whose outputs it reads (model, "@NAME")
    hash: str
    accelerate_config: str | None = None
    num_processes: int | None = None
    models: list[str] = field(default_factory=list)  # an eval stage: the earlier stages it evaluates

    @property
    def is_eval(self) -> bool:
        return self.stage == "eval"


@dataclass
class Pipeline:
    path: str
    name: str
    log_dir: Path
    stages: list[PipelineStage]

    def stage_named(self, name: str, option: str) -> PipelineStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = ", ".join(s.name for s in self.stages)
        raise RecipeError(f"{self.path}: {option} {name}: no such stage; stages: {names}")


@dataclass
class StagePlan:
    """What a run does with a stage: `run` (afresh when `overwrite`) or `skip`, and why."""

    stage: PipelineStage
    action: str
    reason: str
    overwrite: bool = False
    args: list[str] = field(default_factory=list)  # the stage script's `--key value` overrides
    command: list[str] = field(default_factory=list)


@dataclass
class StageOutcome:
    name: str
    stage: str
    output_dir: str
    status: str  # "ran" or "skipped"
    wall_s: float
    log: str


class StageFailed(Exception):
    """A stage exited non-zero: the message names it and its log; `tail` holds the log's last lines."""

    def __init__(self, name: str, returncode: int, log: Path, outcomes: list[StageOutcome]):
        super().__init__(f"pipeline stage '{name}' failed (exit {returncode}); log: {log}")
        self.name, self.returncode, self.log, self.outcomes = name, returncode, log, outcomes
        self.tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-TAIL_LINES:])


# --- Reading a pipeline file ------------------------------------------------------------------------------


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline file, resolving every stage; one-line `RecipeError` naming the key at fault."""
    from alignment.recipe import load_recipe_file

    path = str(path)
    raw = load_recipe_file(path)  # the same YAML rules as a recipe: a key given twice is refused
    _check_keys(raw, PIPELINE_KEYS, path)
    entries = raw.get("stages")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{path}: `stages` must be a non-empty list of {{name, stage, recipe, overrides}}")
    launch = {key: _launch_value(raw, key, path) for key in LAUNCH_KEYS}
    stages: list[PipelineStage] = []
    for index, entry in enumerate(entries):
        where = f"{path}: stages[{index}]"
        if not isinstance(entry, dict):
            raise RecipeError(f"{where}: must be a mapping with `stage` and `recipe`")
        stages.append(_resolve_stage(entry, stages, launch, where))
    _check_outputs(stages, path)
    name = str(raw.get("name") or Path(path).stem)
    log_dir = Path(raw.get("log_dir") or f"runs/{name}/logs")
    _check_log_dir(log_dir, stages, path)
    return Pipeline(path, name, log_dir, stages)


def is_pipeline_file(path: str | Path) -> bool:
    """A YAML mapping with a top-level `stages` key is a pipeline, not a stage recipe."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "stages" in raw


def describe_pipeline(path: str | Path) -> str:
    """`pipeline, 2 stages: sft -> dpo` for a pipeline file that loads (`alignment check FOLDER`)."""
    stages = load_pipeline(path).stages
    return f"pipeline, {len(stages)} stages: {' -> '.join(s.name for s in stages)}"


def _check_keys(raw: dict[str, Any], valid: set[str], where: str) -> None:
    for key in raw:
        if key not in valid:
            raise RecipeError(
                f"{where}: unknown key `{key}`{closest(str(key), valid)}; keys: {', '.join(sorted(valid))}"
            )


def _launch_value(raw: dict[str, Any], key: str, where: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        return None
    if key == "num_processes" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise RecipeError(f"{where}: `num_processes` must be a positive integer, got {value!r}")
    if key == "accelerate_config":
        return find_file(str(value), "accelerate_config", where)
    return value


def find_file(path: str, key: str, where: str) -> str:
    """A file named in a pipeline: from the current folder, else from the checkout (as the stage scripts are),
    so that `recipes/tiny/sft/config.yaml` reads the same from any folder."""
    from alignment.launch import repo_root

    if Path(path).is_file():
        return path
    if not Path(path).is_absolute():
        try:
            in_checkout = repo_root() / path
        except RecipeError:  # no checkout: only the current folder counts
            in_checkout = None
        if in_checkout is not None and in_checkout.is_file():
            return str(in_checkout)
    raise RecipeError(f"{where}: `{key}`: file not found: {path}")


def _resolve_stage(entry: dict[str, Any], earlier: list[PipelineStage], launch: dict[str, Any],
                   where: str) -> PipelineStage:  # fmt: skip
    from alignment.recipe import load_recipe_file

    stage = entry.get("stage")
    name = entry.get("name", stage)
    where = f"{where} ({name})" if isinstance(name, str) else where
    if stage == "eval":
        return _resolve_eval_stage(entry, earlier, where)
    _check_keys(entry, STAGE_KEYS, where)
    for key in ("stage", "recipe"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise RecipeError(f"{where}: `{key}` is required (a string)")
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{where}: `name` must be a non-empty string")
    if any(s.name == name for s in earlier):
        raise RecipeError(f"{where}: `name` {name!r} is used twice; give each stage its own `name`")
    _check_script(stage, where)
    recipe = find_file(entry["recipe"], "recipe", where)
    overrides = entry.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise RecipeError(f"{where}: `overrides` must be a mapping of recipe keys to values")
    overrides = {str(k): v for k, v in overrides.items()}
    saved = dict(os.environ)  # a stage recipe's `env:` is for its own process (its script reads it again)
    try:
        values = load_recipe_file(recipe)
    except RecipeError as err:
        raise RecipeError(f"{where}: `recipe`: {err}") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)

    by_name = {s.name: s for s in earlier}
    model = _model_source(entry, overrides, earlier, where)
    if model is not None:
        overrides = {"model_name_or_path": by_name[model].output_dir, **overrides}
    inputs = [model] if model is not None else []
    overrides = {key: _resolve_refs(value, key, by_name, inputs, where) for key, value in overrides.items()}
    values = {**values, **overrides}
    output_dir = values.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        raise RecipeError(f"{where}: no `output_dir` in {recipe} or in `overrides`: set one")
    launch = {key: _launch_value(entry, key, where, launch[key]) if key in entry else launch[key]
              for key in LAUNCH_KEYS}  # fmt: skip
    payload = {"stage": stage, "recipe": values, "inputs": {n: by_name[n].hash for n in inputs}}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return PipelineStage(name, stage, recipe, overrides, values, output_dir, inputs, digest, **launch)


def _resolve_eval_stage(entry: dict[str, Any], earlier: list[PipelineStage], where: str) -> PipelineStage:
    """`stage: eval`: `alignment eval` on the outputs of `models` (default: every earlier stage), its
    `overrides` being the eval command's options (`prompts`, `pairs`, `dataset`, ...; `output_dir` required:
    the comparison goes there). It runs when an input changed and is skipped when its results stand."""
    from alignment.eval_command import EvalRequest

    _check_keys(entry, EVAL_STAGE_KEYS, where)
    name = entry.get("name", "eval")
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{where}: `name` must be a non-empty string")
    if any(s.name == name for s in earlier):
        raise RecipeError(f"{where}: `name` {name!r} is used twice; give each stage its own `name`")
    if not earlier:
        raise RecipeError(f"{where}: an eval stage evaluates earlier stages; it cannot come first")
    models = entry.get("models", [s.name for s in earlier if not s.is_eval])
    by_name = {s.name: s for s in earlier}
    if not isinstance(models, list) or not models:
        raise RecipeError(f"{where}: `models` must be a non-empty list of earlier stage names")
    for model in models:
        if model not in by_name:
            raise RecipeError(
                f"{where}: `models`: {model!r} is not an earlier stage{_earlier_names(earlier)}"
            )
        if by_name[model].is_eval:
            raise RecipeError(
                f"{where}: `models`: {model!r} is an eval stage; it writes numbers, not a model"
            )
    overrides = entry.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise RecipeError(f"{where}: `overrides` must be a mapping of eval options to values")
    options = {f.name for f in fields(EvalRequest)} - {"model_dir", "card"} | {"no_card", "output_dir"}
    _check_keys(overrides, options, f"{where}: overrides")
    inputs = list(models)
    overrides = {str(k): _resolve_refs(v, str(k), by_name, inputs, where) for k, v in overrides.items()}
    output_dir = overrides.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        raise RecipeError(
            f"{where}: `overrides.output_dir` is required: the comparison of the models goes there"
        )
    payload = {"stage": "eval", "models": models, "options": overrides,
               "inputs": {n: by_name[n].hash for n in inputs}}  # fmt: skip
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return PipelineStage(
        name, "eval", "", overrides, dict(overrides), output_dir, inputs, digest, models=models
    )


def eval_args(stage: PipelineStage, by_name: dict[str, PipelineStage]) -> list[str]:
    """scripts/run_eval.py's arguments: the models' folders, their names, then the options as flags."""
    args = [by_name[m].output_dir for m in stage.models] + ["--names", ",".join(stage.models)]
    for key, value in stage.overrides.items():
        if isinstance(value, bool):  # the eval command's switches take no value
            args += [f"--{key}"] if value else []
        elif isinstance(value, list):
            args += [f"--{key}", ",".join(str(v) for v in value)]
        elif value is not None:
            args += [f"--{key}", str(value)]
    return args


def _check_script(stage: str, where: str) -> None:
    from alignment.launch import repo_root

    if stage == "pipeline":
        raise RecipeError(f"{where}: `stage`: scripts/run_pipeline.py runs pipelines; it is not a stage")
    if (repo_root() / "scripts" / f"run_{stage}.py").is_file():
        return
    known = sorted(p.stem.removeprefix("run_") for p in (repo_root() / "scripts").glob("run_*.py"))
    known = [name for name in known if name != "pipeline"]
    raise RecipeError(
        f"{where}: `stage`: no script scripts/run_{stage}.py for stage {stage!r}{closest(stage, known)}; "
        f"stages: {', '.join(known)}"
    )


def _model_source(entry: dict[str, Any], overrides: dict[str, Any], earlier: list[PipelineStage],
                  where: str) -> str | None:  # fmt: skip
    """The earlier stage whose output is this stage's model; None: the recipe's (or overrides') own."""
    if "model" in entry:
        model = entry["model"]
        if "model_name_or_path" in overrides:
            raise RecipeError(f"{where}: give `model` or `overrides.model_name_or_path`, not both")
        if not isinstance(model, str) or model not in {s.name for s in earlier}:
            raise RecipeError(f"{where}: `model` {model!r} is not an earlier stage{_earlier_names(earlier)}")
        return model
    if "model_name_or_path" in overrides or not earlier:
        return None  # an explicit model (or "@NAME", resolved with the other overrides); the first stage
    policies = [s for s in earlier if is_policy(s.stage)]
    return policies[-1].name if policies else None


def is_policy(stage: str) -> bool:
    """A stage whose output can be the next stage's model: not a reward model or a classifier (scorers, not
    generators)."""
    from alignment.stages import STAGES

    if stage == "eval":  # writes numbers, not a model
        return False
    spec = STAGES.get(stage)
    return spec is None or spec.head == "causal"


def _resolve_refs(
    value: Any, key: str, by_name: dict[str, PipelineStage], inputs: list[str], where: str
) -> Any:
    """`"@NAME"` (alone or in a list) -> the output_dir of earlier stage NAME, recorded in `inputs`."""
    if isinstance(value, list):
        return [_resolve_refs(item, key, by_name, inputs, where) for item in value]
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    name = value[1:]
    if name not in by_name:
        raise RecipeError(
            f"{where}: `overrides.{key}`: {value!r} names no earlier stage{_earlier_names(list(by_name.values()))}"
        )
    if name not in inputs:
        inputs.append(name)
    return by_name[name].output_dir


def _earlier_names(earlier: list[PipelineStage]) -> str:
    return (
        f" (earlier stages: {', '.join(s.name for s in earlier)})" if earlier else " (it is the first stage)"
    )


def _check_outputs(stages: list[PipelineStage], path: str) -> None:
    """Two stages writing to one folder (or one inside the other) would delete or resume each other's run."""
    for i, stage in enumerate(stages):
        folder = Path(stage.output_dir).resolve()
        for other in stages[:i]:
            theirs = Path(other.output_dir).resolve()
            if folder == theirs or theirs in folder.parents or folder in theirs.parents:
                raise RecipeError(
                    f"{path}: stages {other.name!r} and {stage.name!r} both write to `output_dir` "
                    f"{other.output_dir} / {stage.output_dir}: give each stage its own folder"
                )


def _check_log_dir(log_dir: Path, stages: list[PipelineStage], path: str) -> None:
    folder = log_dir.resolve()
    for stage in stages:
        output = Path(stage.output_dir).resolve()
        if folder == output or output in folder.parents:
            raise RecipeError(
                f"{path}: `log_dir` {log_dir} is inside stage {stage.name!r}'s output_dir, which a fresh run "
                "deletes: put the logs elsewhere"
            )


# --- Deciding what runs -------------------------------------------------------------------------------------


def plan_pipeline(
    pipeline: Pipeline, from_stage: str | None = None, only: str | None = None
) -> list[StagePlan]:
    """Each selected stage with what a run would do; the outputs they read from unselected stages must exist."""
    from alignment.launch import stage_command

    if from_stage is not None and only is not None:
        raise RecipeError("give `--from` or `--only`, not both")
    names = [s.name for s in pipeline.stages]
    forced: set[str] = set()
    if from_stage is not None:
        start = names.index(pipeline.stage_named(from_stage, "--from").name)
        forced = set(names[start:])
    elif only is not None:
        forced = {pipeline.stage_named(only, "--only").name}
    selected = [s for s in pipeline.stages if not forced or s.name in forced]
    option = f"--from {from_stage}" if from_stage else f"--only {only}"
    plans = []
    for stage in selected:
        for name in stage.inputs:
            if name not in forced and forced:
                _require_finished(pipeline, name, stage.name, option)
        plan = _decide(stage, forced=stage.name in forced)
        if stage.is_eval:  # results are rewritten, never resumed: nothing to overwrite
            plan.overwrite = False
            plan.args = eval_args(stage, {s.name: s for s in pipeline.stages})
        else:
            overrides = {**stage.overrides, **({"overwrite_output_dir": True} if plan.overwrite else {})}
            plan.args = to_cli(overrides)
        plan.command = stage_command(stage.stage, stage.recipe, plan.args, stage.accelerate_config,
                                     stage.num_processes)  # fmt: skip
        plans.append(plan)
    check_launch_targets(plans)
    return plans


def _require_finished(pipeline: Pipeline, name: str, reader: str, option: str) -> None:
    stage = pipeline.stage_named(name, option)
    if not is_finished(stage.output_dir):
        raise RecipeError(
            f"{pipeline.path}: {option}: stage {reader!r} reads the output of {name!r}, but {stage.output_dir} "
            f"holds no finished run; run the pipeline without {option.split()[0]} (or `--only {name}`) first"
        )


def _decide(stage: PipelineStage, forced: bool) -> StagePlan:
    output = Path(stage.output_dir)
    used = output.is_dir() and any(output.iterdir())
    if forced:
        return StagePlan(stage, "run", "selected: runs afresh", overwrite=used)
    marker = read_marker(output)
    if marker is None:
        why = (
            "resumes its unfinished run" if used and not is_finished(output) else "not run by a pipeline yet"
        )
        return StagePlan(stage, "run", why)  # the stage script resumes, refuses or stops on what is there
    if marker.get("hash") != stage.hash:
        return StagePlan(stage, "run", "changed (or a stage it reads changed): runs afresh", overwrite=True)
    if stage.is_eval:
        done = (output / "results.json").is_file()
        return (
            StagePlan(stage, "skip", "finished, unchanged") if done else StagePlan(stage, "run", "unfinished")
        )
    if not is_finished(output):
        return StagePlan(stage, "run", "unchanged, unfinished: resumes")
    return StagePlan(stage, "skip", "finished, unchanged")


def read_marker(output: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((output / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_finished(output: str | Path) -> bool:
    from alignment.reruns import read_run_recipe

    record = read_run_recipe(Path(output))
    return record is not None and record.get("status") == "finished"


def to_cli(values: dict[str, Any]) -> list[str]:
    """`--key value` pairs a recipe parser reads back as the same values: a list as argparse's several
    values (`--loss_type sigmoid sft`), a mapping as JSON, booleans and None as `true`/`false`/`none`."""
    args: list[str] = []
    for key, value in values.items():
        args.append(f"--{key}")
        args += [_cli_value(v) for v in value] if isinstance(value, list) else [_cli_value(value)]
    return args


def _cli_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value).replace("null", "none")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def shown_command(command: list[str]) -> str:
    """The command as a person would type it: `python scripts/run_sft.py ...`, secrets redacted."""
    cwd = Path.cwd()
    shown = []
    for part in command:
        if part == sys.executable:
            part = "python"
        elif Path(part).is_absolute() and cwd in Path(part).parents:
            part = str(Path(part).relative_to(cwd))
        shown.append(part)
    return redact(shlex.join(shown))


# --- Running ------------------------------------------------------------------------------------------------


def run_pipeline(path: str | Path, from_stage: str | None = None, only: str | None = None,
                 on_stage_end: Callable[[StageOutcome], None] | None = None) -> list[StageOutcome]:  # fmt: skip
    """Run the pipeline at `path`; raise `StageFailed` at the first stage that fails, `RecipeError` before
    anything runs for a bad pipeline file. `on_stage_end` is called after each stage, run or skipped."""
    pipeline = load_pipeline(path)
    plans = plan_pipeline(pipeline, from_stage, only)
    total = len(pipeline.stages)
    outcomes: list[StageOutcome] = []
    for plan in plans:
        stage = plan.stage
        log = pipeline.log_dir / f"{stage.name}.log"
        prefix = f"[{pipeline.stages.index(stage) + 1}/{total}]"
        if plan.action == "skip":
            print(redact(f"{prefix} skip {stage.name} ({plan.reason}: {stage.output_dir})"), flush=True)
            outcome = StageOutcome(stage.name, stage.stage, stage.output_dir, "skipped", 0.0, str(log))
        else:
            outcome = _run(pipeline, plan, log, prefix, outcomes)
        outcomes.append(outcome)
        if on_stage_end is not None:
            on_stage_end(outcome)
    return outcomes


def _run(pipeline: Pipeline, plan: StagePlan, log: Path, prefix: str,
         outcomes: list[StageOutcome]) -> StageOutcome:  # fmt: skip
    from alignment.launch import run_stage

    stage = plan.stage
    print(f"{prefix} {stage.name}: {shown_command(plan.command)} (log: {log})", flush=True)
    start = time.time()
    done = run_stage(stage.stage, stage.recipe, plan.args, log_file=log,
                     accelerate_config=stage.accelerate_config, num_processes=stage.num_processes)  # fmt: skip
    wall = time.time() - start
    if done.returncode != 0:
        raise StageFailed(stage.name, done.returncode, log, outcomes)
    write_marker(pipeline, stage, wall)
    print(f"{prefix} {stage.name}: done in {wall:.0f} s -> {stage.output_dir}", flush=True)
    return StageOutcome(stage.name, stage.stage, stage.output_dir, "ran", wall, str(log))


def write_marker(pipeline: Pipeline, stage: PipelineStage, wall_s: float) -> Path:
    marker = {
        "pipeline": pipeline.path,
        "stage": stage.name,
        "script": stage.stage,
        "recipe": stage.recipe,
        "hash": stage.hash,
        "inputs": {name: pipeline.stage_named(name, "input").hash for name in stage.inputs},
        "overrides": stage.overrides,
        "wall_s": round(wall_s, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(stage.output_dir) / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")  # written whole, then moved: a kill never leaves half a marker
    tmp.write_text(redact(json.dumps(marker, indent=2, sort_keys=True, default=str)) + "\n")
    tmp.replace(path)
    return path


def check_launch_targets(plans: list[StagePlan]) -> None:
    """Refuse a stage whose bf16/fp16 disagrees with its accelerate config before anything runs (DeepSpeed
    would refuse only after loading the model, possibly hours into the pipeline)."""
    from alignment.recipe import requested_precision
    from alignment.target import checked_target

    for plan in plans:
        stage = plan.stage
        if plan.action == "run" and stage.accelerate_config is not None:
            try:
                checked_target(requested_precision(stage.values), stage.recipe, stage.accelerate_config)
            except RecipeError as err:
                raise RecipeError(f"stage {stage.name!r}: {err}") from None


def print_plan(path: str | Path, from_stage: str | None = None, only: str | None = None) -> list[StagePlan]:
    """`alignment run PIPELINE --dry_run`: each stage's command and whether it would run; runs nothing."""
    pipeline = load_pipeline(path)
    plans = plan_pipeline(pipeline, from_stage, only)
    total = len(pipeline.stages)
    print(f"pipeline {pipeline.name} ({pipeline.path}), logs in {pipeline.log_dir}")
    for plan in plans:
        stage = plan.stage
        verb = "would run" if plan.action == "run" else "would skip"
        print(f"[{pipeline.stages.index(stage) + 1}/{total}] {stage.name}: {verb} ({plan.reason})")
        print(f"    {shown_command(plan.command)}")
    return plans


# --- Command line -------------------------------------------------------------------------------------------


def add_pipeline_arguments(parser: Any) -> None:
    parser.add_argument(
        "pipeline", help="Pipeline YAML: `stages:` in order, each {name, stage, recipe, overrides}."
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--from", dest="from_stage", metavar="STAGE",
        help="Run STAGE and every later stage afresh; earlier stages are not run (their outputs must exist).",
    )  # fmt: skip
    which.add_argument(
        "--only", metavar="STAGE", help="Run only STAGE, afresh; the outputs it reads must exist."
    )
    parser.add_argument(
        "--dry_run", action="store_true",
        help="Print each stage's command and whether it would run or be skipped; run nothing.",
    )  # fmt: skip


def run_from_options(options: Any) -> int:
    """The exit status of `alignment run`: 0, or 1 when a stage failed (its name, log and last lines printed)."""
    if options.dry_run:
        print_plan(options.pipeline, options.from_stage, options.only)
        return 0
    try:
        run_pipeline(options.pipeline, options.from_stage, options.only)
    except StageFailed as err:
        print(redact(f"error: {err}\nlast lines of {err.log}:\n{err.tail}"), file=sys.stderr, end="")
        return 1
    return 0
