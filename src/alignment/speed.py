"""Fast defaults per hardware, chosen at launch for the keys a recipe leaves unset.

TRL's and transformers' defaults are written for a GPU, and some of its fast paths are slower elsewhere:
on a 2-core CPU packing ran slower per token than padded batches, while bf16 autocast (on CPUs with
native bf16) and no activation checkpointing won (benchmarks/train.py, `make bench`, results in
benchmarks/results/). So the choice is made here, from
what this machine has, and only for keys the recipe and the command line did not set: a value the user
wrote is never changed. Each choice is one note in the run's log, the plan of `alignment check` and the
model card.
"""

from __future__ import annotations

from typing import Any

from alignment.stages import data_stage


def _liger_installed() -> bool:
    from transformers.utils import is_liger_kernel_available

    return is_liger_kernel_available()


def apply_fast_defaults(
    values: dict[str, Any], stage: str, explicit: set[str], accelerator: bool | None = None
) -> list[str]:
    """Set the fastest correct value of each unset speed key for `stage` on this hardware; one note each.

    `values` are the TRL config's keyword arguments (changed in place), `explicit` the keys the recipe or
    the command line set. On a GPU: bfd packing for SFT when flash-attn runs (no padding computed; each
    sequence attends only to itself, so the loss is the padded batch's), and Liger's kernels when
    installed; activation checkpointing stays as TRL has it (memory is what a GPU is short of). On a
    CPU: no activation checkpointing (recomputation costs ~10% there and host memory is rarely the
    limit). bf16 on a CPU is decided with the other precision fallbacks (`recipe.device_fallbacks`).

    Length-grouped batches (`train_sampling_strategy: group_by_length`) are faster still (1.46x on
    long-tailed rows) but are not a default: they change what a batch holds, and where length tells
    tasks apart they change what is learned (the tiny SFT fell from 69.5% to 13% exact match, its
    batches turned single-skill). `with_pair_length_grouping` makes them work for DPO when asked for.
    """
    from alignment.hardware import flash_attention_usable, has_accelerator

    accelerator = has_accelerator() if accelerator is None else accelerator
    sft = data_stage(stage) == "sft"
    notes: list[str] = []

    def choose(key: str, value: Any, why: str) -> None:
        if key in explicit or values.get(key) == value:
            return
        values[key] = value
        notes.append(f"fast default: {key}: {value} ({why})")

    if accelerator:
        attention = str(values.get("attn_implementation") or "")
        flash = attention.startswith("flash_attention") and flash_attention_usable(attention)
        if sft and flash and not values.get("padding_free"):
            choose("packing", True, "bfd packing with flash-attn: no padding computed, sequences kept apart")
        if _liger_installed():
            choose("use_liger_kernel", True, "Liger kernels are installed: fused norms, MLP and LM-head loss")
    else:
        choose(
            "activation_checkpointing", False, "recomputing activations costs ~10% on a CPU; RAM is not short"
        )
    return notes


def with_pair_length_grouping(trainer_class: type) -> type:
    """`trainer_class` whose `train_sampling_strategy: group_by_length` also groups DPO's tokenised pairs.

    Gap filled: transformers' LengthGroupedSampler reads a row's length from `input_ids` (or a `length`
    column, which the Trainer removes before the sampler sees it), and TRL's DPOTrainer tokenises a pair
    into `prompt_ids`, `chosen_ids` and `rejected_ids`, so `group_by_length` fails on it. A pair's
    length here is what the collator pads it to: the prompt plus the longer answer. Other datasets
    and samplers go to the parent unchanged.
    """

    class LengthGroupedPairs(trainer_class):
        def _pair_lengths(self, dataset: Any) -> list[int] | None:
            columns = getattr(dataset, "column_names", None) or []
            if self.args.train_sampling_strategy != "group_by_length" or "chosen_ids" not in columns:
                return None
            return [
                len(prompt) + max(len(chosen), len(rejected))
                for prompt, chosen, rejected in zip(
                    dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
                )
            ]

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            lengths = self._pair_lengths(self.train_dataset if train_dataset is None else train_dataset)
            if lengths is None:
                return super()._get_train_sampler(train_dataset)
            from transformers.trainer_pt_utils import LengthGroupedSampler

            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=lengths)

        def _get_eval_sampler(self, eval_dataset: Any) -> Any:  # transformers groups evaluation batches too
            lengths = self._pair_lengths(eval_dataset) if eval_dataset is not None else None
            if lengths is None:
                return super()._get_eval_sampler(eval_dataset)
            import torch
            from transformers.trainer_pt_utils import LengthGroupedSampler

            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            generator = torch.Generator().manual_seed(seed)
            return LengthGroupedSampler(self.args.eval_batch_size, lengths=lengths, generator=generator)

    LengthGroupedPairs.__name__ = LengthGroupedPairs.__qualname__ = trainer_class.__name__
    return LengthGroupedPairs
