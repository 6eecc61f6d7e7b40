"""The `alignment` command: a second door to the same scripts and library.

alignment sft RECIPE [--key value ...]      # = python scripts/run_sft.py RECIPE ...
alignment dpo RECIPE [--key value ...]
alignment check RECIPE [--stage S] [--num_processes N] [--key value ...]   # dry run
alignment tiny build [DIR]                   # the embedded model and task
alignment demo                               # build, SFT, DPO, held-out numbers
"""

from __future__ import annotations

import sys

from alignment.errors import RecipeError
from alignment.recipe import STAGES, exit_on_recipe_error

USAGE = __doc__.split("\n\n", 1)[1]


def _pop_option(argv: list[str], name: str) -> str | None:
    if name in argv:
        i = argv.index(name)
        if i + 1 >= len(argv):
            raise RecipeError(f"`{name}` needs a value")
        value = argv[i + 1]
        del argv[i : i + 2]
        return value
    return None


def check(argv: list[str]) -> None:
    from alignment.check import infer_stage, print_plan
    from alignment.recipe import parse_recipe, split_recipe_path

    argv = list(argv)
    stage = _pop_option(argv, "--stage")
    processes = _pop_option(argv, "--num_processes")
    path, _ = split_recipe_path(argv)
    if path is None:
        raise RecipeError(
            "usage: alignment check RECIPE [--stage STAGE] [--num_processes N] [--key value ...]"
        )
    if processes is not None and not processes.isdigit():
        raise RecipeError(f"`--num_processes` must be a positive integer, got {processes!r}")
    print_plan(parse_recipe(stage or infer_stage(path), argv), int(processes) if processes else None)


@exit_on_recipe_error
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        from alignment.launch import run_stage

        if not rest:
            raise RecipeError(f"usage: alignment {command} RECIPE [--key value ...]")
        raise SystemExit(run_stage(command, rest[0], rest[1:]).returncode)
    if command == "check":
        check(rest)
    elif command == "tiny" and rest[:1] == ["build"]:
        from alignment.tiny.build import DEFAULT_DIR, build_tiny

        print(f"tiny model and task written to {build_tiny(rest[1] if len(rest) > 1 else DEFAULT_DIR)}")
    elif command == "demo":
        from alignment.tiny.demo import run_demo

        run_demo()
    else:
        raise RecipeError(f"unknown command {command!r}\n{USAGE}")


if __name__ == "__main__":
    main()
