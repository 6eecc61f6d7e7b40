"""Run a pipeline recipe: its stages in order, each `scripts/run_<stage>.py` in its own process.

    python scripts/run_pipeline.py recipes/tiny/pipeline_sft_dpo.yaml
    python scripts/run_pipeline.py recipes/tiny/pipeline_sft_dpo.yaml --dry_run     # commands, run or skip
    python scripts/run_pipeline.py recipes/tiny/pipeline_sft_dpo.yaml --from dpo    # dpo and later, afresh

The same as `alignment run PIPELINE`. A finished stage whose resolved recipe and input model are unchanged
is skipped; a failing stage stops the pipeline (exit 1), naming the stage and its log.
"""

import argparse

from alignment.errors import RecipeError
from alignment.recipe import exit_on_recipe_error


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `error:` line and exit 2, like every other refusal here
        raise RecipeError(f"{self.prog}: {message}")


@exit_on_recipe_error
def main(argv: list[str] | None = None) -> None:
    from alignment.pipeline import add_pipeline_arguments, run_from_options

    parser = _Parser(prog="run_pipeline.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    add_pipeline_arguments(parser)
    raise SystemExit(run_from_options(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
