"""Model and tokenizer loading: dtype and attention fallbacks, quantization, adapters, EOS/pad wiring.

The stage scripts hand the TRL trainer a model object built here instead of a path, so that the
fallbacks below apply to every stage the same way, and embeddings grow with any token the chat
template added. LoRA/DoRA configs come from TRL's `get_peft_config`; QLoRA from its
`get_quantization_config`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.chat_templates import BUILTIN_TEMPLATES, apply_chat_template, has_generation_markers
from alignment.errors import RecipeError

if TYPE_CHECKING:
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)


def resolve_attn_implementation(requested: str | None) -> str | None:
    """flash-attn needs CUDA and a separate install; fall back to PyTorch's sdpa instead of failing."""
    import torch

    if requested in ("flash_attention_2", "flash_attention_3"):
        package = "flash_attn" if requested == "flash_attention_2" else "flash_attn_interface"
        if importlib.util.find_spec(package) is None or not torch.cuda.is_available():
            why = "no CUDA device" if importlib.util.find_spec(package) else f"`{package}` is not installed"
            logger.warning(f"attn_implementation {requested} requested but {why}: using sdpa")
            return "sdpa"
    return requested


def adapter_base(path: str) -> str | None:
    """The base model of a local PEFT adapter folder, or None when `path` is a full model."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def load_tokenizer(recipe: Recipe) -> Any:
    """Tokenizer with the recipe's chat template, its end-of-turn token as EOS, and a pad token that is not EOS."""
    from transformers import AutoTokenizer

    margs = recipe.model
    source = recipe.args.tokenizer_name_or_path or margs.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=margs.model_revision, trust_remote_code=recipe.training.trust_remote_code
    )
    apply_chat_template(tokenizer, recipe.args.chat_template)
    if getattr(recipe.training, "assistant_only_loss", False) and not has_generation_markers(
        tokenizer.chat_template
    ):
        raise RecipeError(
            "`assistant_only_loss: true` needs a chat template with {% generation %} markers; "
            f"set `chat_template` to a built-in ({', '.join(sorted(BUILTIN_TEMPLATES))})"
        )
    return tokenizer


def load_model(recipe: Recipe, tokenizer: Any) -> Any:
    """Causal LM as the recipe asks (dtype, attention, 4/8-bit), resized to the tokenizer, EOS wired for generation.

    A local adapter folder as `model_name_or_path` (the output of a LoRA stage) is loaded on its base
    and merged, so the next stage trains or adapts the model the previous stage produced.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    margs = recipe.model
    quantization = get_quantization_config(margs)
    kwargs: dict[str, Any] = {
        "revision": margs.model_revision,
        "trust_remote_code": recipe.training.trust_remote_code,
        "attn_implementation": resolve_attn_implementation(margs.attn_implementation),
        "dtype": margs.dtype if margs.dtype in (None, "auto") else getattr(torch, margs.dtype),
    }
    if quantization is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = (
            {"": PartialState().local_process_index} if torch.cuda.is_available() else {"": "cpu"}
        )
    base = adapter_base(margs.model_name_or_path)
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(margs.model_name_or_path, **kwargs)
    else:
        from peft import PeftModel

        logger.info(f"{margs.model_name_or_path} is an adapter: loading it on its base {base}")
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        _resize(model, tokenizer)
        model = PeftModel.from_pretrained(model, margs.model_name_or_path)
        if quantization is None:
            # PEFT froze the base when wrapping it; the merged model is trained in full (or re-wrapped by TRL).
            model = model.merge_and_unload().requires_grad_(True)
        else:
            # A 4/8-bit base cannot absorb the adapter; keep it as a frozen stack under the new adapter.
            logger.warning("quantized base: the previous stage's adapter is kept unmerged and frozen")
    _resize(model, tokenizer)
    wire_generation_config(model, tokenizer)
    return model


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


def peft_config_for(recipe: Recipe, model: Any) -> Any:
    """The LoRA/DoRA config for the trainer, or None: full fine-tuning, or a model that already carries a trainable adapter."""
    from trl import get_peft_config

    if not recipe.model.use_peft:
        return None
    if hasattr(model, "peft_config"):
        logger.warning("the model already has an adapter (quantized base): training continues on it")
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.requires_grad = True
        return None
    return get_peft_config(recipe.model)


def load_reference_model(recipe: Recipe, tokenizer: Any) -> Any | None:
    """DPO's frozen reference, where TRL's default would be wrong; None leaves the choice to TRL.

    TRL disables the adapter of a PEFT policy, or reloads the reference from the policy's
    `config._name_or_path`. For a policy merged from a previous stage's adapter that path is the
    *base* model, so the reference would silently skip the previous stage: load the merged model again.
    """
    if recipe.model.use_peft or adapter_base(recipe.model.model_name_or_path) is None:
        return None
    logger.info("reference model: the merged adapter stage (not its base)")
    return load_model(recipe, tokenizer)
