"""Model and training shapes: what config.json and the recipe say, as numbers the estimate uses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError

if TYPE_CHECKING:
    pass

GiB = 2**30
CONTEXT_BYTES = 1 * GiB  # CUDA context + cuBLAS workspaces + NCCL buffers, per process
ALLOCATOR_SLACK = 0.05  # caching-allocator fragmentation at peak, as a share of the tensors
FUSED_TOKEN_CHUNK, FUSED_VOCAB_CHUNK = 4096, 32768  # trl.kernels.chunked_logprob's tile
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# Architectures whose parameter shapes are written out here; anything else is counted as one of them, with a note.
KNOWN_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma")
FLASH_LIKE = ("flash", "flex", "paged", "kernels-community", "/")  # no L^2 term, no repeated key-value heads


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
