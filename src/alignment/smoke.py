"""Smoke runs: any recipe for a few steps on a laptop CPU, before the GPUs are paid for.

    alignment check recipes/zephyr-7b-beta/sft/config_qlora.yaml --smoke

A dry run reads the recipe and the first rows of local data; it cannot see a loss that needs a column
the rows lack, a template that breaks on the real rows, or a PEFT/quantization setup that fails once
a model exists. A smoke run runs the recipe's own stage script (its trainer, loss, template, PEFT and
quantization where the CPU allows, and its mixture's shape) with these substitutions, each logged:

- the model: a tiny random one of the same architecture family, shrunk from the local or cached
  `config.json` (never downloaded), with the model's own tokenizer when it is local or cached; else a
  tiny Llama with a character-level tokenizer;
- the data: the first rows of each local source (its `format`, `columns` and `tags` kept), or, for a
  Hub source, its first rows when the Hub is reachable and else rows generated in the source's
  declared format and columns;
- online RL (grpo, rloo): generation with transformers instead of vLLM (which needs a CUDA GPU), groups
  of 2 short answers, and the smoke model with a new one-output head as the reward model.

No other recipe tool has this; TRL and the Alignment Handbook offer only the full run.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError
from alignment.recipe import drop_options
from alignment.stages import data_stage, stage

if TYPE_CHECKING:
    from alignment.data.sources import DatasetSource
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)

SMOKE_ROWS = 16  # rows per source and split: a few batches
SMOKE_STEPS = 2
# The shrunk model: enough to run every code path, small enough to build and train in seconds.
SHRINK = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64,
    "num_experts": 2,
    "num_local_experts": 2,
    "n_routed_experts": 2,
    "num_experts_per_tok": 1,
}
# Keys a shrunk config drops: they describe the full model's weights or their storage.
DROPPED = ("quantization_config", "auto_map", "_name_or_path", "architectures")
# What the smoke run sets on top of the recipe: short, local, nothing pushed or reported.
SMOKE_OVERRIDES = {
    "max_steps": SMOKE_STEPS,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
    "save_strategy": "no",
    "eval_strategy": "no",
    "load_best_model_at_end": False,
    "push_to_hub": False,
    "report_to": "none",
    "dataset_num_proc": 1,
    "dataloader_num_workers": 0,
}
# Online RL on a CPU: vLLM needs CUDA; 2 answers are the smallest group with a leave-one-out baseline (and
# fill the smoke batch of 2); at most 16 tokens each keep sampling to a second.
ONLINE_RL_OVERRIDES = {"use_vllm": False, "num_generations": 2}
SMOKE_COMPLETION_TOKENS = 16
DATA_KEYS = (
    "dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split", "dataset_mixture",
    "datasets", "dataset_streaming", "streaming", "dataset_mixer", "dataset_splits",
)  # fmt: skip
MODEL_KEYS = ("model_name_or_path", "tokenizer_name_or_path", "model_revision")


@dataclass
class SmokeSetup:
    """What replaces the recipe's model and data, and why (the notes are printed and logged)."""

    folder: Path
    model: Path
    mixture: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)  # stage keys replaced on the command line


def smoke_run(recipe: Recipe, argv_overrides: list[str], keep: bool = False) -> int:
    """Prepare the tiny model and rows, run the stage script on them; return its exit status.

    The work folder is removed after a passing run unless `keep`; a failing one keeps it for inspection.
    """
    if recipe.path is None:
        raise RecipeError("--smoke needs a recipe file")
    folder = Path(tempfile.mkdtemp(prefix="alignment-smoke-"))
    setup = prepare_smoke(recipe, folder)
    for note in setup.notes:
        logger.warning(f"smoke: {note}")
    smoke_recipe = write_smoke_recipe(recipe, setup)
    # already resolved into `setup`
    kept, _ = drop_options(argv_overrides, (*DATA_KEYS, *MODEL_KEYS, *setup.overrides))
    overrides = [*kept, *smoke_cli(folder, recipe.training, setup.overrides)]
    logger.warning(f"smoke: running {recipe.stage} for {SMOKE_STEPS} steps on CPU in {folder}")
    status = run_script_here(recipe.stage, [str(smoke_recipe), *overrides])
    if status == 0:
        summary = smoke_summary(folder / "out")
        print(f"smoke run of {recipe.path}: ok ({summary}; {len(setup.notes)} substitution(s) noted above)")
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"smoke run of {recipe.path}: FAILED (exit {status}); its files are in {folder}")
    return status


def run_script_here(stage: str, argv: list[str]) -> int:
    """Run scripts/run_<stage>.py in this process (its libraries are already imported); return its exit status.

    The script is the user's own entry point, run as `python scripts/run_<stage>.py ARGV` would run it.
    """
    import runpy
    import sys
    import traceback

    from alignment.launch import script_path

    script = str(script_path(stage))
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception:  # the failure the smoke run is for: shown whole, as the real run would show it
        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved
    return 0


def prepare_smoke(recipe: Recipe, folder: Path) -> SmokeSetup:
    """Write the tiny model (folder/model) and the smoke rows (folder/data); return what replaced what.

    Each split is written as `<name>.jsonl` without its slice (`train_sft[:10%]` -> `train_sft`): the
    smoke rows are already the first few.
    """
    from alignment.data.sources import split_name
    from alignment.tiny.build import write_jsonl

    notes: list[str] = []
    rows = {}
    mixture = recipe.mixture.to_dict()  # dataclasses.asdict: a deep copy
    for index, (source, raw) in enumerate(zip(recipe.mixture.datasets, mixture["datasets"], strict=True)):
        splits = [source.split] + ([recipe.mixture.test_split] if recipe.mixture.test_split else [])
        target = folder / "data" / f"source{index}"
        for split in splits:
            # each source and split its own rows: no duplicates, no contamination
            start = SMOKE_ROWS * len(rows)
            rows[(index, split)] = source_rows(source, split, data_stage(recipe.stage), notes, start)
            write_jsonl(target / f"{split_name(split)}.jsonl", rows[(index, split)])
        raw["id"] = str(target)
        raw["split"] = split_name(source.split)
        for key in ("data_files", "data_dir", "config", "column_names"):  # the rows are written as JSON Lines
            raw[key] = None
        if source.samples and source.samples > SMOKE_ROWS:
            raw["samples"] = SMOKE_ROWS * 2  # keeps the repetition a count above the rows causes
            notes.append(f"{source.label}: samples {source.samples} -> {raw['samples']}")
    if recipe.mixture.test_split:
        mixture["test_split"] = split_name(recipe.mixture.test_split)
    texts = [json.dumps(r) for part in rows.values() for r in part]
    model = build_smoke_model(recipe, folder / "model", texts, notes)
    overrides = online_rl_overrides(recipe, model, notes) if stage(recipe.stage).rewards else {}
    if recipe.args.eval_generation_prompts:
        overrides.update(generation_eval_overrides(recipe, folder, notes, start=SMOKE_ROWS * len(rows)))
    if recipe.args.early_stopping_patience is not None:  # it needs evals and saves, which a smoke run skips
        overrides.update(early_stopping_patience=None, early_stopping_threshold=None)
        notes.append("early stopping: off (a smoke run neither evaluates nor saves)")
    return SmokeSetup(folder=folder, model=model, mixture=mixture, notes=notes, overrides=overrides)


def online_rl_overrides(recipe: Recipe, model: Path, notes: list[str]) -> dict[str, Any]:
    """What an online-RL recipe runs with on a CPU (ONLINE_RL_OVERRIDES, and the reward model), each noted."""
    training = recipe.training
    shortest = min(training.max_completion_length or SMOKE_COMPLETION_TOKENS, SMOKE_COMPLETION_TOKENS)
    overrides = {}
    for key, value in {**ONLINE_RL_OVERRIDES, "max_completion_length": shortest}.items():
        if getattr(training, key) != value:
            overrides[key] = value
            notes.append(f"{key}: {getattr(training, key)} -> {value}")
    if recipe.args.reward_model_name_or_path:
        # the smoke policy under a new one-output head (random scores): the reward model's code path, not its skill
        overrides["reward_model_name_or_path"] = str(model)
        notes.append(
            f"reward model: {recipe.args.reward_model_name_or_path} -> the smoke model with a new one-output head"
        )
    return overrides


def generation_eval_overrides(recipe: Recipe, folder: Path, notes: list[str], start: int) -> dict[str, Any]:
    """Smoke prompts with their answers in place of the recipe's `eval_generation_prompts`: the callback runs."""
    from alignment.tiny.build import write_jsonl

    path = folder / "data" / "generation_eval.jsonl"
    exchanges = [_exchange(start + i) for i in range(SMOKE_ROWS)]
    write_jsonl(path, [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a, _ in exchanges])
    notes.append(
        f"eval_generation_prompts: {recipe.args.eval_generation_prompts} -> {SMOKE_ROWS} smoke prompts"
    )
    return {"eval_generation_prompts": str(path), "eval_generation_split": "train"}


# --- Data ----------------------------------------------------------------------------------------------


def source_rows(
    source: DatasetSource, split: str, stage: str, notes: list[str], start: int = 0
) -> list[dict]:
    """The first rows of `split` of a local source, or of a reachable Hub one; else rows generated to its shape."""
    from alignment.data.probe import read_head
    from alignment.data.sources import is_local

    if is_local(source.id):
        return read_head(source, split, SMOKE_ROWS).rows  # only the first rows are read, as a dry run does
    first = hub_rows(source, split)
    if first is not None:
        notes.append(f"{source.label} [{split}]: its first {len(first)} rows, streamed from the Hub")
        return first
    fmt = generated_format(source, stage)
    notes.append(
        f"{source.label} [{split}]: on the Hub and not reachable: {SMOKE_ROWS} rows generated in the "
        f"{fmt} format" + (f" with its columns {source.columns}" if source.columns else "")
    )
    return generate_rows(fmt, stage, source.columns, source.tags, SMOKE_ROWS, start)


def hub_rows(source: DatasetSource, split: str) -> list[dict] | None:
    """The first rows of a Hub split, streamed (nothing downloaded whole); None when offline or unreachable."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        import datasets

        from alignment.data.sources import split_name

        stream = datasets.load_dataset(source.id, name=source.config, split=split_name(split), streaming=True)
        return list(stream.take(SMOKE_ROWS))
    except Exception as err:  # no network, gated, missing: the generated rows stand in, with a note
        logger.info(
            f"smoke: could not stream {source.label}: {str(err).splitlines()[0] if str(err) else err}"
        )
        return None


def generated_format(source: DatasetSource, stage: str) -> str:
    """The format to generate rows in: the source's own, else the one its `columns` name, else the stage's."""
    if source.format:
        return source.format
    columns = source.columns or []
    names = set(columns.keys() if isinstance(columns, dict) else columns)
    for needed, fmt in COLUMN_FORMATS:  # e.g. UltraFeedback's pairs read for their prompts by grpo/rloo
        if needed <= names:
            return fmt
    return DEFAULT_FORMATS.get(stage, "messages")


COLUMN_FORMATS = (({"chosen", "rejected"}, "preference"), ({"prompt", "completion"}, "prompt_completion"),
                  ({"messages"}, "messages"))  # fmt: skip
DEFAULT_FORMATS = {"sft": "messages", "dpo": "preference", "rm": "preference", "kto": "kto", "cpt": "text",
                   "classify": "classification", "prompt": "prompt_only"}  # fmt: skip
QUESTIONS = [
    ("What is {a} plus {b}?", "{a} plus {b} is {s}.", "{a} plus {b} is {w}."),
    ("Spell {word} backwards.", "{rev}", "{word}"),
    ("Write {word} in capitals.", "{up}", "{word}"),
    ("How many letters are in {word}?", "{word} has {n} letters.", "{word} has {m} letters."),
]
WORDS = ["river", "lantern", "copper", "meadow", "harbour", "pencil", "orchard", "violet"]


def generate_rows(
    fmt: str, stage: str, columns: Any, tags: dict[str, str] | None, count: int, start: int = 0
) -> list[dict]:
    """`count` rows in format `fmt` for `stage`, named as the source's `columns` say (realistic, verifiable)."""
    rows = []
    for i in range(start, start + count):
        question, good, bad = _exchange(i)
        rows.append(_row(fmt, stage, question, good, bad, columns, tags or {}, i))
    if isinstance(columns, dict):  # {reader's name: file's column}: write the file's names
        rows = [{columns.get(k, k): v for k, v in row.items()} for row in rows]
    return rows


def _exchange(i: int) -> tuple[str, str, str]:
    template = QUESTIONS[i % len(QUESTIONS)]
    word = WORDS[i % len(WORDS)]
    a, b = 3 + i, 7 + 2 * i
    values = {"a": a, "b": b, "s": a + b, "w": a + b + 1, "word": word, "rev": word[::-1],
              "up": word.upper(), "n": len(word), "m": len(word) + 2}  # fmt: skip
    return tuple(part.format(**values) for part in template)  # type: ignore[return-value]


def _row(fmt: str, stage: str, question: str, good: str, bad: str, columns: Any, tags: dict, i: int) -> dict:
    user, answer = {"role": "user", "content": question}, {"role": "assistant", "content": good}
    wrong = {"role": "assistant", "content": bad}
    if fmt == "sharegpt":
        role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
        user_tag, assistant_tag = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
        return {"conversations": [{role: user_tag, content: question}, {role: assistant_tag, content: good}]}
    if fmt == "alpaca":
        base = {"instruction": question, "input": ""}
        return (
            {**base, "chosen": good, "rejected": bad} if stage in ("dpo", "rm") else {**base, "output": good}
        )
    if fmt == "prompt_only":  # a question and its verifiable reference answer
        return {"prompt": question, "answer": good}
    if fmt == "prompt_completion":
        return {"prompt": question, "completion": good, **({"label": i % 2 == 0} if stage == "kto" else {})}
    if fmt == "hh":
        return {"chosen": f"\n\nHuman: {question}\n\nAssistant: {good}",
                "rejected": f"\n\nHuman: {question}\n\nAssistant: {bad}"}  # fmt: skip
    if fmt == "preference":
        wanted = (
            list(columns.keys()) if isinstance(columns, dict) else columns or ["prompt", "chosen", "rejected"]
        )
        if "prompt" in wanted:
            return {"prompt": [user], "chosen": [answer], "rejected": [wrong]}
        return {"chosen": [user, answer], "rejected": [user, wrong]}  # whole conversations (UltraFeedback)
    if fmt == "kto":
        return {"messages": [user, answer if i % 2 == 0 else wrong], "label": i % 2 == 0}
    if fmt in ("text", "classification"):
        return {"text": f"{question} {good}", **({"label": i % 2} if fmt == "classification" else {})}
    return {"messages": [user, answer, {"role": "user", "content": "Thank you."},
                         {"role": "assistant", "content": "You are welcome."}]}  # fmt: skip


# --- Model ---------------------------------------------------------------------------------------------


def build_smoke_model(recipe: Recipe, folder: Path, texts: list[str], notes: list[str]) -> Path:
    """A tiny random model of the recipe's family with its tokenizer, saved to `folder`."""
    import torch
    from transformers import AutoModelForCausalLM

    source = recipe.args.tokenizer_name_or_path or recipe.model.model_name_or_path
    found = model_config(recipe.model.model_name_or_path, notes)
    tokenizer = _local_tokenizer(source, recipe)
    if tokenizer is None:
        from alignment.tiny.build import build_tokenizer

        tokenizer = build_tokenizer(texts)
        notes.append(
            f"tokenizer: {source} is neither local nor cached: a character-level one built from the rows"
        )
    positions = max(getattr(recipe.training, "max_length", None) or 0, 128)  # GRPO/RLOO have no max_length
    config = shrunk_config(*found, len(tokenizer), positions, notes) if found else None
    if config is None:
        config = tiny_llama_config(len(tokenizer), positions)
        notes.append(
            f"model: no config.json of {recipe.model.model_name_or_path} here: a tiny random Llama stands in"
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def model_config(model: str, notes: list[str]) -> tuple[dict, str] | None:
    """The model's config.json and where it was read (the folder, an adapter's base, the Hub cache); or None."""
    from alignment.model import adapter_base
    from alignment.recipe_checks import local_model_config

    if Path(model).expanduser().is_dir() and (base := adapter_base(model)):
        notes.append(f"model: {model} is an adapter: shrinking its base {base}")
        return model_config(base, notes)
    config = local_model_config(model)
    return (config, model) if config is not None else None


def _local_tokenizer(source: str, recipe: Recipe) -> Any | None:
    """The model's own tokenizer when it is local or in the Hub cache; None otherwise (nothing downloaded)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            source, local_files_only=True, trust_remote_code=recipe.training.trust_remote_code
        )
    except Exception:  # absent, not cached, or unreadable here: the tiny tokenizer stands in
        return None


def shrunk_config(raw: dict, source: str, vocab: int, positions: int, notes: list[str]) -> Any | None:
    """The family's config (`raw`, read from `source`) with few small layers; None (with a note) when it cannot
    be built here."""
    from transformers import AutoConfig

    model_type = raw.get("model_type")
    values = {k: v for k, v in raw.items() if k not in DROPPED and k != "model_type"}
    for key, small in SHRINK.items():
        if key in values and isinstance(values[key], int):
            values[key] = min(values[key], small) if key != "head_dim" else small
    if "head_dim" not in values and "hidden_size" in values:
        values["head_dim"] = values["hidden_size"] // values.get("num_attention_heads", 1)
    layers = values.get("num_hidden_layers", 2)
    for key, value in list(values.items()):
        if isinstance(value, list) and key.endswith("layer_types"):
            values[key] = value[:layers]
    values["vocab_size"] = vocab
    values["max_position_embeddings"] = max(values.get("max_position_embeddings", 0), positions)
    try:
        config = AutoConfig.for_model(model_type, **values)
    except Exception as err:  # an unknown or remote-code family: the tiny Llama stands in
        notes.append(f"model: cannot build a small {model_type} here ({str(err).splitlines()[0]})")
        return None
    notes.append(
        f"model: a random {model_type} shrunk to {config.num_hidden_layers} layers of {config.hidden_size} "
        f"from {source}'s config.json"
    )
    return config


def tiny_llama_config(vocab: int, positions: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=SHRINK["hidden_size"],
        num_hidden_layers=SHRINK["num_hidden_layers"],
        num_attention_heads=SHRINK["num_attention_heads"],
        num_key_value_heads=SHRINK["num_key_value_heads"],
        intermediate_size=SHRINK["intermediate_size"],
        max_position_embeddings=positions,
    )


# --- The run -------------------------------------------------------------------------------------------


def write_smoke_recipe(recipe: Recipe, setup: SmokeSetup) -> Path:
    """The recipe file with its model and data replaced; every other key as the user wrote it."""
    import yaml

    from alignment.recipe import load_recipe_file

    raw = {k: v for k, v in load_recipe_file(recipe.path).items() if k not in (*DATA_KEYS, *MODEL_KEYS)}
    raw["model_name_or_path"] = str(setup.model)
    raw["dataset_mixture"] = setup.mixture
    path = setup.folder / Path(recipe.path).name
    path.write_text(f"# smoke run of {recipe.path}\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def smoke_cli(folder: Path, training: Any = None, extra: dict[str, Any] | None = None) -> list[str]:
    # only the keys the stage's config has: RLOOConfig has no dataset_num_proc, and would refuse it
    values = {k: v for k, v in SMOKE_OVERRIDES.items() if training is None or hasattr(training, k)}
    out = []
    for key, value in {**values, **(extra or {}), "output_dir": str(folder / "out")}.items():
        out += [f"--{key}", json.dumps(value) if isinstance(value, bool) else str(value)]
    return out


def smoke_summary(output_dir: Path) -> str:
    """`2 steps, loss 10.37 -> 10.31` from the run's trainer_state.json."""
    try:
        state = json.loads((output_dir / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no trainer_state.json"
    losses = [e["loss"] for e in state.get("log_history", []) if "loss" in e]
    if not losses:
        return f"{state.get('global_step')} steps"
    return f"{state.get('global_step')} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g}"
