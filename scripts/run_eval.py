"""Evaluate a model folder on held-out data: loss and perplexity, preference accuracy, exact match.

    python scripts/run_eval.py runs/tiny/sft --dataset data/tiny/sft --pairs data/tiny/dpo --prompts data/tiny/eval.jsonl
    alignment eval runs/tiny/dpo --pairs data/tiny/dpo --reference runs/tiny/sft      # the same command

Writes MODEL_DIR/eval/results.json and results.md, and the table into the model card.
"""

import argparse

from alignment.recipe import exit_on_recipe_error


@exit_on_recipe_error
def main(argv: list[str] | None = None) -> None:
    from alignment.eval_command import add_eval_arguments, run_eval_command

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_eval_arguments(parser)
    run_eval_command(parser.parse_args(argv))


if __name__ == "__main__":
    main()
