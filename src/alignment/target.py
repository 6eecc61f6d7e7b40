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
    processes: int
    machines: int = 1
    mixed_precision: str | None = None  # "no", "fp16", "bf16", "fp8"; None: the recipe decides
    distributed: str = "single process"
    config_file: str | None = None

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
    if kind == "DEEPSPEED":
        ds = config.deepspeed_config or {}
        stage = ds.get("zero_stage")
        offload = [
            part for part in ("optimizer", "param") if ds.get(f"offload_{part}_device") not in (None, "none")
        ]
        distributed = f"deepspeed zero-{stage}" + (f" (offload {', '.join(offload)})" if offload else "")
    elif kind == "FSDP":
        distributed = f"fsdp{(config.fsdp_config or {}).get('fsdp_version', 1)}"
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
    )


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
