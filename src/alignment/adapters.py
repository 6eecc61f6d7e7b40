"""Which PEFT method a recipe trains (`peft_type`), its config, and the recipe keys each method reads.

TRL builds only LoRA/DoRA from a recipe (`trl.get_peft_config` reads `ModelConfig`'s `lora_*` keys);
its trainers take any `PeftConfig`. The gap filled here: `peft_type: prompt_tuning | prefix_tuning |
ia3 | lora` builds PEFT's own config for it, for any stage, and a key that the chosen method would
ignore (`lora_r` with prompt tuning, `num_virtual_tokens` with LoRA) is refused while parsing.

- **lora** (and DoRA with `use_dora`): low-rank updates beside the linear layers; TRL's config.
- **prompt_tuning**: `num_virtual_tokens` learned input embeddings in front of every sequence, the
  model frozen. The fewest trainable parameters, and the weakest (Lester et al., 2021).
- **prefix_tuning**: learned keys and values at every layer (a prefix of past key/values).
- **ia3**: learned vectors that rescale keys, values and the feed-forward activations.
"""

from __future__ import annotations

from typing import Any

from alignment.errors import RecipeError

PEFT_TYPES = ("lora", "prompt_tuning", "prefix_tuning", "ia3")
PROMPT_LEARNING = ("prompt_tuning", "prefix_tuning")

# The recipe keys only one kind of method reads; given with another `peft_type`, each would be ignored.
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
             "lora_modules_to_save", "use_dora", "use_rslora")  # fmt: skip
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "lora": LORA_KEYS,
    "prompt_tuning": ("num_virtual_tokens", "prompt_tuning_init_text"),
    "prefix_tuning": ("num_virtual_tokens",),
    "ia3": ("ia3_target_modules", "ia3_feedforward_modules"),
}
# Our keys (LoRA's are TRL's ModelConfig's): every non-LoRA method's, each listed once.
OUR_KEYS = tuple(dict.fromkeys(k for kind, keys in METHOD_KEYS.items() if kind != "lora" for k in keys))
DEFAULT_VIRTUAL_TOKENS = 20


def check_peft_keys(values: dict[str, Any], explicit: set[str], origin: str) -> list[str]:
    """Refuse a method's key given with another method; turn `use_peft` on for a non-LoRA `peft_type`.

    Returns the notes to log (and put on the card). Changes `values` in place.
    """
    kind = values.get("peft_type") or "lora"
    notes = []
    if kind != "lora" and "peft_type" in explicit:
        if "use_peft" in explicit and not values.get("use_peft"):
            raise RecipeError(
                f"{origin}: `peft_type` is {kind!r} but `use_peft` is false; remove one of them"
            )
        if not values.get("use_peft"):
            values["use_peft"] = True
            notes.append(
                f"peft_type {kind}: use_peft turned on (the model is frozen, a {kind} adapter trains)"
            )
    for other, keys in METHOD_KEYS.items():
        if other == kind or not values.get("use_peft"):
            continue
        for key in keys:
            if key in explicit and key not in METHOD_KEYS[kind]:
                raise RecipeError(
                    f"{origin}: `{key}` is read only with `peft_type: {other}`, not {kind}; remove it or "
                    f"set `peft_type: {other}`"
                )
    for key in OUR_KEYS:
        if key in explicit and values.get(key) is not None and not values.get("use_peft"):
            raise RecipeError(
                f"{origin}: `{key}` is read only by a PEFT method: set `peft_type` (and `use_peft`)"
            )
    tokens = values.get("num_virtual_tokens")
    if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
        raise RecipeError(f"{origin}: `num_virtual_tokens` is {tokens!r}; it must be at least 1")
    return notes


def task_type(head: str) -> str:
    """PEFT's task type for a stage's head: a generator, or a scorer (reward model, classifier)."""
    return "CAUSAL_LM" if head == "causal" else "SEQ_CLS"


def build_peft_config(recipe: Any, model: Any, head: str = "causal") -> Any:
    """The recipe's PEFT config for `model`, or None for full fine-tuning (`use_peft` off)."""
    if not recipe.model.use_peft:
        return None
    kind = recipe.args.peft_type
    if kind == "lora":
        from trl import get_peft_config

        config = get_peft_config(recipe.model)
        if head != "causal" and recipe.model.lora_task_type == "CAUSAL_LM":
            config.task_type = task_type(head)  # the score head is then saved with the adapter
        return config
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit

    args = recipe.args
    if kind == "prompt_tuning":
        init_text = args.prompt_tuning_init_text
        return PromptTuningConfig(
            task_type=task_type(head),
            num_virtual_tokens=args.num_virtual_tokens or DEFAULT_VIRTUAL_TOKENS,
            prompt_tuning_init=PromptTuningInit.TEXT if init_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=(args.tokenizer_name_or_path or recipe.model.model_name_or_path)
            if init_text
            else None,
        )
    if kind == "prefix_tuning":
        return PrefixTuningConfig(
            task_type=task_type(head), num_virtual_tokens=args.num_virtual_tokens or DEFAULT_VIRTUAL_TOKENS
        )
    if kind == "ia3":
        targets, feedforward = args.ia3_target_modules, args.ia3_feedforward_modules
        if (targets is None) != (feedforward is None):
            raise RecipeError(
                "`ia3_target_modules` and `ia3_feedforward_modules` go together (the feed-forward ones are a "
                "subset of the targets): set both, or neither for PEFT's defaults for the model family"
            )
        return IA3Config(task_type=task_type(head), target_modules=targets, feedforward_modules=feedforward)
    raise RecipeError(f"`peft_type` is {kind!r}; choose one of {', '.join(PEFT_TYPES)}")


def describe(config: Any) -> str:
    """One line naming the method and its settings, for the log."""
    kind = getattr(config.peft_type, "value", config.peft_type)
    if kind == "LORA":
        return (
            f"a new {'DoRA' if config.use_dora else 'LoRA'} adapter: r={config.r}, alpha={config.lora_alpha}, "
            f"targets {config.target_modules}"
        )
    if kind in ("PROMPT_TUNING", "PREFIX_TUNING"):
        return f"a new {kind.lower().replace('_', ' ')} adapter: {config.num_virtual_tokens} virtual tokens"
    return f"a new {kind} adapter: targets {config.target_modules or 'PEFT default for the family'}"
