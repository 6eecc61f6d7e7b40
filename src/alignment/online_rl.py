"""Checks of an online-RL recipe (grpo, rloo) on the launch it is meant for: generation batches and vLLM.

TRL checks that a generation batch holds whole prompt groups when the config is built, with the
world size of the process that builds it: a dry run on a laptop for an 8-GPU job checks nothing
that matters, and on the node the error comes after the model has loaded. vLLM settings are not
checked at all until the trainer starts it. Here both are checked for the target's process count,
so `alignment check` refuses (or notes) them before anyone pays for the GPUs.
"""

from __future__ import annotations

from typing import Any

from alignment.errors import RecipeError

VLLM_MODES = ("colocate", "server")


def check_online_rl(training: Any, processes: int, given: set[str], origin: str) -> list[str]:
    """Refuse what would fail on `processes` processes; return notes on the generation and vLLM set-up."""
    notes: list[str] = []
    per_round = training.per_device_train_batch_size * processes
    if "generation_batch_size" in given and training.generation_batch_size is not None:
        batch = training.generation_batch_size
        if batch % per_round:
            raise RecipeError(
                f"{origin}: `generation_batch_size` {batch} must be a multiple of per_device_train_batch_size "
                f"x {processes} processes = {per_round}"
            )
    else:
        steps = training.steps_per_generation if "steps_per_generation" in given else None
        batch = per_round * (steps or training.gradient_accumulation_steps)
    if batch % training.num_generations:
        raise RecipeError(
            f"{origin}: on {processes} process(es) a generation round holds {batch} completions, not a multiple "
            f"of `num_generations` {training.num_generations} (every prompt needs its whole group); change "
            "per_device_train_batch_size, gradient_accumulation_steps or num_generations"
        )
    notes.append(
        f"online RL: {batch // training.num_generations} prompts x {training.num_generations} completions "
        f"per generation round on {processes} process(es)"
    )
    if training.use_vllm:
        notes += _check_vllm(training, processes, given, origin)
    return notes


def _check_vllm(training: Any, processes: int, given: set[str], origin: str) -> list[str]:
    mode = training.vllm_mode
    if mode not in VLLM_MODES:
        raise RecipeError(f"{origin}: `vllm_mode` is {mode!r}; it must be one of {', '.join(VLLM_MODES)}")
    utilisation = training.vllm_gpu_memory_utilization
    if not 0 < utilisation <= 1:
        raise RecipeError(f"{origin}: `vllm_gpu_memory_utilization` is {utilisation}; it must be in (0, 1]")
    parallel = training.vllm_tensor_parallel_size
    if mode == "colocate":
        if processes % parallel:
            raise RecipeError(
                f"{origin}: `vllm_tensor_parallel_size` {parallel} must divide the {processes} training "
                "process(es) in colocate mode (vLLM shares their GPUs)"
            )
        return [
            f"vLLM colocate: generation shares the training GPUs, {utilisation:.0%} of each GPU's memory for "
            f"vLLM, tensor parallel {parallel}"
        ]
    server = (
        training.vllm_server_base_url or f"http://{training.vllm_server_host}:{training.vllm_server_port}"
    )
    if not ({"vllm_server_base_url", "vllm_server_host"} & given):
        raise RecipeError(
            f"{origin}: `vllm_mode: server` needs the server's address: set `vllm_server_base_url` (or "
            "`vllm_server_host`/`vllm_server_port`) to where `trl vllm-serve --model MODEL` runs"
        )
    return [
        f"vLLM server at {server}: start `trl vllm-serve --model <model> --tensor_parallel_size N` on GPUs "
        "the training does not use (e.g. CUDA_VISIBLE_DEVICES) before training"
    ]


def vllm_device_note(training: Any) -> str | None:
    """Why this machine cannot generate with vLLM (no CUDA, or vLLM not installed); None when it can."""
    if not getattr(training, "use_vllm", False):
        return None
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "use_vllm: vLLM needs a CUDA GPU, and this machine has none"
    if importlib.util.find_spec("vllm") is None:
        return "use_vllm: vllm is not installed here (pip install vllm)"
    return None
