"""Model states per GPU: weights, gradients and optimizer states, as DeepSpeed's estimators count them."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignment.memory.shapes import ModelShape, TrainingShape
from alignment.target import LaunchTarget

if TYPE_CHECKING:
    pass

# Bytes of optimizer state per trained parameter, as a multiple of the state dtype's bytes ("x") or fixed.
OPTIMIZER_STATES: dict[str, tuple[str, float]] = {
    **{name: ("x", 2) for name in ("adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused",
                                   "adamw_anyprecision", "stable_adamw", "schedule_free_adamw",
                                   "schedule_free_radam", "grokadamw")},
    **{name: ("bytes", 2) for name in ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adamw_torch_8bit")},
    **{name: ("bytes", 8) for name in ("paged_adamw_32bit",)},
    **{name: ("bytes", 1) for name in ("lion_8bit", "paged_lion_8bit", "rmsprop_bnb_8bit", "adamw_torch_4bit")},
    **{name: ("bytes", 4) for name in ("lion_32bit", "paged_lion_32bit", "rmsprop_bnb", "rmsprop_bnb_32bit")},
    **{name: ("bytes", 3) for name in ("ademamix_8bit", "paged_ademamix_8bit")},
    **{name: ("bytes", 12) for name in ("paged_ademamix_32bit",)},
    "ademamix": ("x", 3), "rmsprop": ("x", 1), "adagrad": ("x", 1), "schedule_free_sgd": ("x", 1),
    "sgd": ("x", 0), "lomo": ("x", 0), "adalomo": ("x", 0), "adafactor": ("factored", 0),
}  # fmt: skip


def optimizer_state_bytes(optimizer: str, shapes: Sequence[tuple[int, ...]], state_bytes: int,
                          momentum: bool = False) -> float:  # fmt: skip
    """Bytes of optimizer state for the trained tensors `shapes`, whose states are kept in `state_bytes`.

    torch AdamW keeps two states in the parameters' dtype; bitsandbytes' 8-bit ones 1 byte each (its
    block statistics are <1%); SGD none unless given momentum; Adafactor a row and a column per matrix.
    """
    kind, n = OPTIMIZER_STATES.get(optimizer, ("x", 2))
    params = sum(math.prod(s) for s in shapes)
    if kind == "factored":  # row and column second moments in fp32, no first moment (HF's default beta1=None)
        return 4.0 * sum(sum(s) if len(s) == 2 else math.prod(s) for s in shapes)
    if optimizer == "sgd" and momentum:
        n = 1
    return params * (n * state_bytes if kind == "x" else n)


@dataclass(frozen=True)
class ModelStates:
    """Bytes per GPU of the weights, gradients and optimizer states, and per machine in host RAM when offloaded."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer_states: float = 0.0
    adapters: float = 0.0  # LoRA/DoRA parameters, their gradients and optimizer states
    host: float = 0.0
    notes: tuple[str, ...] = ()


def _shards(target: LaunchTarget) -> int:
    """Processes the states are split over: all of them, or one machine's for hybrid sharding."""
    if target.fsdp_sharding and target.fsdp_sharding.startswith("HYBRID"):
        return max(1, target.processes // max(1, target.machines))
    return max(1, target.processes)


def _is_zero3(target: LaunchTarget) -> bool:
    return target.zero_stage == 3


def _is_fsdp_sharded(target: LaunchTarget) -> bool:
    return target.fsdp_version is not None and (target.fsdp_sharding or "FULL_SHARD") != "NO_SHARD"


def _trained_states(shapes: Sequence[tuple[int, ...]], params: float, largest: float, t: TrainingShape,
                    target: LaunchTarget) -> tuple[float, float, float, float, list[str]]:  # fmt: skip
    """(weights, gradients, optimizer, host) bytes per GPU for `params` trained parameters (`shapes`), sharded
    as `target` says; `largest`: what is gathered whole at a time (`_unit`)."""
    n = _shards(target)
    mixed = t.precision in ("bf16", "fp16")
    notes: list[str] = []
    if target.zero_stage is not None:  # DeepSpeed: 16-bit weights, fp32 master copy and fp32 optimizer states
        p16 = 2 if mixed else 4
        master = 4 if mixed else 0
        states = optimizer_state_bytes(t.optimizer, shapes, 4, t.optimizer_momentum)
        opt = master * params + states
        stage = target.zero_stage
        # ZeRO-3: 4L + 18P/N; 4L + 2P/N offloading the optimizer; 4L offloading parameters too
        if stage == 3:
            weights = (0 if target.offload_params else p16 * params / n) + p16 * largest
            grads = (0 if target.offload_optimizer else (4 if mixed else p16) * params / n) + p16 * largest
            gpu_opt = 0 if target.offload_optimizer else opt / n
            host = (opt + 4 * params + (p16 * params if target.offload_params else 0)) / max(
                1, target.machines
            )
        # ZeRO-2: 2P + 18P/N (2P offloading the optimizer); ZeRO-1 keeps whole 16-bit gradients; 0 splits nothing
        else:
            weights = p16 * params
            fp32_grads = 4 * params if mixed else 0
            if target.offload_optimizer:
                grads, gpu_opt = 0.0, 0.0
            elif stage == 2:
                grads, gpu_opt = (p16 * params + fp32_grads) / n, opt / n
            else:
                grads = p16 * params + fp32_grads / (n if stage == 1 else 1)
                gpu_opt = opt / (n if stage == 1 else 1)
            host = max(4 * target.processes * params, opt + 4 * params)
        offloaded = target.offload_optimizer or target.offload_params
        host = 1.5 * host if offloaded else 0.0  # DeepSpeed's additional_buffer_factor
        return weights, grads, gpu_opt, host, notes
    if target.fsdp_version is not None:
        # accelerate upcasts trainable parameters to fp32 under mixed precision; FSDP computes in bf16 copies
        p = 4 if mixed else t.weight_bytes
        c = t.compute_bytes
        states = optimizer_state_bytes(t.optimizer, shapes, p, t.optimizer_momentum)
        sharding = target.fsdp_sharding or "FULL_SHARD"
        # the units in flight are gathered in the compute dtype, and their gradients before the reduce-scatter;
        # SHARD_GRAD_OP keeps every unit gathered from forward to backward
        gathered = c * (params if sharding in ("SHARD_GRAD_OP", "HYBRID_SHARD_ZERO2") else largest)
        if sharding == "NO_SHARD":
            n, gathered = 1, 0.0
        if target.offload_params:
            return gathered, gathered, 0.0, (2 * p * params + states) / max(1, target.machines), notes
        return p * params / n + gathered, p * params / n + gathered, states / n, 0.0, notes
    # DDP or one process: no master copy, gradients and AdamW states in the weights' dtype
    w = t.weight_bytes
    buckets = 2 if target.processes > 1 else 1
    if buckets == 2:
        notes.append("DDP keeps its gradient buckets beside the gradients (gradient_as_bucket_view is off)")
    return (
        w * params,
        buckets * w * params,
        optimizer_state_bytes(t.optimizer, shapes, w, t.optimizer_momentum),
        0.0,
        notes,
    )


def lora_targets(shape: ModelShape, targets: tuple[str, ...] | str | None) -> list[tuple[str, int, int]]:
    """The linear layers of one decoder layer that LoRA adapts: names, "all-linear" (every linear but the
    LM head, as PEFT reads it), a regex matched against the module path, or None (PEFT's default, q and v)."""
    linears = shape.linears()
    if targets is None:
        targets = ("q_proj", "v_proj")
    if isinstance(targets, str):
        if targets == "all-linear":
            return linears
        pattern = re.compile(targets)
        return [lin for lin in linears if pattern.fullmatch(f"model.layers.0.{lin[0]}")]
    wanted = set(targets)
    return [lin for lin in linears if lin[0].rsplit(".", 1)[-1] in wanted or lin[0] in wanted]


def quantized_bytes_per_param(peft: str, nested: bool) -> float:
    """bitsandbytes storage per quantised weight: NF4/FP4 nibbles plus an fp32 absmax per 64 weights (double
    quantisation: an 8-bit absmax plus an fp32 one per 256 blocks), or int8 plus an fp32 scale per row (~0)."""
    if peft == "qlora-4bit":
        return 0.5 + (1 / 64 + 4 / (64 * 256) if nested else 4 / 64)
    return 1.0


def model_state_bytes(shape: ModelShape, t: TrainingShape, target: LaunchTarget) -> ModelStates:
    """Weights, gradients and optimizer states per GPU for full fine-tuning or LoRA/QLoRA on `target`."""
    notes: list[str] = []
    mixed = t.precision in ("bf16", "fp16")
    h, v = shape.hidden_size, shape.vocab_size
    if not t.lora:
        shapes = [dims for _, dims in shape.layer_tensors()] * shape.num_layers
        shapes += [(v, h)] * (1 if shape.tied_embeddings else 2) + [(h,)]
        weights, grads, opt, host, more = _trained_states(
            shapes, shape.parameters, _unit(shape, target), t, target
        )
        notes += more
        if target.zero_stage is None and target.fsdp_version is None and mixed and t.weight_bytes == 4:
            # autocast makes a bf16 copy of each linear's weight, which backward keeps (with checkpointing: one
            # layer's, recomputed); a plain LM head's too (TRL's fused head casts it a tile at a time)
            copies = shape.layer_params if t.activation_checkpointing else shape.linear_params
            weights += 2 * (copies + (v * h if t.logits == "full" else 0))
            notes.append(
                "fp32 weights under bf16 autocast: the bf16 weight copies autocast makes are kept for backward"
            )
        return ModelStates(weights, grads, opt, 0.0, host, tuple(notes))
    # LoRA: a frozen base (16-bit, or 4/8-bit for QLoRA), trained adapters
    adapted = lora_targets(shape, t.lora_targets)
    if not adapted:
        notes.append(
            f"lora_target_modules {t.lora_targets!r} matches no linear layer of a {shape.model_type} layer"
        )
    adapter_shapes = [(t.lora_r, i) for _, i, _ in adapted] + [(o, t.lora_r) for _, _, o in adapted]
    if t.peft == "dora":
        adapter_shapes += [(o,) for _, _, o in adapted]
    adapter_shapes = adapter_shapes * shape.num_layers
    adapter_params = sum(math.prod(s) for s in adapter_shapes)
    quantized = t.peft.startswith("qlora")
    w = t.weight_bytes if target.zero_stage is None else (2 if mixed else 4)
    base = shape.parameters * w
    if quantized:
        base -= shape.linear_params * (w - quantized_bytes_per_param(t.peft, t.nested_quant))
    if _is_zero3(target) or _is_fsdp_sharded(target):
        base = base / _shards(target) + w * _unit(shape, target)
    # TRL: QLoRA adapters in bf16; PEFT otherwise upcasts them to fp32, except under ZeRO-3 (kept in the base dtype)
    adapter_dtype = "bfloat16" if quantized or (_is_zero3(target) and w == 2) else "float32"
    a = dataclasses.replace(t, weight_dtype=adapter_dtype)
    aw, ag, ao, host, more = _trained_states(adapter_shapes, adapter_params, t.lora_r * shape.intermediate_size,
                                             a, target)  # fmt: skip
    notes += more
    return ModelStates(base, 0.0, 0.0, aw + ag + ao, host, tuple(notes))


def _unit(shape: ModelShape, target: LaunchTarget) -> int:
    """Parameters a sharded run holds whole at a time: for ZeRO-3 the largest module (DeepSpeed's estimators'
    `largest_layer_params`); for FSDP, wrapping each decoder layer, the layer being computed, the next one
    (prefetched) and the root unit (embeddings, final norm and head), which stays gathered through the step."""
    if target.fsdp_version is not None:
        return 2 * shape.layer_params + shape.embedding_params + shape.hidden_size + shape.head_params
    return shape.largest_module_params
