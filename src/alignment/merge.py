"""Merge a LoRA/DoRA adapter into its base: one standalone model to evaluate, serve or push.

    alignment merge runs/tiny/sft-lora --output_dir runs/tiny/sft-merged
    python scripts/merge_lora.py data/zephyr-7b-sft-qlora --output_dir data/zephyr-7b-sft-qlora-merged

PEFT's `merge_and_unload` merges the weights, but a stage's output also holds the tokenizer (with the
chat template's tokens, so the embeddings grew) and the generation config (EOS = end of turn): the
base must be resized to that tokenizer before the adapter loads, and both files must travel with the
merged model. The model is merged in full precision (never into 4-bit weights) and written whole:
to `DIR.partial`, then renamed, so a crash never leaves half a model at `DIR`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "auto")


def merge_lora(
    adapter: str, output_dir: str, dtype: str = "auto", allow_pickle_weights: bool = False
) -> Path:
    """Merge the adapter folder `adapter` into its base; save model, tokenizer, generation config to `output_dir`."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    from alignment.model import adapter_base, merge_adapter

    base = check_merge(adapter, output_dir, dtype, allow_pickle_weights)
    logger.info(f"merging {adapter} into its base {base}")
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # the stage saved its tokenizer beside the adapter
    load_kwargs: dict[str, Any] = {
        "dtype": dtype if dtype == "auto" else getattr(torch, dtype),
        "use_safetensors": None if allow_pickle_weights else True,
    }
    model = merge_adapter(adapter, tokenizer, load_kwargs)
    if (Path(adapter) / "generation_config.json").is_file():
        suppressed = model.generation_config.suppress_tokens  # a merged soft prompt's tokens (soft_prompt.py)
        model.generation_config = GenerationConfig.from_pretrained(adapter)
        model.generation_config.suppress_tokens = suppressed
    final = Path(output_dir)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)  # safetensors
    tokenizer.save_pretrained(partial)
    (partial / "merged_from.json").write_text(
        json.dumps({"adapter": str(Path(adapter).resolve()), "base": adapter_base(adapter)}, indent=2) + "\n"
    )
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    logger.info(f"merged model written to {final}")
    return final


def check_merge(adapter: str, output_dir: str, dtype: str, allow_pickle_weights: bool) -> str:
    """The adapter's base, after every check that needs no weights; a RecipeError names what is wrong."""
    from alignment.data.sources import is_local
    from alignment.model import adapter_base
    from alignment.recipe_checks import pickle_only_weights

    folder = Path(adapter)
    if not folder.is_dir():
        raise RecipeError(f"adapter: no folder at {adapter}")
    base = adapter_base(adapter)
    if base is None:
        raise RecipeError(f"adapter: {adapter} has no adapter_config.json (a full model needs no merge)")
    from alignment.evaluation import is_prefix_tuning

    if is_prefix_tuning(folder):
        raise RecipeError(
            f"adapter: {adapter} is a prefix-tuning adapter, which cannot be merged (it learns keys and values at "
            "every layer); use it through PEFT: `alignment chat` and `alignment eval` load it as it is"
        )
    if dtype not in DTYPES:
        raise RecipeError(f"--dtype is {dtype!r}; choose one of {', '.join(DTYPES)}")
    if Path(output_dir).resolve() in (folder.resolve(), Path(base).resolve()):
        raise RecipeError(f"--output_dir {output_dir} is the adapter or base folder; give a new folder")
    if Path(output_dir).is_file():
        raise RecipeError(f"--output_dir {output_dir} is a file; give a folder")
    if not allow_pickle_weights and (pickle := pickle_only_weights(folder)):
        raise RecipeError(
            f"adapter: {adapter} has only pickle weights ({pickle}), which can run code when loaded; "
            "pass --allow_pickle_weights if you trust them"
        )
    if is_local(base) and not Path(base).expanduser().is_dir():
        raise RecipeError(f"adapter: its base {base} (base_model_name_or_path) is not there")
    return base


def add_merge_arguments(parser: Any) -> None:
    """The merge command's arguments, shared by `scripts/merge_lora.py` and `alignment merge`."""
    parser.add_argument("adapter", help="A LoRA/DoRA adapter folder (a PEFT stage's output_dir).")
    parser.add_argument("--output_dir", required=True, metavar="DIR", help="Where to write the merged model.")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="dtype to load the base in and save (default: the base's).",
    )
    parser.add_argument(
        "--allow_pickle_weights",
        action="store_true",
        help="Also read pickle weights (adapter_model.bin, pytorch_model.bin): a pickle can run code.",
    )


def run_merge(options: Any) -> Path:
    from alignment.logs import quiet_library_noise

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    quiet_library_noise()
    out = merge_lora(options.adapter, options.output_dir, options.dtype, options.allow_pickle_weights)
    print(f"merged {options.adapter} into its base: {out}")
    return out
