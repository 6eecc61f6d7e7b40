"""The estimate for a parsed recipe: config.json (local, cached or fetched alone) and the recipe's keys."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError
from alignment.memory.estimate import estimate, nearest_fixes
from alignment.memory.shapes import DTYPE_BYTES, GiB, ModelShape, TrainingShape, model_shape
from alignment.memory.states import OPTIMIZER_STATES, _is_fsdp_sharded, _shards
from alignment.target import LaunchTarget

if TYPE_CHECKING:
    from alignment.recipe import Recipe


class ConfigUnavailable(Exception):
    """config.json cannot be read here; the message says why, in one line."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the Hub: huggingface_hub retries a failed request for ~25 s before giving up, too
    long for a dry run on an offline machine."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout
        ).close()
    except OSError:
        return False
    return True


def read_model_config(
    source: str, revision: str | None = None, trust_remote_code: bool = False
) -> dict[str, Any]:
    """config.json of `source` as a dict, with transformers' defaults filled in: a local folder, the HF cache, or
    config.json alone from the Hub. A PEFT adapter folder gives its base's. Raises `ConfigUnavailable`."""
    import json

    from alignment.data.sources import is_local

    folder = Path(source).expanduser()
    if is_local(source):
        if (folder / "adapter_config.json").is_file():
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise ConfigUnavailable(f"{source}/adapter_config.json names no base_model_name_or_path")
            return read_model_config(base, None, trust_remote_code)
        if not (folder / "config.json").is_file():
            raise ConfigUnavailable(f"{source} has no config.json (yet: an earlier stage writes it?)")
    from transformers import AutoConfig, PretrainedConfig

    def load(**kwargs: Any) -> dict[str, Any]:
        try:
            return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code,
                                              **kwargs).to_dict()  # fmt: skip
        except (ValueError, KeyError):  # a model type this transformers does not know: the raw file
            return PretrainedConfig.get_config_dict(source, revision=revision, **kwargs)[0]

    try:
        return load(local_files_only=True)
    except OSError:
        if is_local(source):
            raise ConfigUnavailable(f"{source}/config.json cannot be read") from None
    if not _hub_reachable():
        raise ConfigUnavailable(
            f"config.json of {source}: not a local folder, not in the HF cache, and the Hub is not reachable"
        )
    try:
        return load()
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigUnavailable(f"config.json of {source} could not be fetched ({first})") from None


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def training_shape(recipe: Recipe, shape: ModelShape) -> tuple[TrainingShape, list[str]]:
    """The recipe's training as the estimate needs it, and the assumptions it had to make."""
    from alignment.stages import stage

    t, m, notes = recipe.training, recipe.model, []
    kind = recipe.stage
    length = getattr(t, "max_length", None)
    if kind in ("grpo", "rloo"):
        prompt = 512
        length = prompt + int(getattr(t, "max_completion_length", None) or 256)
        notes.append(
            f"online RL: sequences of a {prompt}-token prompt + max_completion_length; generation not counted"
        )
    elif length is None:
        length = shape.max_positions or 4096
        notes.append(f"max_length is none: sequences assumed as long as the model's context ({length})")
    dtype = m.dtype or "float32"
    if dtype == "auto":
        dtype = shape.dtype or "float32"
    if dtype not in DTYPE_BYTES:
        raise RecipeError(f"`dtype`: {dtype!r} is not one of float32, bfloat16, float16, auto")
    checkpointing = getattr(t, "activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(t, "gradient_checkpointing", False)
    peft = ("qlora-4bit" if m.load_in_4bit else "qlora-8bit" if m.load_in_8bit else "dora" if m.use_dora else "lora"
            ) if m.use_peft else "full"  # fmt: skip
    lora_r = m.lora_r
    kind_of_peft = getattr(recipe.args, "peft_type", "lora")
    if m.use_peft and kind_of_peft != "lora":
        lora_r = 1  # a few thousand trainable parameters, like a rank-1 LoRA's
        notes.append(f"peft_type {kind_of_peft}: its adapter's states approximated by a rank-1 LoRA's")
    if getattr(recipe.args, "trainable_layers", None):
        notes.append(
            "trainable_layers: gradients and optimizer states counted for every layer (an upper bound)"
        )
    optim = str(_value(t.optim))
    if optim not in OPTIMIZER_STATES:
        notes.append(f"optim {optim}: its states counted as AdamW's")
    if kind in ("orpo", "cpo") or getattr(t, "label_smoothing_factor", 0):
        logits = "full"
    elif stage(kind).head != "causal":  # a reward model's or a classifier's score head: no vocabulary logits
        logits = "none"
    else:
        logits = "fused"
    if logits == "full" and getattr(t, "use_liger_kernel", False):
        logits = "fused"
    reference = stage(kind).reference and not getattr(t, "precompute_ref_log_probs", False)
    if stage(kind).rewards:
        reference = bool(getattr(t, "beta", 0))
    if reference and m.use_peft:
        notes.append("reference model: none, TRL disables the adapter to compute it")
        reference = False
    vllm = 0.0
    if getattr(t, "use_vllm", False) and getattr(t, "vllm_mode", "") == "colocate":
        vllm = float(getattr(t, "vllm_gpu_memory_utilization", 0.3))
    pairs = kind in ("dpo", "orpo", "cpo", "rm")
    targets = m.lora_target_modules
    if isinstance(targets, list):
        targets = tuple(targets) if targets != ["all-linear"] else "all-linear"
    momentum = "momentum" in str(getattr(t, "optim_args", "") or "")
    return TrainingShape(
        batch_size=t.per_device_train_batch_size,
        max_length=int(length),
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        sequences_per_example=2 if pairs else 1,
        weight_dtype=dtype,
        precision=recipe.precision,
        activation_checkpointing=bool(checkpointing),
        activation_offloading=bool(getattr(t, "activation_offloading", False)),
        attn_implementation=m.attn_implementation or "sdpa",
        optimizer=optim,
        optimizer_momentum=momentum,
        peft=peft,
        lora_r=lora_r,
        lora_targets=targets,
        lora_dropout=m.lora_dropout,
        nested_quant=bool(m.use_bnb_nested_quant),
        logits=logits,
        reference_model=reference,
        vllm_gpu_fraction=vllm,
    ), notes


def describe(shape: ModelShape, t: TrainingShape, target: LaunchTarget) -> list[str]:
    """The assumptions behind an estimate, one line each."""
    lines = [f"{shape.model_type}: {shape.parameters / 1e9:.2f}B parameters from config.json"
             + (" (unknown model type: counted as a Llama-style decoder)" if shape.guessed else "")]  # fmt: skip
    where = target.describe()
    if target.zero_stage is not None or _is_fsdp_sharded(target):
        where += f", states split over {_shards(target)} processes"
    lines.append(f"{t.weight_dtype} weights, {t.precision}, {t.optimizer}, {t.peft}; {where}")
    lines.append(
        f"micro-batch {t.batch_size}{' pairs (x2 sequences)' if t.sequences_per_example == 2 else ''} x "
        f"{t.max_length} tokens, {t.attn_implementation} attention, activation checkpointing "
        f"{'on' if t.activation_checkpointing else 'off'}, "
        + {"fused": "TRL's chunked LM-head loss", "full": "full logits for the loss", "none": "a score head"}[
            t.logits
        ]
    )
    return lines


def recipe_memory(
    recipe: Recipe, target: LaunchTarget, gpu_memory_gib: float | None = None
) -> dict[str, Any] | str:
    """The `memory` section of `alignment check`: the estimate, and with `gpu_memory_gib` whether it fits and,
    if not, the nearest changes that would. A one-line string when config.json cannot be read here."""
    m = recipe.model
    try:
        config = read_model_config(m.model_name_or_path, m.model_revision, recipe.training.trust_remote_code)
        shape = model_shape(config)
    except (ConfigUnavailable, RecipeError) as why:
        return f"not estimated: {why}"
    t, notes = training_shape(recipe, shape)
    result = estimate(shape, t, target, gpu_memory_gib)
    out: dict[str, Any] = {"per_gpu_gib": round(result.total_gib, 1), "breakdown_gib": result.breakdown()}
    if result.host_offload:
        out["host_ram_per_machine_gib"] = round(result.host_offload / GiB, 1)
    out["assumptions"] = describe(shape, t, target) + notes + list(result.notes)
    if t.vllm_gpu_fraction and not gpu_memory_gib:
        out["assumptions"].append("vLLM colocated: its vllm_gpu_memory_utilization share of the GPU is not counted "
                                  "without --gpu_memory")  # fmt: skip
    if gpu_memory_gib is None:
        return out
    out["gpu_memory_gib"] = gpu_memory_gib
    fits = result.fits(gpu_memory_gib)
    spare = gpu_memory_gib - result.total_gib
    out["fits"] = fits
    out["verdict"] = (f"fits in {gpu_memory_gib:g} GiB ({spare:.1f} GiB to spare)" if fits
                      else f"does not fit in {gpu_memory_gib:g} GiB (over by {-spare:.1f} GiB)")  # fmt: skip
    if not fits:
        fixes = nearest_fixes(shape, t, target, gpu_memory_gib)
        out["fixes"] = [f.to_dict(gpu_memory_gib) for f in fixes] or [
            "no single change fits: more GPUs, a smaller model, or a shorter max_length"
        ]
    return out


def gpu_memory_gib(text: str) -> float:
    """`--gpu_memory`: GiB per GPU, a positive number."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        import argparse

        raise argparse.ArgumentTypeError(f"must be a positive number of GiB per GPU (e.g. 80), got {text!r}")
    return value
