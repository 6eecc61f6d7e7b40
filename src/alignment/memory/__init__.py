"""Peak GPU memory per process, estimated before a run from config.json and the recipe: does it fit?

    alignment check recipes/zephyr-7b-beta/sft/config_full.yaml --accelerate_config accelerate_configs/zero3.yaml \
        --gpu_memory 80

Gap filled: DeepSpeed's estimators count model states only (and assume 16-bit Adam with fp32 master
weights), accelerate's `estimate-memory` counts weights only, and neither knows the recipe's batch,
length, attention, LoRA, reference model or TRL's loss. The estimate needs no torch and no weights:
the parameter shapes come from config.json, the rest from the recipe and the accelerate config.

The model, per GPU, in bytes (P parameters, N processes sharing the states, L the largest single
module's parameters, which DeepSpeed ZeRO-3 gathers whole):

* Model states (`model_state_bytes`). Plain DDP / one GPU keeps no fp32 master copy: the weights,
  their gradients and torch AdamW's two states are all in the dtype the weights were loaded in
  (2 + 2 + 4 bytes for bf16; 4 + 4 + 8 for fp32 weights under bf16 autocast, which also keeps bf16
  copies of the weights for backward). DDP over several processes adds its gradient buckets, a
  second copy of the gradients (`gradient_as_bucket_view` is off by default). DeepSpeed holds
  16-bit weights, fp32 master weights and fp32 optimizer states, exactly as its own estimators count
  them: ZeRO-2 `2P + 18P/N` (gradients 2 + 4, master 4, Adam 8), with optimizer offload `2P`;
  ZeRO-3 `4L + 18P/N`, `4L + 2P/N` with optimizer offload, `4L` with parameters offloaded too.
  FSDP under accelerate upcasts trainable parameters to fp32 when mixed precision is on: fp32
  weights, gradients and Adam states sharded (16/N) plus the bf16 copy of the units being computed.
* Activations (`saved_activation_bytes`), per token of a micro-batch (batch x length, x2 for
  preference pairs: TRL concatenates chosen and rejected) and per decoder layer, with h hidden, i
  MLP intermediate, H/K query/key-value heads of size d, r the residual dtype's bytes, s the compute
  dtype's bytes. What autograd saves for backward in a Llama-style layer (checked against torch's
  saved-tensor hooks in tests/test_memory.py):
    - each RMSNorm: its input upcast to fp32 (4h), the normalised value before the weight (r h, only
      when the weight trains) and its output, which the next linear saves (r h);
    - attention: q after rotary (s H d), k and v (s K' d each; K' = H where transformers repeats
      the key-value heads: eager, and sdpa with a padding mask), the output (s H d; o_proj's input is
      the same storage), the log-sum-exp (4 H); eager adds the fp32 softmax and its cast (H L^2 per
      sequence), sdpa with a mask adds the mask converted to the compute dtype (L^2 s per sequence);
      flash/flex attention neither;
    - the gated MLP: gate, activation, up and their product (4 s i).
  With activation checkpointing only each layer's input is kept (r h), and one layer is recomputed
  during backward. LoRA freezes the base: a frozen linear saves no input, each adapter saves its
  (dropped-out) input and its rank-r middle.
* Logits and loss (`logits_bytes`). The plain loss (ORPO, CPO, label smoothing, other trainers):
  4 bytes x vocab per token saved (log-softmax in fp32) plus 8 more while its backward runs (its
  gradient and the logits' gradient in fp32): 12 V bytes per token. TRL 1.16's SFT, DPO, KTO, GRPO
  and RLOO trainers use a fused, chunked LM head instead: a 4096 x 32768 tile, the head's input, and
  in backward fp32 gradients of the hidden states and of the head's weight.
* Reference model (DPO, KTO, online RL with beta > 0): another copy of the weights, sharded like
  the policy under ZeRO-3/FSDP; none with `precompute_ref_log_probs` or PEFT (TRL disables the
  adapter to get the reference).
* Overhead: 1 GiB for the CUDA context, cuBLAS workspaces and NCCL buffers (an idle PyTorch process
  with NCCL up shows 0.5-1 GiB in nvidia-smi), plus 5% of the rest for the caching allocator's
  fragmentation (reserved minus allocated is typically 3-10% at peak).

Every sequence is assumed to be `max_length` long (batches are padded to their longest row), which
makes this an upper bound for data with short rows.
"""

from alignment.memory.activations import (
    activation_bytes,
    layer_activation_bytes,
    logits_bytes,
    saved_activation_bytes,
)
from alignment.memory.estimate import (
    Fix,
    MemoryEstimate,
    candidate_fixes,
    estimate,
    nearest_fixes,
    reference_bytes,
)
from alignment.memory.from_recipe import (
    ConfigUnavailable,
    gpu_memory_gib,
    read_model_config,
    recipe_memory,
    training_shape,
)
from alignment.memory.shapes import GiB, ModelShape, TrainingShape, model_shape
from alignment.memory.states import (
    ModelStates,
    lora_targets,
    model_state_bytes,
    optimizer_state_bytes,
    quantized_bytes_per_param,
)

__all__ = [
    "ConfigUnavailable",
    "Fix",
    "GiB",
    "MemoryEstimate",
    "ModelShape",
    "ModelStates",
    "TrainingShape",
    "activation_bytes",
    "candidate_fixes",
    "estimate",
    "gpu_memory_gib",
    "layer_activation_bytes",
    "logits_bytes",
    "lora_targets",
    "model_shape",
    "model_state_bytes",
    "nearest_fixes",
    "optimizer_state_bytes",
    "quantized_bytes_per_param",
    "read_model_config",
    "recipe_memory",
    "reference_bytes",
    "saved_activation_bytes",
    "training_shape",
]
