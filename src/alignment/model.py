"""Model and tokenizer loading: dtype and attention fallbacks, quantization, adapters, EOS/pad wiring.

The stage scripts hand the TRL trainer a model object built here instead of a path, so that the
fallbacks below apply to every stage the same way, and embeddings grow with any token the chat
template added. LoRA/DoRA configs come from TRL's `get_peft_config`; QLoRA from its
`get_quantization_config`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.chat_templates import apply_chat_template, ensure_generation_markers
from alignment.hardware import resolve_attn_implementation

if TYPE_CHECKING:
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)


def adapter_base(path: str) -> str | None:
    """The base model of a local PEFT adapter folder, or None when `path` is a full model."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def load_tokenizer(recipe: Recipe) -> Any:
    """Tokenizer with the recipe's chat template, its end-of-turn token as EOS, and a pad token.

    With `assistant_only_loss`, a template without `{% generation %}` markers is swapped for TRL's
    training version of it, or refused with a RecipeError.
    """
    from transformers import AutoTokenizer

    from alignment.errors import RecipeError

    margs = recipe.model
    source = recipe.args.tokenizer_name_or_path or margs.model_name_or_path
    if missing := missing_model_folder(recipe):
        raise RecipeError(missing)
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=margs.model_revision, trust_remote_code=recipe.training.trust_remote_code
    )
    apply_chat_template(tokenizer, recipe.args.chat_template)
    if getattr(recipe.training, "assistant_only_loss", False):
        ensure_generation_markers(tokenizer)
    return tokenizer


def missing_model_folder(recipe: Recipe) -> str | None:
    """Why the tokenizer's local folder cannot be read (it does not exist), naming the key; None when fine.

    A missing local path would otherwise reach the Hub client and fail with "Repo id must be in the form".
    """
    from alignment.data.sources import is_local

    source = recipe.args.tokenizer_name_or_path or recipe.model.model_name_or_path
    if not is_local(source) or Path(source).expanduser().is_dir():
        return None
    key = "tokenizer_name_or_path" if recipe.args.tokenizer_name_or_path else "model_name_or_path"
    return f"`{key}`: no model folder at {source} (a local path; train or download it first)"


MERGED_BASE = "_merged_base"  # under output_dir; the Trainer's Hub pushes skip "_*" folders
MERGE_STAMP = "merged_from.json"  # written last: a folder without it (or with another one) is rebuilt


def load_model(recipe: Recipe, tokenizer: Any, head: str = "causal", labels: list[str] | None = None) -> Any:
    """Causal LM as the recipe asks (dtype, attention, 4/8-bit), resized to the tokenizer, EOS wired for generation.

    `head="reward"` loads the same weights under a sequence-classification head with one output (a
    reward model: the head is new, the body is the previous stage's), its pad token wired so that
    the head reads the last real token. `head="classify"` does the same with an output per class,
    `labels` (in id order), stored as the config's `id2label`/`label2id`.

    A local adapter folder as `model_name_or_path` (the output of a LoRA stage) is merged into its
    base, so this stage starts from the model the previous stage produced; a PEFT recipe then trains
    a fresh adapter with its own settings (`peft_config_for`), never the previous one. A 4/8-bit
    model cannot absorb an adapter: the merge is done in full precision and saved once
    (`merged_base`), and that folder is loaded quantized.
    """
    import torch
    from trl import get_quantization_config

    margs = recipe.model
    quantization = get_quantization_config(margs)
    kwargs: dict[str, Any] = {
        "revision": margs.model_revision,
        "trust_remote_code": recipe.training.trust_remote_code,
        "attn_implementation": resolve_attn_implementation(margs.attn_implementation),
        "dtype": margs.dtype if margs.dtype in (None, "auto") else getattr(torch, margs.dtype),
        # safetensors only (a pickle can run code), unless the recipe opts in; local folders are checked
        # while parsing (recipe_checks), a Hub model here.
        "use_safetensors": None if recipe.args.allow_pickle_weights else True,
    }
    source = margs.model_name_or_path
    head_kwargs: dict[str, Any] = {"num_labels": 1} if head == "reward" else {}
    if head == "classify":
        head_kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                       "label2id": {name: i for i, name in enumerate(labels)}}  # fmt: skip
    if adapter_base(source) is not None and quantization is None and head == "causal":
        model = merge_adapter(source, tokenizer, kwargs)
    else:
        if adapter_base(source) is not None:
            source = merged_base(recipe, tokenizer, kwargs)
        kwargs.update(head_kwargs)
        if quantization is not None:
            from accelerate import PartialState

            kwargs["quantization_config"] = quantization
            kwargs["device_map"] = (
                {"": PartialState().local_process_index} if torch.cuda.is_available() else {"": "cpu"}
            )
        model = from_pretrained(source, kwargs, head)
    _resize(model, tokenizer)
    if head != "causal":  # the score head reads each row's last token that is not padding
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        wire_generation_config(model, tokenizer)
    if recipe.args.trainable_layers is not None:
        from alignment.partial_tuning import freeze_all_but_last_layers

        freeze_all_but_last_layers(model, recipe.args.trainable_layers)
    return model


def from_pretrained(source: str, kwargs: dict[str, Any], head: str = "causal") -> Any:
    """`AutoModelForCausalLM.from_pretrained` (`head="reward"` or `"classify"`: `AutoModelForSequenceClassification`),
    with a Hub model that has only pickle weights named in one line."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignment.errors import RecipeError

    auto_class = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
    try:
        return auto_class.from_pretrained(source, **kwargs)
    except OSError as err:
        if "cannot be loaded with `safetensors`" not in str(err):
            raise
        raise RecipeError(
            f"`model_name_or_path`: {source} has no safetensors weights, only pickle ones, which can run code "
            "when loaded; set `allow_pickle_weights: true` if you trust them"
        ) from None


def merge_adapter(adapter: str, tokenizer: Any, load_kwargs: dict[str, Any]) -> Any:
    """A previous stage's adapter merged into its base, loaded unquantized with `load_kwargs`: a plain model."""
    from peft import PeftModel

    config = _mergeable_adapter_config(adapter)
    logger.info(f"{adapter} is an adapter: merging it into its base {config.base_model_name_or_path}")
    model = from_pretrained(config.base_model_name_or_path, load_kwargs)
    _resize(model, tokenizer)  # to the size the previous stage trained (and saved) its embeddings at
    if getattr(config.peft_type, "value", config.peft_type) == "PROMPT_TUNING":
        from alignment.soft_prompt import merge_soft_prompt

        merged = merge_soft_prompt(PeftModel.from_pretrained(model, adapter), tokenizer)
        return merged.requires_grad_(True)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    # PEFT froze the base when wrapping it; the merged model is trained in full or gets a fresh adapter.
    return merged.requires_grad_(True)


def _mergeable_adapter_config(adapter: str) -> Any:
    """The adapter's PEFT config, or a RecipeError for the kinds that have no weights to merge (prompt learning)."""
    from peft import PeftConfig

    from alignment.errors import RecipeError

    config = PeftConfig.from_pretrained(adapter)
    kind = getattr(config.peft_type, "value", config.peft_type)
    if (config.is_prompt_learning or config.is_adaption_prompt) and kind != "PROMPT_TUNING":
        raise RecipeError(
            f"`model_name_or_path`: {adapter} holds a {kind} adapter, which cannot be merged into its base "
            "(it learns keys and values at every layer, which no weight or token carries); start from a LoRA, "
            "IA3 or prompt-tuning stage's output, or a full model"
        )
    return config


def merged_base(recipe: Recipe, tokenizer: Any, load_kwargs: dict[str, Any]) -> str:
    """`<output_dir>/_merged_base`: the recipe's adapter merged into its full-precision base, to load in 4/8-bit.

    The main process builds it while the others wait (`output_dir` is shared, as for checkpoints);
    a rerun or resume reuses it while the adapter, dtype and vocabulary are unchanged. It is also
    the base that the adapter this stage trains is saved against.
    """
    import shutil

    from accelerate import PartialState

    adapter = recipe.model.model_name_or_path
    folder = Path(recipe.training.output_dir) / MERGED_BASE
    _mergeable_adapter_config(adapter)  # refused on every process, before any of them waits on another
    stamp = _merge_stamp(adapter, load_kwargs["dtype"], len(tokenizer))
    with PartialState().main_process_first():
        if (folder / MERGE_STAMP).is_file() and json.loads((folder / MERGE_STAMP).read_text()) == stamp:
            logger.info(f"reusing {folder}: {adapter} already merged into its base")
            return str(folder)
        logger.info(
            f"a 4/8-bit model cannot absorb the adapter {adapter}: merging it into its unquantized base, "
            f"saved to {folder}, and loading that quantized"
        )
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model = merge_adapter(adapter, tokenizer, load_kwargs)
        wire_generation_config(model, tokenizer)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / MERGE_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return str(folder)


def _merge_stamp(adapter: str, dtype: Any, vocab: int) -> dict[str, Any]:
    """What a merged base was built from: the adapter's files by content, the dtype and the vocabulary size."""
    from alignment.manifest import file_digest

    files = sorted(p for p in Path(adapter).glob("adapter_*") if p.is_file())
    digests = {path.name: file_digest(path)["sha256"] for path in files}
    return {"adapter": str(Path(adapter).resolve()), "files": digests, "dtype": str(dtype), "vocab": vocab}


def _resize(model: Any, tokenizer: Any) -> None:
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        logger.info(f"growing embeddings to {len(tokenizer)} tokens for the chat template's tokens")
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)


def wire_generation_config(model: Any, tokenizer: Any) -> None:
    """Stop generation at the template's end-of-turn token, pad with the pad token, in the saved generation config."""
    eos_ids = [tokenizer.eos_token_id]
    base_eos = model.generation_config.eos_token_id
    for extra in base_eos if isinstance(base_eos, list) else [base_eos]:
        if extra is not None and extra not in eos_ids and extra < len(tokenizer):
            eos_ids.append(extra)
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        model.generation_config.bos_token_id = tokenizer.bos_token_id


def peft_config_for(recipe: Recipe, model: Any, head: str = "causal") -> Any:
    """The recipe's PEFT config (`peft_type`: LoRA/DoRA, prompt or prefix tuning, IA3) for the trainer to wrap
    `model` with, or None for full fine-tuning.

    Always a fresh adapter: `load_model` has merged any previous stage's adapter. Logs the method and the
    trainable/total parameter counts it gives on `model`.
    """
    from alignment.adapters import build_peft_config, describe

    config = build_peft_config(recipe, model, head)
    if config is None:
        return None
    trainable, total = _count_adapter_parameters(config, model)
    logger.info(
        f"training {describe(config)}; {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"
    )
    return config


def _count_adapter_parameters(config: Any, model: Any) -> tuple[int, int]:
    """Trainable and total parameters once `config` wraps `model`, as PEFT counts them, on a weightless copy.

    TRL wraps the model inside the trainer, after this; a copy on the meta device costs no memory.
    A target that matches no module is refused here, before training, naming the key.
    """
    import copy

    import torch
    from peft import get_peft_model

    from alignment.errors import RecipeError

    # The class itself, not `from_config`: that would partition the copy under DeepSpeed ZeRO-3 (and need all ranks).
    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    try:  # get_peft_model rewrites its config (e.g. expands "all-linear"): give it a copy
        return get_peft_model(skeleton, copy.deepcopy(config)).get_nb_trainable_parameters()
    except ValueError as err:
        if "target module" not in str(err).lower():
            raise
        key = "lora_target_modules" if getattr(config, "peft_type", None) == "LORA" else "ia3_target_modules"
        raise RecipeError(f"`{key}`: {str(err).strip().splitlines()[0]}") from None


def load_reference_model(recipe: Recipe, tokenizer: Any) -> Any | None:
    """DPO's frozen reference, where TRL's default would be wrong; None leaves the choice to TRL.

    A PEFT policy needs none: TRL disables its (new) adapter, which leaves the merged previous stage
    (re-quantized, for QLoRA). Otherwise TRL reloads the reference from `config._name_or_path`; for a
    policy merged from a previous stage's adapter that path is the *base* model, so the reference
    would silently skip the previous stage: load the merged model again.
    """
    if recipe.model.use_peft or adapter_base(recipe.model.model_name_or_path) is None:
        return None
    logger.info("reference model: the merged adapter stage (not its base)")
    return load_model(recipe, tokenizer)
