"""`trainable_layers: N`: train only the last N transformer blocks of a full model, and count what trains.

transformers and PEFT have no "last N layers" switch for full fine-tuning (PEFT's `layers_to_transform`
places adapters, it trains no layer itself). Here every parameter is frozen, then the last N blocks,
the final norm (it reads the last block's output) and any head the stage adds new (a reward or
classification `score`) are trained. A language model's `lm_head` stays frozen: it is pretrained, and
on small models it is tied to the input embeddings, which would then train too.
"""

from __future__ import annotations

import logging
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

NEW_HEADS = ("score", "classifier")  # heads AutoModelForSequenceClassification adds untrained
BLOCK_LISTS = ("layers", "h", "blocks")  # what transformers' model families call their list of blocks


def transformer_blocks(model: Any) -> Any:
    """The model's list of transformer blocks: the ModuleList as long as `config.num_hidden_layers`."""
    import torch

    layers = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module) == layers
            and name.rsplit(".", 1)[-1] in BLOCK_LISTS
        ):
            return name, module
    raise RecipeError(
        f"`trainable_layers`: found no list of {layers} transformer blocks in {type(model).__name__}"
    )


def freeze_all_but_last_layers(model: Any, layers: int) -> tuple[int, int]:
    """Freeze `model` except its last `layers` blocks, its final norm and a new head; return (trainable, total)."""
    name, blocks = transformer_blocks(model)
    if layers > len(blocks):
        raise RecipeError(
            f"`trainable_layers` is {layers} but the model has {len(blocks)} transformer blocks"
        )
    model.requires_grad_(False)
    for block in blocks[len(blocks) - layers :]:
        block.requires_grad_(True)
    stem = name.rsplit(".", 1)[0] if "." in name else ""
    for module_name, module in model.named_modules():
        short = module_name.rsplit(".", 1)[-1]
        final_norm = module_name.rsplit(".", 1)[0] == stem and "norm" in short and stem
        if final_norm or short in NEW_HEADS:
            module.requires_grad_(True)
    trainable, total = parameter_counts(model)
    logger.info(
        f"trainable_layers {layers}: training the last {layers} of {len(blocks)} blocks, the final norm and any "
        f"new head; {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"
    )
    return trainable, total


def parameter_counts(model: Any) -> tuple[int, int]:
    """Trainable and total parameters; a PEFT model as PEFT counts them, ZeRO-3 shards at full size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = total = 0
    for parameter in model.parameters():
        size = getattr(parameter, "ds_numel", None) or parameter.numel()  # ZeRO-3 leaves a 0-sized shard
        total += size
        trainable += size if parameter.requires_grad else 0
    return trainable, total
