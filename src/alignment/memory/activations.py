"""Activations and logits per GPU: what autograd saves for backward in a decoder layer, and the loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from alignment.memory.shapes import (
    FLASH_LIKE,
    FUSED_TOKEN_CHUNK,
    FUSED_VOCAB_CHUNK,
    ModelShape,
    TrainingShape,
)
from alignment.memory.states import lora_targets

if TYPE_CHECKING:
    pass


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
