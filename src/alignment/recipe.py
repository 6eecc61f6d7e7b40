"""Recipes: one YAML file per run, overridable from the command line, checked before anything loads.

A recipe's keys are the fields of TRL's stage config (`SFTConfig`, `DPOConfig`, ...), of TRL's
`ModelConfig`, and of our `RecipeArguments` (dataset mixture, chat template). `parse_recipe` turns
`[RECIPE.yaml | --config RECIPE.yaml] [--key value ...]` into typed dataclasses.

Gaps in `TrlParser` that this module fills: it reports unknown keys as a list with no suggestion,
does not check YAML values against a field's choices (argparse only checks command-line values),
fails on legacy Alignment Handbook keys instead of migrating them, and lets transformers raise its
bf16 traceback on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignment.chat_templates import BUILTIN_TEMPLATES
from alignment.data.mixture import MixtureConfig
from alignment.errors import RecipeError, closest
from alignment.recipe_checks import check_eval_data, check_values
from alignment.stages import DATA_ONLY_STAGES
from alignment.stages import STAGES as STAGE_TABLE

logger = logging.getLogger(__name__)


def exit_on_recipe_error(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a `RecipeError` into `error: <one line>` on stderr and exit status 2, with no traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except RecipeError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


@dataclass
class RecipeArguments:
    """The keys a recipe has beyond TRL's stage and model configs."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "One dataset (Hub id or local path). Use `dataset_mixture` to combine several."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of `dataset_name`."})
    dataset_train_split: str = field(default="train", metadata={"help": "Training split of `dataset_name`."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={"help": "Evaluation split of `dataset_name`; kept apart from training. None: no eval set."},
    )
    dataset_mixture: dict | str | None = field(
        default=None,
        metadata={
            "help": "Sources to mix: {datasets: [{id, config, split, columns, column_names (a headerless csv/tsv/"
            "txt: its fields), weight | samples, format, tags, on_invalid, dedup}], seed, test_split | "
            "test_split_size, dedup, decontaminate, decontaminate_ngram}. "
            "On the command line, pass it as JSON."
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": f"A built-in template name ({', '.join(sorted(BUILTIN_TEMPLATES))}) or a Jinja string. "
            "None keeps the tokenizer's own."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to load, if not the model's own."}
    )
    truncation: str = field(
        default="truncate",
        metadata={
            "help": "What to do with a row longer than `max_length`: `truncate` (TRL's behaviour: the answer is "
            "cut and loses its end-of-turn; counted in the data report) or `drop` (dropped and counted).",
            "choices": ["truncate", "drop"],
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete what `output_dir` holds and train afresh. Without it, a rerun resumes the run "
            "recorded there (run_recipe.json) when its training values are the same, and is refused when not."
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Load weights from pickle files (pytorch_model.bin, adapter_model.bin) when a model has no "
            "safetensors. Off: a pickle can run code when it is loaded, so only safetensors are read."
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Online RL (grpo, rloo): reward functions, each a built-in name (exact_answer, tiny_format; "
            "`alignment check` lists them) or an import path `package.module:function` called as "
            "f(prompts, completions, **dataset_columns) -> list[float]."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Online RL (grpo, rloo): a reward model (a folder from the rm stage, or a Hub id) whose score "
            "is a reward, next to `reward_funcs`. This is the RLHF path."
        },
    )
    eval_generation_prompts: str | None = field(
        default=None,
        metadata={
            "help": "Held-out prompts with an `answer` (a file, folder or Hub id, any prompt format the data "
            "layer reads): at the start, every `eval_generation_steps` steps and at the last step the model "
            "answers them greedily and the exact match is logged as `eval_exact_match` to the trackers."
        },
    )
    eval_generation_split: str | None = field(
        default=None,
        metadata={
            "help": "Split of `eval_generation_prompts` (default: train for a single file, else test)."
        },
    )
    eval_generation_steps: int | None = field(
        default=None,
        metadata={
            "help": "Steps between two generation evals. None: only at the start and at the last step."
        },
    )
    eval_generation_max_rows: int | None = field(
        default=None, metadata={"help": "Evaluate the first N prompts only (None: all of them)."}
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "License of the trained model, for the model card (e.g. apache-2.0). None: left out."
        },
    )
    peft_type: str = field(
        default="lora",
        metadata={
            "help": "The PEFT method when `use_peft` is on: lora (with `use_dora` for DoRA), prompt_tuning "
            "(learned virtual tokens, the model frozen), prefix_tuning (learned keys/values at every layer) or "
            "ia3 (learned rescaling vectors). A non-LoRA type turns `use_peft` on.",
            "choices": ["lora", "prompt_tuning", "prefix_tuning", "ia3"],
        },
    )
    num_virtual_tokens: int | None = field(
        default=None, metadata={"help": "prompt_tuning, prefix_tuning: learned tokens in front (default 20)."}
    )
    prompt_tuning_init_text: str | None = field(
        default=None,
        metadata={
            "help": "prompt_tuning: start the virtual tokens from this text's embeddings (default: random)."
        },
    )
    ia3_target_modules: list[str] | None = field(
        default=None, metadata={"help": "ia3: modules to rescale (default: PEFT's for the model family)."}
    )
    ia3_feedforward_modules: list[str] | None = field(
        default=None,
        metadata={"help": "ia3: which of `ia3_target_modules` are feed-forward (rescaled at input)."},
    )
    trainable_layers: int | None = field(
        default=None,
        metadata={
            "help": "Train only the last N transformer blocks (plus the final norm and a new score head) of a "
            "full model; the rest is frozen. None: every layer trains. Not with `use_peft`."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without improvement of `metric_for_best_model` (default "
            "eval_loss) and keep the best checkpoint; needs eval data. Sets the eval/save schedule to match."
        },
    )
    early_stopping_threshold: float | None = field(
        default=None, metadata={"help": "How much better the metric must get to count as an improvement (0)."}
    )


# Our optional string keys, where `--key none` on the command line means unset (YAML has `null`); TRL keeps
# "none" as a string for its own string keys (`report_to: none` means no tracker).
OPTIONAL_PATHS = tuple(
    f.name for f in dataclasses.fields(RecipeArguments) if f.type in ("str | None", str | None)
)


def stage_config_class(stage: str) -> type:
    """TRL's config dataclass for a stage. Imported lazily: TRL takes seconds to import."""
    from alignment.stages import trl_attribute

    if stage not in STAGE_CONFIGS:
        raise RecipeError(f"unknown stage {stage!r}; known stages: {', '.join(STAGE_CONFIGS)}")
    return trl_attribute(STAGE_CONFIGS[stage])


STAGES = tuple(STAGE_TABLE)  # stages with a training script (scripts/run_<stage>.py)
# Every stage a recipe can be parsed for: the training stages, and the row shapes the data layer knows
# without a script (`alignment data --stage`), which borrow the TRL config whose data keys they use.
STAGE_CONFIGS = {**{name: s.config for name, s in STAGE_TABLE.items()}, **DATA_ONLY_STAGES}
DATA_STAGES = tuple(STAGE_CONFIGS)

# Loss types DPOTrainer accepts in trl 1.16 (its `loss_type` field is a free list of strings).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


@dataclass
class Recipe:
    """A parsed, validated recipe: everything a stage script needs, nothing loaded yet."""

    stage: str
    path: str | None
    args: RecipeArguments
    training: Any  # the stage's TRL config, e.g. trl.SFTConfig
    model: Any  # trl.ModelConfig
    mixture: MixtureConfig
    cli_overrides: list[str]
    notes: list[str]  # migrations and fallbacks applied, for the log and the model card
    given: set[str]  # keys the recipe file or the command line set (after legacy renames)
    precision: str = "fp32"  # bf16 | fp16 | fp32 as the recipe asks, before any fallback for this machine
    device_notes: list[str] = field(default_factory=list)  # what this machine changed (also in `notes`)
    dry_run: bool = False  # `--dry_run` on the command line: validate and print the plan, train nothing

    @property
    def world_size(self) -> int:
        """Processes this run trains on, as set by `accelerate launch`/torchrun (1 when run directly)."""
        return int(os.environ.get("WORLD_SIZE", "1"))

    def global_batch_size(self, processes: int | None = None) -> int:
        t = self.training
        return t.per_device_train_batch_size * t.gradient_accumulation_steps * (processes or self.world_size)


# --- Parsing -----------------------------------------------------------------------------------------


def split_recipe_path(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take the recipe path from `argv`: positional first argument or `--config PATH`."""
    argv = list(argv)
    path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise RecipeError("`--config` needs a recipe path")
        path = argv[i + 1]
        del argv[i : i + 2]
    elif argv and not argv[0].startswith("-"):
        path = argv.pop(0)
    stray = [a for a in argv if a.endswith((".yaml", ".yml")) and not a.startswith("-")]
    if path and stray and not any(a.startswith("--") for a in argv[: argv.index(stray[0])]):
        raise RecipeError(f"give one recipe, got {path} and {stray[0]}")
    return path, argv


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_recipe_file(path: str) -> dict[str, Any]:
    """Read a recipe YAML mapping; set its `env:` block in the environment."""
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        config = yaml.load(file.read_text(), Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as err:
        raise RecipeError(
            f"{path}:{err.line}: key `{err.key}` appears twice (the last would silently win)"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping of keys to values")
    env = config.pop("env", {}) or {}
    if not isinstance(env, dict):
        raise RecipeError(f"{path}: `env` must be a mapping of variable names to values")
    from alignment.secrets import register_environment

    register_environment({str(k): str(v) for k, v in env.items()})  # redacted wherever we write the recipe
    for name, value in env.items():
        os.environ[str(name)] = str(value)
    return config


def _parser(dataclass_types: Sequence[type]):
    # TRL's parser, not transformers': it takes `none`/`null` for optional fields (`--max_length none`).
    from trl import TrlParser

    class RecipeParser(TrlParser):
        def error(self, message: str):  # argparse would print usage and exit; we want one line
            match = re.match(r"argument --([\w-]+)(?:/--[\w-]+)?: (.*)", message)
            raise RecipeError(f"`{match[1]}`: {match[2]}" if match else message)

    # allow_abbrev=False: argparse would otherwise accept `--num_train_epoch` as `--num_train_epochs`.
    return RecipeParser(dataclass_types, allow_abbrev=False)


def _require_choice(origin: str, key: str, value: Any, choices: Sequence[str], verdict: str = "") -> None:
    """Raise naming `key`, the bad item, the valid choices and the nearest one, unless every item is a choice."""
    for item in value if isinstance(value, list) else [value]:
        item = getattr(item, "value", item)
        if item is not None and str(item) not in choices:
            raise RecipeError(
                f"{origin}: `{key}` {'' if verdict else 'is '}{item!r}{verdict}; "
                f"choose one of {', '.join(choices)}{closest(str(item), choices)}"
            )


def _check_choices(parser, values: dict[str, Any], origin: str) -> None:
    """argparse checks choices only for command-line values; YAML values arrive as defaults, unchecked."""
    for action in parser._actions:
        if action.choices and action.dest in values:
            choices = [str(getattr(c, "value", c)) for c in action.choices]
            _require_choice(origin, action.dest, values[action.dest], choices)


def _check_values(values: dict[str, Any], stage: str, origin: str) -> None:
    """Fixed-choice values that TRL/transformers leave as free strings, and rules across keys."""
    from alignment.hardware import attention_implementations

    if stage == "dpo":
        _require_choice(origin, "loss_type", values.get("loss_type"), DPO_LOSS_TYPES, " is not a DPO loss")
    attn = values.get("attn_implementation")
    if attn is not None and "/" not in attn:  # "org/kernel": a Hub kernel, transformers checks it at load
        _require_choice(origin, "attn_implementation", attn, attention_implementations(), " is unknown")
    template = values.get("chat_template")
    if template is not None and "{" not in template:  # a Jinja string is taken as is
        _require_choice(
            origin,
            "chat_template",
            template,
            sorted(BUILTIN_TEMPLATES),
            " is neither a built-in nor a Jinja template",
        )
    if (values.get("load_in_4bit") or values.get("load_in_8bit")) and not values.get("use_peft"):
        raise RecipeError(
            f"{origin}: `load_in_4bit`/`load_in_8bit` train only adapters: set `use_peft: true` (QLoRA)"
        )
    _check_rewards(values, stage, origin)
    has_name, has_mixture = values.get("dataset_name") is not None, values.get("dataset_mixture") is not None
    if has_name == has_mixture:
        which = "both" if has_name else "neither"
        raise RecipeError(f"{origin}: set exactly one of `dataset_name` and `dataset_mixture` (got {which})")
    if values.get("model_name_or_path") is None:
        raise RecipeError(f"{origin}: `model_name_or_path` is required")


def _check_rewards(values: dict[str, Any], stage: str, origin: str) -> None:
    """Rewards are read by the online-RL stages only, which need at least one."""
    from alignment.stages import STAGES as table

    rl_stages = [name for name, s in table.items() if s.rewards]
    given = [key for key in ("reward_funcs", "reward_model_name_or_path") if values.get(key)]
    if stage not in rl_stages and stage in table:
        if given:
            raise RecipeError(
                f"{origin}: `{given[0]}` is read only by the online-RL stages ({', '.join(rl_stages)}), "
                f"not by {stage}; remove it"
            )
    elif stage in rl_stages and not given:
        raise RecipeError(
            f"{origin}: stage {stage} needs a reward: set `reward_funcs` (e.g. [exact_answer]) and/or "
            "`reward_model_name_or_path` (a reward model from the rm stage)"
        )
    if values.get("reward_funcs"):
        from alignment.rewards import resolve_rewards

        try:
            resolve_rewards(values["reward_funcs"])
        except RecipeError as err:
            raise RecipeError(f"{origin}: {err}") from None


def requested_precision(values: dict[str, Any]) -> str:
    """bf16, fp16 or fp32, as the recipe asks (TRL: an unset `bf16` means bf16 unless `fp16` is on)."""
    if values.get("fp16") and values.get("bf16"):
        raise RecipeError("`bf16` and `fp16` are both true; choose one")
    if values.get("fp16"):
        return "fp16"
    return "fp32" if values.get("bf16") is False else "bf16"


def device_fallbacks(values: dict[str, Any], precision: str, explicit: set[str]) -> list[str]:
    """Make a GPU recipe parse on this machine instead of failing inside TrainingArguments; one note per change.

    On a CPU with native bf16 (AMX, AVX512-BF16) a bf16 recipe keeps bf16 autocast: there it trains
    faster than fp32 (`make bench`). Elsewhere bf16 and fp16 fall back to fp32.
    """
    from alignment.hardware import bf16_supported, cpu_bf16_is_fast, has_accelerator

    notes = []
    said_bf16 = "bf16" in explicit
    if not has_accelerator():
        if precision == "bf16" and cpu_bf16_is_fast():
            values["bf16"], values["fp16"] = True, False
            notes.append(
                "no GPU: bf16 autocast on this CPU (it has native bf16 instructions, AMX/AVX512-BF16)"
            )
        elif precision != "fp32":
            if precision == "fp16" or said_bf16:
                notes.append(f"{precision} requested but this machine has no GPU: training in float32 here")
            values["bf16"] = values["fp16"] = False
        # Without use_cpu, `accelerate launch --multi_gpu` on CPU runs each rank alone with no error.
        values["use_cpu"] = True
    elif precision == "bf16" and not bf16_supported():
        notes.append(
            "bf16 requested but this GPU has no bf16 (e.g. T4, V100): training in float32 here; "
            "set `fp16: true` for mixed precision on it"
        )
        values["bf16"] = False
    return notes


def _secure(values: dict[str, Any], explicit: set[str]) -> list[str]:
    """Keep the Hub token out of saved files, push privately by default, and say so when remote code runs."""
    from alignment.secrets import move_hub_token, register_environment

    register_environment()  # HF_TOKEN, WANDB_API_KEY, ... of this process: redacted wherever we write
    notes = [note] if (note := move_hub_token(values)) else []
    if values.get("push_to_hub") and "hub_private_repo" not in explicit:
        values["hub_private_repo"] = True
        notes.append(
            "push_to_hub: the Hub repository is created private; set `hub_private_repo: false` to publish"
        )
    if values.get("trust_remote_code"):
        logger.warning(
            "trust_remote_code is on: Python code from the model's repository will run on this machine "
            "with your permissions; keep it off unless you have read that code"
        )
    return notes


def drop_options(argv: Sequence[str], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """`argv` without the `--name value` / `--name=value` options of `names`; and those dropped, as `--name`.

    A value is taken with its option unless it is itself an option (`--name` last, or before `--other`).
    """
    kept: list[str] = []
    dropped: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg[2:].partition("=")[0] if arg.startswith("--") else None
        if name not in names:
            kept.append(arg)
            continue
        dropped.append(f"--{name}")
        skip = "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--")
    return kept, list(dict.fromkeys(dropped))


def _pop_dry_run(cli: list[str]) -> tuple[bool, list[str]]:
    """`--dry_run` is a command-line switch, never a recipe key (a recipe that set it would never train)."""
    out, dry_run = [], False
    i = 0
    while i < len(cli):
        arg = cli[i]
        if arg == "--dry_run" or arg.startswith("--dry_run="):
            value = arg.partition("=")[2]
            if not value and i + 1 < len(cli) and cli[i + 1].lower() in ("true", "false"):
                value = cli[i + 1]
                i += 1
            dry_run = value.lower() != "false"
        else:
            out.append(arg)
        i += 1
    return dry_run, out


def parse_recipe(stage: str, argv: Sequence[str] | None = None) -> Recipe:
    """Parse `[RECIPE] [--key value ...]` for `stage` into a validated `Recipe`. Loads no model or data."""
    # TRL/transformers can print to stdout while importing or building configs (wandb's offline notice);
    # stdout stays ours, for the dry-run plan.
    from alignment.logs import quiet_library_noise

    with contextlib.redirect_stdout(sys.stderr):
        quiet_library_noise()
        return _parse_recipe(stage, argv)


def _parse_recipe(stage: str, argv: Sequence[str] | None) -> Recipe:
    from trl import ModelConfig

    from alignment.adapters import check_peft_keys
    from alignment.early_stopping import apply_early_stopping
    from alignment.migrations import migrate_cli, migrate_config
    from alignment.online_rl import vllm_device_note
    from alignment.speed import apply_fast_defaults
    from alignment.trackers import require_trackers

    argv = list(sys.argv[1:] if argv is None else argv)
    config_class = stage_config_class(stage)
    dataclass_types = (RecipeArguments, config_class, ModelConfig)
    valid = {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}

    path, cli = split_recipe_path(argv)
    dry_run, cli = _pop_dry_run(cli)
    origin = path or "command line"
    config = load_recipe_file(path) if path else {}
    if "dry_run" in config:
        raise RecipeError(
            f"{origin}: `dry_run` is a command-line flag, not a recipe key (a recipe that sets it "
            "would never train); remove it and pass `--dry_run`"
        )
    try:
        config, notes = migrate_config(config, valid, stage)
        cli = migrate_cli(cli, valid, stage, notes)
    except RecipeError as err:
        raise RecipeError(f"{origin}: {err}") from None
    for key in config:
        if key not in valid:
            raise RecipeError(f"{origin}: unknown key `{key}` for stage {stage}{closest(key, valid)}")

    parser = _parser(dataclass_types)
    for action in parser._actions:
        if action.dest in config:
            action.default = config[action.dest]
            action.required = False
    _check_choices(parser, config, origin)
    namespace, unknown = parser.parse_known_args(cli)
    flags = [a for a in unknown if a.startswith("--")]
    if flags or unknown:
        bad = (flags or unknown)[0].lstrip("-").split("=")[0]
        raise RecipeError(f"command line: unknown option `--{bad}` for stage {stage}{closest(bad, valid)}")
    values = vars(namespace)
    for name in OPTIONAL_PATHS:  # TRL's parser takes `none` for optional fields, except string ones
        if isinstance(values.get(name), str) and values[name].lower() in ("none", "null"):
            values[name] = None
    explicit = set(config) | {a[2:].split("=")[0] for a in cli if a.startswith("--")}
    _check_values(values, stage, origin)
    check_values(values, stage, origin, notes)
    notes += check_peft_keys(values, explicit, origin)
    notes += apply_early_stopping(values, explicit, origin)
    if values.get("trainable_layers") is not None and values.get("use_peft"):
        raise RecipeError(
            f"{origin}: `trainable_layers` freezes part of a full model; with `use_peft` the adapter decides what "
            "trains: remove one of them"
        )
    if values.get("activation_checkpointing") is None and "activation_checkpointing" in values:
        # TRL's default lives on the deprecated alias; moving it over keeps transformers' FutureWarning quiet.
        values["activation_checkpointing"] = values.get("gradient_checkpointing")
        values["gradient_checkpointing"] = None
    try:
        precision = requested_precision(values)
    except RecipeError as err:
        raise RecipeError(f"{origin}: {err}") from None
    device_notes = device_fallbacks(values, precision, explicit)
    device_notes += apply_fast_defaults(values, stage, explicit)
    notes += device_notes
    notes += _secure(values, explicit)
    if "logging_nan_inf_filter" in values and "logging_nan_inf_filter" not in explicit:
        values["logging_nan_inf_filter"] = False  # a NaN loss must show (and stop the run: callbacks.py)

    built = []
    for cls in dataclass_types:
        kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values}
        try:
            built.append(cls(**kwargs))
        except (ValueError, TypeError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RecipeError(f"{origin}: {first_line}") from None
    args, training, model = built
    mixture = resolve_mixture(args, origin)
    if note := decontaminate_generation_prompts(mixture, args.eval_generation_prompts):
        notes.append(note)
    check_eval_data(training, bool(mixture.test_split or mixture.test_split_size), origin, args)
    try:
        require_trackers(training.report_to)
    except RecipeError as err:
        if not dry_run:  # a dry run describes the target machine, where the tracker may well be installed
            raise RecipeError(f"{origin}: {err}") from None
        device_notes.append(f"{err} (on this machine)")
        notes.append(device_notes[-1])
    if why := vllm_device_note(training):
        if not dry_run:  # a dry run describes the target machine, which has the GPU
            raise RecipeError(f"{origin}: {why}; set `use_vllm: false` to generate with transformers")
        device_notes.append(f"{why} (on this machine)")
        notes.append(device_notes[-1])
    if os.environ.get("RANK", "0") == "0":  # once per launch, not once per process
        for note in notes:
            logger.warning(note)
    return Recipe(stage, path, args, training, model, mixture, cli, notes, explicit, precision, device_notes,
                  dry_run)  # fmt: skip


def decontaminate_generation_prompts(mixture: MixtureConfig, prompts: str | None) -> str | None:
    """`eval_generation_prompts` is an evaluation set the recipe names, so training rows are checked
    against it too, as against `decontaminate` files (a local JSONL or JSON file; a Hub set is not read)."""
    if not prompts or Path(prompts).suffix not in (".jsonl", ".json") or not Path(prompts).is_file():
        return None
    if any(Path(p).resolve() == Path(prompts).resolve() for p in mixture.decontaminate):
        return None
    mixture.decontaminate.append(prompts)
    return f"decontamination: training rows are also checked against `eval_generation_prompts` ({prompts})"


def resolve_mixture(args: RecipeArguments, origin: str) -> MixtureConfig:
    """One `MixtureConfig` whether the recipe gave `dataset_name` or `dataset_mixture`."""
    if args.dataset_mixture is not None:
        raw = args.dataset_mixture
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as err:
                raise RecipeError(
                    f"{origin}: `dataset_mixture` on the command line must be JSON ({err})"
                ) from None
        return MixtureConfig.from_dict(raw, origin=origin)
    source = {"id": args.dataset_name, "split": args.dataset_train_split}
    if args.dataset_config:
        source["config"] = args.dataset_config
    return MixtureConfig.from_dict(
        {"datasets": [source], "test_split": args.dataset_test_split}, origin=origin
    )
