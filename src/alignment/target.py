"""Where a run will run: processes, mixed precision and sharding, read from an accelerate config file.

`alignment check` and `alignment <stage> --accelerate_config` use it to describe the launch the user is
about to pay for, and to refuse a recipe whose precision disagrees with the file's `mixed_precision`
(DeepSpeed fails on that mismatch only after the model is loaded; plain DDP silently follows the recipe).
Accelerate has no function that summarises a config file; reading it is accelerate's own loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError


@dataclass(frozen=True)
class LaunchTarget:
    """A launch: processes and machines, precision, and how the training state is sharded (alignment/memory/ reads these)."""

    processes: int
    machines: int = 1
    mixed_precision: str | None = None  # "no", "fp16", "bf16", "fp8"; None: the recipe decides
    distributed: str = "single process"
    config_file: str | None = None
    zero_stage: int | None = None  # DeepSpeed ZeRO stage; None: not DeepSpeed
    offload_optimizer: bool = False  # DeepSpeed offload_optimizer_device (cpu/nvme)
    offload_params: bool = False  # DeepSpeed offload_param_device, or FSDP's fsdp_offload_params
    fsdp_version: int | None = None  # 1 or 2; None: not FSDP
    fsdp_sharding: str | None = None  # FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD, HYBRID_SHARD_ZERO2

    def describe(self) -> str:
        return self.distributed if self.machines == 1 else f"{self.distributed}, {self.machines} machines"


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


def read_accelerate_config(path: str, num_processes: int | None = None) -> LaunchTarget:
    """The launch an accelerate config file describes; `num_processes` overrides the file's, as on the CLI."""
    if not Path(path).is_file():
        raise RecipeError(f"accelerate config not found: {path}")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(path)
    except Exception as err:  # accelerate raises several types for a malformed file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(f"{path}: not a valid accelerate config ({first})") from None
    kind = _value(config.distributed_type)
    sharding: dict[str, Any] = {}
    if kind == "DEEPSPEED":
        ds = _deepspeed_settings(config.deepspeed_config or {}, path)
        stage = ds.get("zero_stage")
        offload = [
            part for part in ("optimizer", "param") if ds.get(f"offload_{part}_device") not in (None, "none")
        ]
        distributed = f"deepspeed zero-{stage}" + (f" (offload {', '.join(offload)})" if offload else "")
        sharding = {"zero_stage": int(stage) if stage is not None else 0,
                    "offload_optimizer": "optimizer" in offload, "offload_params": "param" in offload}  # fmt: skip
    elif kind == "FSDP":
        fsdp = config.fsdp_config or {}
        version = int(fsdp.get("fsdp_version", 1))
        distributed = f"fsdp{version}"
        sharding = {"fsdp_version": version, "fsdp_sharding": fsdp_sharding(fsdp),
                    "offload_params": str(fsdp.get("fsdp_offload_params", False)).lower() == "true"}  # fmt: skip
    elif kind in ("MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA"):
        distributed = "ddp"
    else:
        distributed = "single process"
    return LaunchTarget(
        processes=num_processes or int(config.num_processes or 1),
        machines=int(config.num_machines or 1),
        mixed_precision=_value(config.mixed_precision) if config.mixed_precision is not None else None,
        distributed=distributed,
        config_file=path,
        **sharding,
    )


FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")


def fsdp_sharding(fsdp: dict[str, Any]) -> str:
    """FSDP's sharding strategy by name: `fsdp_sharding_strategy` (FSDP1, a name or its number 1-5) or
    `fsdp_reshard_after_forward` (a name, or for FSDP2 a bool: true shards like FULL_SHARD, false like
    SHARD_GRAD_OP)."""
    value = fsdp.get("fsdp_sharding_strategy", fsdp.get("fsdp_reshard_after_forward", True))
    text = str(value).upper()
    if text in ("TRUE", "FALSE"):
        return "FULL_SHARD" if text == "TRUE" else "SHARD_GRAD_OP"
    if text.isdigit() and 1 <= int(text) <= len(FSDP_SHARDING):
        return FSDP_SHARDING[int(text) - 1]
    return text if text in FSDP_SHARDING else "FULL_SHARD"


def _deepspeed_settings(ds: dict[str, Any], path: str) -> dict[str, Any]:
    """The ZeRO stage and offload devices, from the accelerate config or the DeepSpeed JSON it points to."""
    file = ds.get("deepspeed_config_file")
    if not file:
        return ds
    import json

    json_path = (
        Path(path).parent / file if not Path(file).is_absolute() and not Path(file).is_file() else Path(file)
    )
    try:
        zero = json.loads(json_path.read_text()).get("zero_optimization", {})
    except (OSError, ValueError) as err:
        raise RecipeError(f"{path}: deepspeed_config_file {file} cannot be read ({err})") from None
    return {"zero_stage": zero.get("stage"),
            **{f"offload_{part}_device": (zero.get(f"offload_{part}") or {}).get("device") for part in ("optimizer", "param")}}  # fmt: skip


def check_precision(recipe_precision: str, target: LaunchTarget, recipe_path: str | None) -> None:
    """Refuse a recipe whose bf16/fp16 disagrees with the accelerate config's mixed_precision."""
    wanted = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[recipe_precision]
    if target.mixed_precision is None or target.mixed_precision == wanted:
        return
    keys = {"bf16": "`bf16: true`", "fp16": "`fp16: true`", "fp32": "neither `bf16` nor `fp16`"}
    raise RecipeError(
        f"{recipe_path or 'recipe'} sets {keys[recipe_precision]} but {target.config_file} has "
        f"`mixed_precision: {target.mixed_precision}`; make them agree (DeepSpeed refuses the mismatch "
        "after loading the model)"
    )


def checked_target(recipe_precision: str, recipe_path: str | None, config_file: str,
                   num_processes: int | None = None) -> LaunchTarget:  # fmt: skip
    """The launch `config_file` describes, refused if it disagrees with the recipe's precision."""
    target = read_accelerate_config(config_file, num_processes)
    check_precision(recipe_precision, target, recipe_path)
    return target
