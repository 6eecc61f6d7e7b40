"""The memory estimate (src/alignment/memory/) against published peak GPU memory of real runs.

    python benchmarks/memory_published.py

The figures are ms-swift's single-A100 measurements for Qwen (v1): batch 1, gradient checkpointing,
flash-attn, bf16 weights, one GPU, no DeepSpeed, the HF model's own loss over the full logits. Qwen v1's
shapes are written here as qwen2-style config.json dicts (no download): Qwen's config gives the MLP's
intermediate size as 2x the width of each of its two branches, so 5504 and 11008 here. Prints a table
(case, published GiB, estimate GiB, ratio) and writes it, with each estimate's breakdown, to
benchmarks/results/memory-published.json. A last column re-estimates each case with activation checkpointing
off: the published 7B figures sit near it, which suggests checkpointing was not in effect in those runs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from alignment.memory import TrainingShape, estimate, model_shape  # noqa: E402
from alignment.target import LaunchTarget  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QWEN_1_8B = {"model_type": "qwen2", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 16, "intermediate_size": 5504, "vocab_size": 151936, "tie_word_embeddings": False}  # fmt: skip
QWEN_7B = {"model_type": "qwen2", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 151936, "tie_word_embeddings": False}  # fmt: skip
# ms-swift's defaults of the time: LoRA on the attention's fused qkv projection (c_attn), dropout 0.05,
# double-quantised NF4 for QLoRA.
SWIFT = dict(batch_size=1, weight_dtype="bfloat16", precision="bf16", activation_checkpointing=True,
             attn_implementation="flash_attention_2", optimizer="adamw_torch", logits="full")  # fmt: skip
LORA = dict(lora_r=8, lora_targets=("q_proj", "k_proj", "v_proj"), lora_dropout=0.05, nested_quant=True)
CASES = [
    ("qwen-1.8b full, length 512", QWEN_1_8B, dict(max_length=512), 18.2),
    ("qwen-1.8b full, length 2048", QWEN_1_8B, dict(max_length=2048), 35.1),
    ("qwen-7b lora r8, length 2048", QWEN_7B, dict(max_length=2048, peft="lora", **LORA), 27.7),
    ("qwen-7b qlora 4-bit r8, length 2048", QWEN_7B, dict(max_length=2048, peft="qlora-4bit", **LORA), 23.9),
]


def main() -> None:
    rows = []
    one_gpu = LaunchTarget(processes=1)
    for name, config, shape_args, published in CASES:
        shape, training = model_shape(config), TrainingShape(**SWIFT, **shape_args)
        result = estimate(shape, training, one_gpu)
        unchecked = estimate(shape, dataclasses.replace(training, activation_checkpointing=False), one_gpu)
        rows.append({"case": name, "published_gib": published, "estimate_gib": round(result.total_gib, 1),
                     "ratio": round(result.total_gib / published, 2), "breakdown_gib": result.breakdown(),
                     "estimate_without_checkpointing_gib": round(unchecked.total_gib, 1)})  # fmt: skip
    print(f"{'case':38} {'published':>9} {'estimate':>8} {'ratio':>5}  {'no checkpointing':>16}")
    for row in rows:
        print(
            f"{row['case']:38} {row['published_gib']:9.1f} {row['estimate_gib']:8.1f} {row['ratio']:5.2f}  "
            f"{row['estimate_without_checkpointing_gib']:16.1f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "memory-published.json"
    out.write_text(json.dumps({"source": "ms-swift, Qwen (v1) on one A100 80GB: batch 1, gradient checkpointing, "
                               "flash-attn, bf16", "cases": rows}, indent=2) + "\n")  # fmt: skip
    print(f"written to {out}")


if __name__ == "__main__":
    main()
