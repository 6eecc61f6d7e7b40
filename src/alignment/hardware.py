"""What this machine can run, asked of torch and transformers instead of kept as copies here.

The recipe parser and the model loader use these to fall back (bf16 -> fp32, flash-attn -> sdpa)
with a note instead of a traceback; `alignment check` reports them apart from the plan, because the
plan describes the machine the recipe is meant for, not this one.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def has_accelerator() -> bool:
    """Any accelerator torch can train on (CUDA, ROCm, XPU, MPS, NPU, ...): only without one is this a CPU run."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available()


def bf16_supported() -> bool:
    """transformers' own check: False on a CPU, and on GPUs without bf16 (T4, V100) that still have CUDA."""
    from transformers.utils import is_torch_bf16_gpu_available

    return is_torch_bf16_gpu_available()


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16): only then is bf16 autocast faster.

    Without those instructions bf16 is emulated and slower than fp32, so a bf16 recipe falls back to
    fp32 there. torch exposes the check only as private helpers; a torch without them reads as no.
    """
    import torch

    checks = [
        getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    ]
    return any(check is not None and check() for check in checks)


def attention_implementations() -> tuple[str, ...]:
    """The `attn_implementation` names transformers accepts: eager plus its attention registry."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ("eager", *ALL_ATTENTION_FUNCTIONS.valid_keys())


def flash_attention_usable(name: str) -> bool:
    """Whether transformers can run `flash_attention_N` here: the package on a supported device, or a Hub kernel."""
    from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX

    version = int(name.rsplit("_", 1)[-1])
    check = FLASH_ATTENTION_COMPATIBILITY_MATRIX[version]["general_availability_check"]
    return bool(check(kernels_fallback_ok=True))


def resolve_attn_implementation(requested: str | None) -> str | None:
    """flash-attn needs CUDA and a separate install (or the `kernels` package); fall back to sdpa instead of failing."""
    from transformers.utils.generic import is_flash_attention_requested

    if requested is None or "/" in requested:  # a Hub kernel: transformers loads it or says why not
        return requested
    if is_flash_attention_requested(
        requested_attention_implementation=requested
    ) and not flash_attention_usable(requested):
        logger.warning(
            f"attn_implementation {requested} requested but neither its package on a supported GPU nor a "
            "Hub kernel (`pip install kernels`) is available here: using sdpa"
        )
        return "sdpa"
    return requested
