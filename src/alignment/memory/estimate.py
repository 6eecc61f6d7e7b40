"""The estimate, by part, and the nearest changes that make a run fit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.memory.activations import activation_bytes, logits_bytes
from alignment.memory.shapes import ALLOCATOR_SLACK, CONTEXT_BYTES, GiB, ModelShape, TrainingShape
from alignment.memory.states import _is_fsdp_sharded, _is_zero3, _shards, _unit, model_state_bytes
from alignment.target import LaunchTarget

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory per GPU, in bytes, by part."""

    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    logits_and_loss: float
    reference_model: float
    lora_adapters: float
    vllm: float
    overhead: float
    host_offload: float = 0.0  # host RAM per machine for offloaded states
    notes: tuple[str, ...] = ()

    def breakdown(self) -> dict[str, float]:
        """GiB per part, the parts that are not zero, rounded for printing."""
        parts = ("weights", "gradients", "optimizer_states", "activations", "logits_and_loss", "reference_model",
                 "lora_adapters", "vllm", "overhead")  # fmt: skip
        out = {}
        for name in parts:
            value = getattr(self, name)
            if value or name in ("weights", "activations", "overhead"):
                out[name] = round(value / GiB, 2)
        return out

    @property
    def total_bytes(self) -> float:
        return sum(
            getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("host_offload", "notes")
        )

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GiB

    def fits(self, gpu_memory_gib: float) -> bool:
        return self.total_gib <= gpu_memory_gib


def reference_bytes(shape: ModelShape, t: TrainingShape, target: LaunchTarget) -> float:
    """A frozen copy of the weights: sharded like the policy under ZeRO-3/FSDP, else whole (TRL runs the
    reference as a ZeRO stage-0 engine under ZeRO-1/2, which holds 16-bit weights)."""
    if not t.reference_model or t.lora:
        return 0.0
    if target.zero_stage is not None:
        p16 = 2 if t.precision in ("bf16", "fp16") else 4
        if target.zero_stage == 3:
            return (
                0 if target.offload_params else p16 * shape.parameters / _shards(target)
            ) + p16 * shape.largest_module_params
        return p16 * shape.parameters
    if _is_fsdp_sharded(target):
        return t.weight_bytes * (shape.parameters / _shards(target) + _unit(shape, target))
    return t.weight_bytes * shape.parameters


def estimate(
    shape: ModelShape, t: TrainingShape, target: LaunchTarget, gpu_memory_gib: float | None = None
) -> MemoryEstimate:
    """Peak memory per GPU of training `shape` as `t` says on `target`. `gpu_memory_gib` sizes a colocated vLLM."""
    states = model_state_bytes(shape, t, target)
    vllm = t.vllm_gpu_fraction * gpu_memory_gib * GiB if gpu_memory_gib and t.vllm_gpu_fraction else 0.0
    tensors = (states.weights + states.gradients + states.optimizer_states + states.adapters
               + activation_bytes(shape, t) + logits_bytes(shape, t) + reference_bytes(shape, t, target))  # fmt: skip
    return MemoryEstimate(
        weights=states.weights,
        gradients=states.gradients,
        optimizer_states=states.optimizer_states,
        activations=activation_bytes(shape, t),
        logits_and_loss=logits_bytes(shape, t),
        reference_model=reference_bytes(shape, t, target),
        lora_adapters=states.adapters,
        vllm=vllm,
        overhead=CONTEXT_BYTES + ALLOCATOR_SLACK * tensors,
        host_offload=states.host,
        notes=states.notes,
    )


# --- Fixes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fix:
    """A change to the recipe or the launch, and the estimate with it."""

    change: str
    estimate: MemoryEstimate
    overrides: tuple[str, ...] = ()  # recipe keys, as command-line flags
    accelerate_config: str | None = None

    def to_dict(self, gpu_memory_gib: float) -> dict[str, Any]:
        out: dict[str, Any] = {"change": self.change, "per_gpu_gib": round(self.estimate.total_gib, 1),
                               "fits": self.estimate.fits(gpu_memory_gib)}  # fmt: skip
        if self.estimate.host_offload:
            out["host_ram_per_machine_gib"] = round(self.estimate.host_offload / GiB)
        if self.overrides:
            out["overrides"] = " ".join(self.overrides)
        if self.accelerate_config:
            out["accelerate_config"] = self.accelerate_config
        return out


def _config_file(target: LaunchTarget, name: str) -> str | None:
    """accelerate_configs/<name> beside the config in use (or under the working directory), if it is there."""
    for folder in ([Path(target.config_file).parent] if target.config_file else []) + [
        Path("accelerate_configs")
    ]:
        if (folder / name).is_file():
            return str(folder / name)
    return None


def candidate_fixes(
    shape: ModelShape, t: TrainingShape, target: LaunchTarget, gpu_memory_gib: float
) -> list[Fix]:
    """Single changes that lower the peak, least disruptive first, each re-estimated: a smaller micro-batch with
    more accumulation (the same global batch), activation checkpointing, ZeRO-3, CPU offload, QLoRA."""
    fixes: list[Fix] = []

    def add(change: str, new_t: TrainingShape = t, new_target: LaunchTarget = target, overrides: tuple[str, ...] = (),
            config: str | None = None) -> None:  # fmt: skip
        fixes.append(Fix(change, estimate(shape, new_t, new_target, gpu_memory_gib), overrides, config))

    smaller = [b for b in range(t.batch_size - 1, 0, -1) if t.batch_size % b == 0]
    for b in smaller:  # the largest micro-batch that fits, else the smallest
        accumulation = t.gradient_accumulation_steps * t.batch_size // b
        new_t = dataclasses.replace(t, batch_size=b, gradient_accumulation_steps=accumulation)
        if estimate(shape, new_t, target, gpu_memory_gib).fits(gpu_memory_gib) or b == 1:
            add(f"per_device_train_batch_size {b} with gradient_accumulation_steps {accumulation} (same global batch)",
                new_t, overrides=("--per_device_train_batch_size", str(b),
                                  "--gradient_accumulation_steps", str(accumulation)))  # fmt: skip
            break
    if not t.activation_checkpointing:
        add("activation checkpointing", dataclasses.replace(t, activation_checkpointing=True),
            overrides=("--activation_checkpointing", "true"))  # fmt: skip
    zero3 = dataclasses.replace(target, distributed="deepspeed zero-3", zero_stage=3, fsdp_version=None,
                                fsdp_sharding=None, offload_optimizer=False, offload_params=False)  # fmt: skip
    if target.processes > 1 and not _is_zero3(target) and not _is_fsdp_sharded(target):
        add(f"DeepSpeed ZeRO-3 over the {target.processes} processes", new_target=zero3,
            config=_config_file(target, "zero3.yaml"))  # fmt: skip
    if not target.offload_optimizer:
        base = target if target.zero_stage in (2, 3) else zero3
        add("ZeRO-3 with the optimizer offloaded to CPU (offload_optimizer_device: cpu)" if base is zero3
            else f"offload the optimizer to CPU (offload_optimizer_device: cpu, ZeRO-{base.zero_stage})",
            new_target=dataclasses.replace(base, offload_optimizer=True))  # fmt: skip
    if not target.offload_params:
        add("ZeRO-3 with optimizer and parameters offloaded to CPU",
            new_target=dataclasses.replace(zero3, offload_optimizer=True, offload_params=True),
            config=_config_file(target, "zero3_offload.yaml"))  # fmt: skip
    if not t.lora:
        qlora = dataclasses.replace(
            t, peft="qlora-4bit", lora_r=16, lora_targets="all-linear", reference_model=False
        )
        add("QLoRA: 4-bit base, LoRA r=16 on all linear layers (a different method: adapters, not the full model)",
            qlora, overrides=("--use_peft", "true", "--load_in_4bit", "true", "--lora_r", "16",
                              "--lora_target_modules", "all-linear"))  # fmt: skip
    return fixes


def nearest_fixes(shape: ModelShape, t: TrainingShape, target: LaunchTarget, gpu_memory_gib: float,
                  limit: int = 3) -> list[Fix]:  # fmt: skip
    """The first `limit` single changes (least disruptive first) that make the run fit."""
    return [f for f in candidate_fixes(shape, t, target, gpu_memory_gib) if f.estimate.fits(gpu_memory_gib)][
        :limit
    ]
