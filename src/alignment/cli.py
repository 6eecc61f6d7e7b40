"""The `alignment` command: a second door to the same scripts and library, as capable as the first.

    alignment sft RECIPE [--num_processes N] [--accelerate_config FILE] [--key value ...]
    alignment dpo RECIPE [--num_processes N] [--accelerate_config FILE] [--key value ...]
    alignment classify RECIPE [--key value ...]   # a text classifier (transformers' Trainer; TRL has none)
    alignment check RECIPE [--stage S] [--num_processes N] [--accelerate_config FILE] [--gpu_memory GIB] [--key value ...]
    alignment check FOLDER                       # every recipe under it, one line each
    alignment check RECIPE --smoke               # a few real steps on CPU: tiny model, first rows
    alignment data RECIPE [--stage S] --output_dir DIR [--key value ...]   # the rows it would train on
    alignment tiny build [DIR]
    alignment demo
    alignment merge ADAPTER --output_dir DIR     # a LoRA, IA3 or prompt-tuning adapter merged into its base
    alignment rerun OUTPUT_DIR/run_manifest.json [--key value ...]   # repeat a run, its recipe as recorded
    alignment run PIPELINE.yaml [--from STAGE | --only STAGE] [--dry_run]   # stages in order, one process each
    alignment eval MODEL_DIR [--prompts F] [--pairs F] [--questions F --judge_url URL ...]   # held-out scores
    alignment chat MODEL_DIR [--system_prompt TEXT]   # multi-turn chat in the terminal, streamed
    alignment arena MODEL_A MODEL_B [...] --output votes.jsonl   # people vote on two anonymous answers
    alignment arena --leaderboard votes.jsonl    # win rates and Elo ratings
    alignment serve MODEL_DIR [--port 8000] [--api_key K]   # an OpenAI-compatible API (vLLM or transformers)

`alignment sft R --accelerate_config F` is `accelerate launch --config_file F scripts/run_sft.py R`.
Every subcommand has `--help`; recipe keys pass through as `--key value`.
"""

from __future__ import annotations

import argparse
import sys

from alignment.errors import RecipeError
from alignment.recipe import DATA_STAGES, STAGES, exit_on_recipe_error

LAUNCH_HELP = {
    "num_processes": "Processes to launch (GPUs; on a CPU machine, DDP over gloo). Overrides the config file's.",
    "accelerate_config": "An accelerate config file (e.g. accelerate_configs/zero3.yaml): processes, "
    "mixed precision, DeepSpeed ZeRO or FSDP. Its mixed_precision must agree with the recipe's bf16/fp16.",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `error:` line and exit 2, like every other refusal here
        raise RecipeError(f"{self.prog}: {message}")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _add_launch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipe",
        help="Recipe YAML (recipes/<model>/<stage>/config_*.yaml); for check, also a folder of them.",
    )
    parser.add_argument("--num_processes", type=_positive, help=LAUNCH_HELP["num_processes"])
    parser.add_argument("--accelerate_config", metavar="FILE", help=LAUNCH_HELP["accelerate_config"])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="alignment",
        description="Post-training recipes on TRL: train a stage, check a recipe, run the embedded demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Recipe keys: any field of TRL's stage config, ModelConfig or RecipeArguments, as --key value.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for stage in STAGES:
        stage_parser = sub.add_parser(
            stage,
            help=f"Train the {stage.upper()} stage of a recipe (scripts/run_{stage}.py).",
            description=f"Run scripts/run_{stage}.py on RECIPE, through `accelerate launch` when "
            "--num_processes or --accelerate_config is given. Other --key value pairs override recipe keys.",
            allow_abbrev=False,
        )
        _add_launch_options(stage_parser)
    check = sub.add_parser(
        "check",
        help="Validate a recipe (and the first rows of its local data) and print its plan as YAML, on the "
        "launch it is meant for. Loads no model.",
        description="Dry run: the resolved recipe, global batch size and precision on the target launch "
        "(--num_processes / --accelerate_config); what this machine would change is listed apart.",
        allow_abbrev=False,
    )
    _add_launch_options(check)
    check.add_argument("--stage", choices=STAGES, help="The stage, if the recipe's folder does not say it.")
    from alignment.memory import gpu_memory_gib

    check.add_argument(
        "--gpu_memory",
        type=gpu_memory_gib,
        metavar="GIB",
        help="Memory of one GPU in GiB (e.g. 80): say whether the estimated peak per GPU fits, and if not, the "
        "nearest changes that would (each re-estimated). Without it the plan shows the estimate only.",
    )
    check.add_argument(
        "--smoke",
        action="store_true",
        help="Also run the recipe's stage script for a few steps on CPU, with a tiny random model of the "
        "same family and the first rows of each source (or rows generated in its format): catches what a "
        "dry run cannot (a loss that needs a missing column, a template that breaks on the rows).",
    )
    check.add_argument("--keep", action="store_true", help="With --smoke: keep the smoke run's folder.")
    data = sub.add_parser(
        "data",
        help="Build a recipe's data without training: canonical rows, data_report.json, examples.",
        description="Read, convert, validate and curate the recipe's mixture; write DIR/train.jsonl "
        "(and test.jsonl) and DIR/data_report.json; print the report and three examples rendered with the "
        "chat template, the trained-on text marked. Other --key value pairs override recipe keys.",
        allow_abbrev=False,
    )
    data.add_argument("recipe", help="Recipe YAML.")
    data.add_argument(
        "--stage",
        choices=DATA_STAGES,
        help="The stage whose rows to build, if the recipe's folder does not say it.",
    )
    data.add_argument(
        "--output_dir", required=True, metavar="DIR", help="Where to write the rows and report."
    )
    tiny = sub.add_parser("tiny", help="The embedded tiny model and task.", allow_abbrev=False)
    tiny_sub = tiny.add_subparsers(dest="tiny_command", metavar="ACTION", parser_class=_Parser, required=True)
    build = tiny_sub.add_parser(
        "build", help="Write the tiny model, tokenizer and task data.", allow_abbrev=False
    )
    build.add_argument("dir", nargs="?", help="Where to write (default: data/tiny).")
    sub.add_parser(
        "demo",
        help="Build the tiny task, run recipes/tiny/pipeline.yaml (CPT, SFT, RM, DPO, GRPO, RLOO), print "
        "held-out numbers per stage (CPU, 4.5-5.5 min).",
    )
    merge = sub.add_parser(
        "merge",
        help="Merge a LoRA/DoRA adapter into its base (scripts/merge_lora.py): a standalone model.",
        description="Load the adapter's base (resized to the adapter's tokenizer), merge the adapter, and save "
        "safetensors with the tokenizer and generation config to --output_dir, written whole.",
        allow_abbrev=False,
    )
    from alignment.merge import add_merge_arguments

    add_merge_arguments(merge)
    evaluate = sub.add_parser(
        "eval",
        help="Evaluate a model folder on held-out data (loss and perplexity, preference accuracy, exact "
        "match): MODEL_DIR/eval/results.json, results.md and the model card.",
        description="Read and check every input, then load the model (an adapter is merged into its base) "
        "and score it; a reward model scores --pairs. scripts/run_eval.py is the same command.",
        allow_abbrev=False,
    )
    from alignment.eval_command import add_eval_arguments

    add_eval_arguments(evaluate)
    chatting = sub.add_parser(
        "chat",
        help="Chat with a model folder in the terminal: streamed replies, tokens per second, /reset, /exit.",
        description="Multi-turn chat in the terminal through the model's own chat template; an adapter "
        "folder is merged into its base. Commands: /reset starts over (the system prompt stays), /exit or "
        "Ctrl-D quits.",
        allow_abbrev=False,
    )
    from alignment.chat import add_chat_arguments

    add_chat_arguments(chatting)
    arena = sub.add_parser(
        "arena",
        help="Compare models side by side in the browser and vote: votes.jsonl is preference data "
        "(--leaderboard: win rates and Elo).",
        description="A local Gradio page: a prompt, two anonymous answers from two of the models, a vote "
        "(A, B, tie, both bad), then the reveal. Each vote is appended to --output in the canonical "
        "prompt/chosen/rejected shape, usable as a dpo or rm source (ties are counted and left out).",
        allow_abbrev=False,
    )
    from alignment.arena import add_arena_arguments

    add_arena_arguments(arena)
    served = sub.add_parser(
        "serve",
        help="Serve a model folder as an OpenAI-compatible API: /v1/chat/completions (streaming or not), "
        "/v1/models.",
        description="vLLM's OpenAI server where vLLM is installed and a CUDA GPU is present, else transformers' "
        "(`transformers[serving]`: pip install -e '.[serve]'). The model's own chat template and end-of-turn "
        "token; an adapter folder is merged into its base first.",
        allow_abbrev=False,
    )
    served.add_argument("model_dir", help="A model folder (an adapter is merged into its base).")
    served.add_argument(
        "--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1: this machine only)."
    )
    served.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    served.add_argument(
        "--api_key", help="Require `Authorization: Bearer KEY` on every request (but /health)."
    )
    served.add_argument(
        "--name", help="The model's name in requests and /v1/models (default: MODEL_DIR as given)."
    )
    served.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers"),
                        help="auto (default): vllm with vLLM and a CUDA GPU, else transformers.")  # fmt: skip
    rerun = sub.add_parser(
        "rerun",
        help="Repeat a run from its run_manifest.json: the recorded recipe, overrides and launch.",
        description="Run the recorded stage on the recipe as it was read (a later edit of the file changes "
        "nothing), with the recorded overrides, then yours, on the recorded number of processes; warns "
        "about each git commit or package version that differs. OUTPUT_DIR holds the finished run, so "
        "without `--output_dir DIR` the rerun says `nothing to train`: pass e.g. `--output_dir runs/again`.",
        allow_abbrev=False,
    )
    rerun.add_argument("manifest", help="OUTPUT_DIR/run_manifest.json of the run to repeat.")
    rerun.add_argument(
        "--num_processes", type=_positive, help="Processes to launch (default: the recorded world size)."
    )
    rerun.add_argument("--accelerate_config", metavar="FILE", help=LAUNCH_HELP["accelerate_config"])
    pipeline = sub.add_parser(
        "run",
        help="Run a pipeline: its stages in order, each in its own process, the output of one the model of "
        "the next; a finished, unchanged stage is skipped.",
        description="Run each stage of PIPELINE (scripts/run_<stage>.py, through `accelerate launch` when the "
        "pipeline names a config or process count); logs in its log_dir. A stage is skipped when its "
        "output_dir holds a finished run of the same resolved recipe and input model.",
        allow_abbrev=False,
    )
    from alignment.pipeline import add_pipeline_arguments

    add_pipeline_arguments(pipeline)
    return parser


def run_check(options: argparse.Namespace, overrides: list[str]) -> None:
    from pathlib import Path

    from alignment.check import check_folder, infer_stage, print_plan
    from alignment.recipe import parse_recipe
    from alignment.target import checked_target

    if Path(options.recipe).is_dir():
        if options.smoke:
            raise RecipeError("alignment check --smoke: give one recipe file, not a folder")
        failed = check_folder(options.recipe, overrides)
        raise SystemExit(1 if failed else 0)
    from alignment.pipeline import describe_pipeline, is_pipeline_file

    # a pipeline file, as `check FOLDER` reports one (its stages, references, files); `run --dry_run` shows more
    if is_pipeline_file(options.recipe):
        print(f"ok     {options.recipe}  ({describe_pipeline(options.recipe)})")
        return
    # parsed as a dry run: a tracker or GPU missing on this machine is a note (the smoke run reports to none)
    stage = options.stage or infer_stage(options.recipe)
    recipe = parse_recipe(stage, [options.recipe, *overrides, "--dry_run"])
    if options.smoke:
        from alignment.smoke import smoke_run

        raise SystemExit(smoke_run(recipe, overrides, keep=options.keep))
    target = None
    if options.accelerate_config:
        target = checked_target(
            recipe.precision, recipe.path, options.accelerate_config, options.num_processes
        )
    print_plan(recipe, options.num_processes, target, options.gpu_memory)


def run_training(options: argparse.Namespace, overrides: list[str]) -> int:
    from alignment.launch import run_stage

    if options.accelerate_config:  # refuse a precision mismatch before launching anything
        from alignment.recipe import parse_recipe
        from alignment.target import checked_target

        recipe = parse_recipe(options.command, [options.recipe, *overrides])
        checked_target(recipe.precision, recipe.path, options.accelerate_config)
    done = run_stage(
        options.command,
        options.recipe,
        overrides,
        accelerate_config=options.accelerate_config,
        num_processes=options.num_processes,
    )
    return done.returncode


@exit_on_recipe_error
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return
    options, overrides = parser.parse_known_args(argv)
    if options.command not in (*STAGES, "check", "data", "rerun") and overrides:
        raise RecipeError(f"alignment {options.command}: unrecognized arguments: {' '.join(overrides)}")
    if options.command in STAGES:
        raise SystemExit(run_training(options, overrides))
    if options.command == "check":
        run_check(options, overrides)
    elif options.command == "data":
        from alignment.check import infer_stage
        from alignment.data.preview import run_data_command

        stage = options.stage or infer_stage(options.recipe, DATA_STAGES)
        run_data_command(stage, [options.recipe, *overrides], options.output_dir)
    elif options.command == "tiny":
        from alignment.tiny.build import DEFAULT_DIR, build_tiny

        print(f"tiny model and task written to {build_tiny(options.dir or DEFAULT_DIR)}")
    elif options.command == "merge":
        from alignment.merge import run_merge

        run_merge(options)
    elif options.command == "eval":
        from alignment.eval_command import run_eval_command

        run_eval_command(options)
    elif options.command == "chat":
        from alignment.chat import run_chat_command

        run_chat_command(options)
    elif options.command == "arena":
        from alignment.arena import run_arena

        run_arena(options)
    elif options.command == "serve":
        import logging

        from alignment.serve import serve

        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        serve(options.model_dir, options.host, options.port, options.api_key, options.name, options.backend)
    elif options.command == "rerun":
        from alignment.manifest import rerun

        raise SystemExit(rerun(options.manifest, overrides, options.accelerate_config, options.num_processes))
    elif options.command == "run":
        from alignment.pipeline import run_from_options

        raise SystemExit(run_from_options(options))
    elif options.command == "demo":
        from alignment.tiny.demo import run_demo

        run_demo()


if __name__ == "__main__":
    main()
