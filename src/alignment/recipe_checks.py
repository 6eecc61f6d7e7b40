"""Value checks made while a recipe is parsed, for what TRL and transformers check late or never.

`TrainingArguments` accepts `per_device_train_batch_size: 0`, `gradient_accumulation_steps: 0`
(a ZeroDivisionError after the model loads), `num_train_epochs: -1` (trains nothing and exits 0),
`per_device_eval_batch_size: 0` (crashes after training, before the save); PEFT builds `lora_r: 0`;
DPO takes `beta: 0`. Each rule here is one line naming the key and the value, raised before any
model, tokenizer or data is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

# (key, rule, what the value must be); a rule gets the value and all values, True when fine.
Rule = tuple[str, Callable[[Any, dict[str, Any]], bool], str]

COMMON_RULES: list[Rule] = [
    ("per_device_train_batch_size", lambda v, _: v >= 1, "at least 1"),
    ("per_device_eval_batch_size", lambda v, _: v >= 1, "at least 1"),
    ("gradient_accumulation_steps", lambda v, _: v >= 1, "at least 1"),
    ("learning_rate", lambda v, _: v >= 0, "above 0"),
    (
        "num_train_epochs",
        lambda v, values: v > 0 or (values.get("max_steps") or -1) > 0,
        "above 0 (or set `max_steps`)",
    ),
    ("max_length", lambda v, _: v is None or v >= 1, "at least 1 (or null for no limit)"),
    ("lora_r", lambda v, _: v >= 1, "at least 1"),
    ("lora_alpha", lambda v, _: v > 0, "above 0"),
    ("lora_dropout", lambda v, _: 0 <= v < 1, "in [0, 1)"),
    ("trainable_layers", lambda v, _: v is None or v >= 1, "at least 1 (or null: every layer trains)"),
    ("warmup_steps", lambda v, _: v >= 0, "0 or more (a float below 1 is a ratio of the steps)"),
    ("weight_decay", lambda v, _: v >= 0, "0 or more"),
    ("max_grad_norm", lambda v, _: v is None or v >= 0, "0 or more"),
    ("logging_steps", lambda v, _: v > 0, "above 0"),
    ("save_steps", lambda v, _: v > 0, "above 0"),
    ("eval_steps", lambda v, _: v is None or v > 0, "above 0"),
    ("eval_generation_steps", lambda v, _: v is None or v >= 1, "at least 1 (or null: start and end only)"),
    ("eval_generation_max_rows", lambda v, _: v is None or v >= 1, "at least 1 (or null: every prompt)"),
]
STAGE_RULES: dict[str, list[Rule]] = {
    "dpo": [
        ("beta", lambda v, _: v > 0, "above 0"),
        ("label_smoothing", lambda v, _: 0 <= v <= 0.5, "in [0, 0.5] (above 0.5 flips the preference)"),
    ],
    "classify": [  # transformers finds out only at the first evaluation, after training steps were spent
        ("metric_for_best_model", lambda v, _: v is None or _classifier_metric(v),
         "one the classifier logs: loss, accuracy, f1_macro, or precision/<label>, recall/<label>, f1/<label>"),
    ],
}  # fmt: skip


# What the classify stage logs (alignment/classification.py; tests/test_classify.py keeps the two in step).
CLASSIFIER_METRICS = ("loss", "accuracy", "f1_macro")
CLASSIFIER_CLASS_METRICS = ("precision", "recall", "f1")  # each as `<name>/<label>`


def _classifier_metric(name: str) -> bool:
    """Whether the classify stage logs `name` (with or without `eval_`), so that it can pick the best model."""
    name = name.removeprefix("eval_")
    kind, _, label = name.partition("/")
    return name in CLASSIFIER_METRICS or (kind in CLASSIFIER_CLASS_METRICS and bool(label))


def check_values(values: dict[str, Any], stage: str, origin: str, notes: list[str]) -> None:
    """Raise a RecipeError naming the first key whose value no run could use; note the suspicious ones."""
    for key, rule, wanted in COMMON_RULES + STAGE_RULES.get(stage, []):
        if key not in values:
            continue
        value = values[key]
        try:
            fine = rule(value, values)
        except TypeError:  # a type the field should not hold; the config class names it
            continue
        if not fine:
            raise RecipeError(f"{origin}: `{key}` is {value!r}; it must be {wanted}")
    if values.get("learning_rate") == 0:
        notes.append("learning_rate is 0: the weights will not change")
    _check_chat_template(values.get("chat_template"), origin)
    _check_report_to(values.get("report_to"), origin)
    _check_output_dir(values.get("output_dir"), origin)
    _check_max_positions(values, origin)
    _check_trainable_layers(values, origin)
    _check_weight_format(values, origin)
    _check_generation_eval(values, stage, origin)


def check_eval_data(training: Any, has_eval_data: bool, origin: str, args: Any = None) -> None:
    """An evaluation schedule, and early stopping, need an eval set (TRL fails on it after the model loads)."""
    strategy = getattr(training, "eval_strategy", "no")
    strategy = getattr(strategy, "value", strategy)  # an IntervalStrategy enum, or its string
    if getattr(args, "early_stopping_patience", None) is not None and not has_eval_data:
        raise RecipeError(
            f"{origin}: `early_stopping_patience` stops on the eval loss, but the recipe has no eval data; set "
            "`dataset_mixture.test_split` (or `test_split_size`, or `dataset_test_split`)"
        )
    if strategy != "no" and not has_eval_data:
        raise RecipeError(
            f"{origin}: `eval_strategy` is {strategy!r} but the recipe has no eval data; set "
            "`dataset_mixture.test_split` (or `test_split_size`, or `dataset_test_split`), or `eval_strategy: no`"
        )


def _check_generation_eval(values: dict[str, Any], stage: str, origin: str) -> None:
    """The generation eval's settings need its prompts, and a model that generates."""
    prompts = values.get("eval_generation_prompts")
    for key in ("eval_generation_split", "eval_generation_steps", "eval_generation_max_rows"):
        if values.get(key) is not None and not prompts:
            raise RecipeError(
                f"{origin}: `{key}` is set but `eval_generation_prompts` is not: give the prompts"
            )
    if prompts and stage == "rm":
        raise RecipeError(
            f"{origin}: `eval_generation_prompts`: a reward model generates nothing; score pairs with "
            "`alignment eval MODEL_DIR --pairs ...` after training"
        )
    if prompts and stage == "classify":
        raise RecipeError(
            f"{origin}: `eval_generation_prompts`: a classifier generates nothing; its held-out accuracy, F1 "
            "and confusion matrix come from the test split"
        )


SAMPLE_CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


def _check_chat_template(template: Any, origin: str) -> None:
    """A Jinja `chat_template` must compile and render a two-turn conversation (else it fails mid-tokenisation)."""
    if not isinstance(template, str) or "{" not in template:
        return  # a built-in name, checked against the list
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered = render_jinja_template(
            [SAMPLE_CONVERSATION], chat_template=template, bos_token="<s>", eos_token="</s>"
        )
    except Exception as err:  # jinja2's TemplateSyntaxError, UndefinedError, ... : all one answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(
            f"{origin}: `chat_template` does not render a two-turn conversation ({type(err).__name__}: {first})"
        ) from None
    text = rendered[0][0] if isinstance(rendered, tuple) else rendered
    if "Hello." not in str(text):
        raise RecipeError(
            f"{origin}: `chat_template` renders a two-turn conversation without the assistant's text"
        )


def _check_report_to(report_to: Any, origin: str) -> None:
    from alignment.trackers import check_tracker_names

    try:
        check_tracker_names(report_to)
    except RecipeError as err:
        raise RecipeError(f"{origin}: {err}") from None


def _check_output_dir(output_dir: Any, origin: str) -> None:
    if output_dir and Path(output_dir).is_file():
        raise RecipeError(f"{origin}: `output_dir` {output_dir} is a file; give a folder")


def _check_max_positions(values: dict[str, Any], origin: str) -> None:
    """`max_length` above what the model can attend to: read from a local or cached config.json, never downloaded."""
    max_length = values.get("max_length")
    model = values.get("model_name_or_path")
    if not max_length or not model:
        return
    config = local_model_config(str(model))
    limit = (config or {}).get("max_position_embeddings")
    if isinstance(limit, int) and max_length > limit:
        raise RecipeError(
            f"{origin}: `max_length` is {max_length} but {model} has max_position_embeddings {limit}; "
            f"set max_length to {limit} or less"
        )


def _check_trainable_layers(values: dict[str, Any], origin: str) -> None:
    """`trainable_layers` above the model's block count, read from a local or cached config.json."""
    layers, model = values.get("trainable_layers"), values.get("model_name_or_path")
    if not layers or not model:
        return
    blocks = (local_model_config(str(model)) or {}).get("num_hidden_layers")
    if isinstance(blocks, int) and layers > blocks:
        raise RecipeError(
            f"{origin}: `trainable_layers` is {layers} but {model} has {blocks} transformer blocks "
            f"(num_hidden_layers); set {blocks} or less"
        )


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def _check_weight_format(values: dict[str, Any], origin: str) -> None:
    """A local model or adapter folder with only pickle weights is refused unless `allow_pickle_weights`.

    transformers and PEFT fall back to `torch.load` when a folder has no safetensors; a pickle can run
    code. A Hub model is checked when it loads (`use_safetensors=True`, model.load_model).
    """
    model = values.get("model_name_or_path")
    if not model or values.get("allow_pickle_weights"):
        return
    folders = [Path(str(model)).expanduser()]
    adapter = folders[0] / "adapter_config.json"
    if adapter.is_file():  # a previous stage's adapter: its base is read too
        try:
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        except (OSError, json.JSONDecodeError):
            base = None
        if base and Path(base).expanduser().is_dir():
            folders.append(Path(base).expanduser())
    for folder in folders:
        if pickle := pickle_only_weights(folder):
            raise RecipeError(
                f"{origin}: `model_name_or_path`: {folder} has only pickle weights ({pickle}), which can run "
                "code when loaded; convert them to safetensors, or set `allow_pickle_weights: true` if you trust them"
            )


def pickle_only_weights(folder: Path) -> str | None:
    """The pickle weights file of a local folder that has no safetensors (what transformers/PEFT would torch.load)."""
    if not folder.is_dir() or any(folder.glob("*.safetensors*")):
        return None
    return next((name for name in PICKLE_WEIGHTS if (folder / name).is_file()), None)


def local_model_config(model: str) -> dict | None:
    """`model`'s config.json from its local folder or the Hub cache; None when neither has it (never downloaded)."""
    path = Path(model).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a repo id: nothing cached to read
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
