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

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError
from alignment.target import LaunchTarget

if TYPE_CHECKING:
    from alignment.recipe import Recipe

GiB = 2**30
CONTEXT_BYTES = 1 * GiB  # CUDA context + cuBLAS workspaces + NCCL buffers, per process
ALLOCATOR_SLACK = 0.05  # caching-allocator fragmentation at peak, as a share of the tensors
FUSED_TOKEN_CHUNK, FUSED_VOCAB_CHUNK = 4096, 32768  # trl.kernels.chunked_logprob's tile
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# Architectures whose parameter shapes are written out here; anything else is counted as one of them, with a note.
KNOWN_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma")
FLASH_LIKE = ("flash", "flex", "paged", "kernels-community", "/")  # no L^2 term, no repeated key-value heads


# --- Shapes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's dimensions, as config.json gives them."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # qwen3: an RMSNorm over each head's query and key
    norm_upcast: bool = False  # gemma: the norm multiplies by (1 + weight) in fp32, so it saves an fp32 copy
    dtype: str | None = None  # the checkpoint's dtype (what `dtype: auto` loads)
    max_positions: int | None = None
    guessed: bool = False  # an unknown model type, counted as a Llama-style decoder

    def layer_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """One decoder layer's parameters as (name, shape), named like transformers' Llama modules."""
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_heads * d, self.num_kv_heads * d
        out = [("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
               ("self_attn.o_proj", (h, q)), ("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)),
               ("mlp.down_proj", (h, i))]  # fmt: skip
        if self.qkv_bias:
            out += [
                ("self_attn.q_proj.bias", (q,)),
                ("self_attn.k_proj.bias", (kv,)),
                ("self_attn.v_proj.bias", (kv,)),
            ]
        if self.o_bias:
            out.append(("self_attn.o_proj.bias", (h,)))
        if self.mlp_bias:
            out += [("mlp.gate_proj.bias", (i,)), ("mlp.up_proj.bias", (i,)), ("mlp.down_proj.bias", (h,))]
        if self.qk_norm:
            out += [("self_attn.q_norm", (d,)), ("self_attn.k_norm", (d,))]
        return out + [("input_layernorm", (h,)), ("post_attention_layernorm", (h,))]

    def linears(self) -> list[tuple[str, int, int]]:
        """One layer's linear layers as (name, in_features, out_features): what LoRA can target."""
        return [(name, dims[1], dims[0]) for name, dims in self.layer_tensors() if len(dims) == 2]

    @property
    def layer_params(self) -> int:
        return sum(math.prod(dims) for _, dims in self.layer_tensors())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The LM head's own parameters: none when it shares the embedding matrix."""
        return 0 if self.tied_embeddings else self.embedding_params

    @property
    def parameters(self) -> int:
        """As `sum(p.numel() for p in model.parameters())` counts them (a tied head once)."""
        return (
            self.embedding_params + self.num_layers * self.layer_params + self.hidden_size + self.head_params
        )

    @property
    def linear_params(self) -> int:
        """The decoder layers' linear weights: what 4/8-bit quantisation replaces."""
        return self.num_layers * sum(i * o for _, i, o in self.linears())

    @property
    def largest_module_params(self) -> int:
        """DeepSpeed's `largest_layer_params`: the most parameters any single module holds itself."""
        per_module: dict[str, int] = {}
        for name, dims in self.layer_tensors():
            module = name.removesuffix(".bias")
            per_module[module] = per_module.get(module, 0) + math.prod(dims)
        return max(self.embedding_params, *per_module.values())


def model_shape(config: Mapping[str, Any]) -> ModelShape:
    """The shape of the model a config.json describes (a `PretrainedConfig.to_dict()` or the file's JSON).

    Llama, Mistral, Qwen2/3 and Gemma are written out; another decoder is counted as a Llama with
    the same dimensions (`guessed`), which is close for most dense decoders and wrong for MoE models.
    """
    config = dict(config.get("text_config") or config)
    model_type = str(config.get("model_type") or "unknown")

    def need(*keys: str) -> int:
        for key in keys:
            if config.get(key) is not None:
                return int(config[key])
        raise RecipeError(f"config.json ({model_type}) has no `{keys[0]}`: cannot size the model")

    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head", "num_heads")
    head_dim = int(config.get("head_dim") or hidden // heads)
    bias = bool(config.get("attention_bias"))
    return ModelShape(
        model_type=model_type,
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        num_layers=need("num_hidden_layers", "n_layer", "num_layers"),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        intermediate_size=int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden),
        tied_embeddings=bool(config.get("tie_word_embeddings", model_type == "gemma")),
        qkv_bias=model_type == "qwen2" or bias,
        o_bias=bias and model_type != "qwen2",
        mlp_bias=bool(config.get("mlp_bias")),
        qk_norm=model_type == "qwen3",
        norm_upcast=model_type.startswith("gemma"),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        max_positions=config.get("max_position_embeddings"),
        guessed=model_type not in KNOWN_TYPES,
    )


@dataclass(frozen=True)
class TrainingShape:
    """What the recipe does with the model: batch, length, precision, optimizer, adapters, loss."""

    batch_size: int  # per device, examples per micro-batch
    max_length: int  # tokens per sequence
    gradient_accumulation_steps: int = 1
    sequences_per_example: int = 1  # 2 for preference pairs: TRL concatenates chosen and rejected
    weight_dtype: str = "bfloat16"  # what the weights are loaded in
    precision: str = "bf16"  # bf16 | fp16 | fp32: the autocast the Trainer runs under
    activation_checkpointing: bool = True
    activation_offloading: bool = False  # TRL's `activation_offloading`: saved tensors go to CPU RAM
    attn_implementation: str = "sdpa"
    optimizer: str = "adamw_torch"
    optimizer_momentum: bool = False  # sgd with momentum (optim_args)
    peft: str = "full"  # full | lora | dora | qlora-4bit | qlora-8bit
    lora_r: int = 16
    lora_targets: tuple[str, ...] | str | None = None  # None: PEFT's default for the model type
    lora_dropout: float = 0.05
    nested_quant: bool = False
    logits: str = "fused"  # fused: TRL's chunked head | full: log-softmax over the vocab | none: a score head
    reference_model: bool = False
    vllm_gpu_fraction: float = 0.0  # vLLM colocated in the training process takes this share of the GPU

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch on one GPU."""
        return self.batch_size * self.sequences_per_example * self.max_length

    @property
    def sequences(self) -> int:
        return self.batch_size * self.sequences_per_example

    @property
    def lora(self) -> bool:
        return self.peft != "full"

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.weight_dtype]

    @property
    def compute_bytes(self) -> int:
        """Bytes of an activation that autocast computes (bf16/fp16 matmuls), else the weights' dtype."""
        return 2 if self.precision in ("bf16", "fp16") else self.weight_bytes


# --- Model states ----------------------------------------------------------------------------------------

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


# --- Activations -------------------------------------------------------------------------------------------


def _attention_kind(name: str) -> str:
    if name == "eager":
        return "eager"
    return "flash" if any(part in name for part in FLASH_LIKE) else "sdpa"


def layer_activation_bytes(shape: ModelShape, t: TrainingShape) -> tuple[float, float]:
    """(bytes per token, bytes per sequence) one decoder layer saves for backward, without checkpointing.

    The per-sequence part grows with length squared: eager's softmax, sdpa's converted padding mask.
    """
    h, i, d = shape.hidden_size, shape.intermediate_size, shape.head_dim
    heads, kv_heads = shape.num_heads, shape.num_kv_heads
    r, s = t.weight_bytes, t.compute_bytes
    attention = _attention_kind(t.attn_implementation)
    full = not t.lora
    adapted = (
        {name.rsplit(".", 1)[-1]: (i_, o_) for name, i_, o_ in lora_targets(shape, t.lora_targets)}
        if t.lora
        else {}
    )
    dropout = t.lora_dropout > 0

    def norm_and_consumers(consumers: Sequence[str], width: int) -> float:
        """An RMSNorm (fp32 input, normalised value for the weight's gradient) and what its consumers save of
        its output: the output once, or, under autocast of fp32 weights, a bf16 cast per linear."""
        pre_weight = (4 if shape.norm_upcast else r) * width if full else 0
        out = 4 * width + pre_weight
        if full:
            out += r * width if r == s else len(consumers) * s * width
        else:
            lora_in = [c for c in consumers if c in adapted]
            if lora_in and not dropout:
                out += r * width
            # each adapter's own dropout: its output and its mask (a bool on CUDA; the input's dtype on CPU)
            out += len(lora_in) * (s + 1) * width if dropout else 0
        return out

    per_token = norm_and_consumers(("q_proj", "k_proj", "v_proj"), h)
    kv_saved = heads if attention == "eager" or (attention == "sdpa" and kv_heads != heads) else kv_heads
    per_token += s * (heads * d + 2 * kv_saved * d)  # q after rotary, k and v as attention sees them
    per_token += s * heads * d  # attention output (= o_proj's input)
    per_token += 4 * heads if attention != "eager" else 0  # log-sum-exp
    if shape.qk_norm:
        per_token += (4 + (r if full else 0) + r) * (heads + kv_heads) * d
    per_token += norm_and_consumers(("gate_proj", "up_proj"), h)
    per_token += 3 * s * i  # gate, activation, up
    if full or ("down_proj" in adapted and not dropout):
        per_token += s * i  # their product, down_proj's input
    if t.lora:
        if dropout:
            per_token += sum((s + 1) * adapted[n][0] for n in ("o_proj", "down_proj") if n in adapted)
        per_token += len(adapted) * s * t.lora_r  # lora_A's output, saved by lora_B
    length = t.max_length
    if attention == "eager":
        per_sequence = heads * length * length * (4 + (s if s != 4 else 0))  # fp32 softmax and its cast
    elif attention == "sdpa":
        per_sequence = length * length * s  # the padding mask, converted to the compute dtype per call
    else:
        per_sequence = 0.0
    return per_token, per_sequence


def _final_norm_bytes(shape: ModelShape, t: TrainingShape) -> float:
    """The last RMSNorm: its fp32 input, and when it trains its normalised value; its output when a plain
    LM head that trains saves it (TRL's fused head saves its own copy, counted with the logits)."""
    r, h = t.weight_bytes, shape.hidden_size
    full = not t.lora
    return (4 + (r if full else 0) + (r if full and t.logits == "full" else 0)) * h * t.tokens


def saved_activation_bytes(shape: ModelShape, t: TrainingShape) -> float:
    """Bytes autograd holds for backward after one forward of a micro-batch, loss included: what
    `torch.autograd.graph.saved_tensors_hooks` sees (with reentrant checkpointing, whose layer inputs pass
    through them). Small terms (rotary tables, the rsqrt per token, token ids) are left out."""
    per_token, per_sequence = layer_activation_bytes(shape, t)
    if t.activation_checkpointing:
        layers = shape.num_layers * t.weight_bytes * shape.hidden_size * t.tokens  # each layer's input
    else:
        layers = shape.num_layers * (per_token * t.tokens + per_sequence * t.sequences)
    return layers + _final_norm_bytes(shape, t) + logits_bytes(shape, t, saved_only=True)


def logits_bytes(shape: ModelShape, t: TrainingShape, saved_only: bool = False) -> float:
    """Bytes of the LM head and the loss: saved for backward, or (default) at their peak in backward."""
    tokens, vocab, h, s = t.tokens, shape.vocab_size, shape.hidden_size, t.compute_bytes
    if t.logits == "none":
        return 0.0
    if t.logits == "full":  # fp32 log-softmax saved; in backward its gradient and the logits' in fp32 too
        return (4 if saved_only else 12) * vocab * tokens
    # TRL's fused head: the head's input and two fp32 numbers per token saved; a tile in forward and backward, the
    # fp32 gradient of the hidden states and, when the head trains, of its weight
    saved = s * h * tokens + 8 * tokens
    if saved_only:
        return saved
    tile = min(tokens, FUSED_TOKEN_CHUNK) * min(vocab, FUSED_VOCAB_CHUNK) * s
    head_grad = 4 * vocab * h if not t.lora else 0
    return saved + tile + 4 * h * tokens + head_grad


def activation_bytes(shape: ModelShape, t: TrainingShape) -> float:
    """Peak bytes of the decoder layers' activations: all of them saved, or with checkpointing each layer's
    input plus one layer recomputed in backward."""
    per_token, per_sequence = layer_activation_bytes(shape, t)
    one_layer = per_token * t.tokens + per_sequence * t.sequences
    if (
        t.activation_offloading
    ):  # what is saved streams to CPU RAM; a layer in flight and one being copied stay
        return 2 * one_layer + _final_norm_bytes(shape, t)
    if t.activation_checkpointing:
        kept = shape.num_layers * t.weight_bytes * shape.hidden_size * t.tokens + one_layer
    else:
        kept = shape.num_layers * one_layer
    return kept + _final_norm_bytes(shape, t)


# --- The estimate ------------------------------------------------------------------------------------------


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


# --- From a recipe ----------------------------------------------------------------------------------------


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
    optim = str(_value(t.optim))
    if optim not in OPTIMIZER_STATES:
        notes.append(f"optim {optim}: its states counted as AdamW's")
    if kind in ("orpo", "cpo") or getattr(t, "label_smoothing_factor", 0):
        logits = "full"
    elif stage(kind).head == "reward":
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
        lora_r=m.lora_r,
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
