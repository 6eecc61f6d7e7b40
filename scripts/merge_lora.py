"""Merge a LoRA/DoRA adapter (a PEFT stage's output) into its base: safetensors, tokenizer, generation config.

    python scripts/merge_lora.py runs/tiny/sft-lora --output_dir runs/tiny/sft-merged
    alignment merge runs/tiny/sft-lora --output_dir runs/tiny/sft-merged      # the same

The merged folder is a plain model: evaluate it, serve it, or give it as the next stage's model.
"""

import argparse

from alignment.recipe import exit_on_recipe_error


@exit_on_recipe_error
def main(argv: list[str] | None = None) -> None:
    from alignment.merge import add_merge_arguments, run_merge

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_merge_arguments(parser)
    run_merge(parser.parse_args(argv))


if __name__ == "__main__":
    main()
