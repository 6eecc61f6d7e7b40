"""`alignment eval MODEL_DIR`: score any checkpoint, merged model or adapter folder on held-out data.

    alignment eval runs/tiny/sft --dataset data/tiny/sft --pairs data/tiny/dpo --prompts data/tiny/eval.jsonl
    python scripts/run_eval.py runs/tiny/dpo --pairs data/tiny/dpo --reference runs/tiny/sft

Tasks (each runs when its input is given, or as `--tasks` lists them):
- `loss`: held-out loss and perplexity on `--dataset` (plain text: every token; conversations: the
  assistant turns), read through the data layer, so any format a recipe takes works here.
- `preference`: the share of `--pairs` ranked right: by log-probability, by DPO's implicit reward
  against `--reference`, or by the score of a reward model (MODEL_DIR with a classification head).
- `exact_match`: greedy answers to `--prompts` (rows with a prompt and its `answer`) equal to the answer.

Writes MODEL_DIR/eval/results.json and results.md, and puts the table in the model card (README.md),
replacing the previous evaluation's. All inputs are read and checked before the model loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

TASKS = ("loss", "preference", "exact_match")
TASK_INPUT = {"loss": "--dataset", "preference": "--pairs", "exact_match": "--prompts"}


@dataclass
class EvalRequest:
    """What to evaluate: the model folder, the tasks, and each task's held-out data (a source as a recipe
    names one: a local file or folder, a saved dataset, or a Hub id, and its split)."""

    model_dir: str
    tasks: list[str] = field(default_factory=list)  # empty: every task whose input is given
    dataset: str | None = None
    dataset_split: str | None = None  # default: "train" for a single file, else "test"
    pairs: str | None = None
    pairs_split: str | None = None
    prompts: str | None = None
    prompts_split: str | None = None
    reference: str | None = None
    max_rows: int | None = None  # the first N rows of each input
    batch_size: int = 64
    card: bool = True


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval command's arguments, shared by `scripts/run_eval.py` and `alignment eval`."""
    parser.add_argument(
        "model_dir", help="A stage's output_dir, a merged model, an adapter or a reward model."
    )
    parser.add_argument(
        "--tasks", help=f"Comma-separated, from {', '.join(TASKS)} (default: those given input)."
    )
    parser.add_argument(
        "--dataset", help="Held-out text or conversations for `loss` (file, folder or Hub id)."
    )
    parser.add_argument("--dataset_split", help="Its split (default: train for a single file, else test).")
    parser.add_argument("--pairs", help="Held-out preference pairs for `preference`.")
    parser.add_argument("--pairs_split", help="Their split (default as --dataset_split).")
    parser.add_argument("--prompts", help="Held-out prompts with an `answer` for `exact_match`.")
    parser.add_argument("--prompts_split", help="Their split (default as --dataset_split).")
    parser.add_argument("--reference", help="With --pairs: rank by DPO's implicit reward against this model.")
    parser.add_argument("--max_rows", type=int, help="Evaluate the first N rows of each input.")
    parser.add_argument("--batch_size", type=int, default=64, help="Sequences per forward pass (default 64).")
    parser.add_argument("--no_card", action="store_true", help="Leave the model card (README.md) alone.")


def request_from(options: argparse.Namespace) -> EvalRequest:
    """The request from `add_eval_arguments`' options: the same names, but for `--tasks` (a comma list) and
    `--no_card`."""
    named = {f.name: getattr(options, f.name) for f in fields(EvalRequest) if f.name not in ("tasks", "card")}
    tasks = [t.strip() for t in options.tasks.split(",") if t.strip()] if options.tasks else []
    return EvalRequest(**named, tasks=tasks, card=not options.no_card)


def model_kind(model_dir: str | Path) -> str:
    """ "adapter" (a PEFT folder), "reward" (a sequence-classification head) or "causal"; a RecipeError when
    the folder holds no model."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise RecipeError(f"model folder {model_dir} not found")
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    config = folder / "config.json"
    if not config.is_file():
        raise RecipeError(f"{model_dir} holds no model (no config.json or adapter_config.json)")
    architectures = json.loads(config.read_text()).get("architectures") or []
    return "reward" if any(a.endswith("ForSequenceClassification") for a in architectures) else "causal"


def check_request(request: EvalRequest) -> dict[str, Any]:
    """Validate the request and read every input, before any model loads; return the rows per task."""
    kind = model_kind(request.model_dir)
    for task in request.tasks:
        if task not in TASKS:
            raise RecipeError(f"--tasks: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    given = {"loss": request.dataset, "preference": request.pairs, "exact_match": request.prompts}
    tasks = request.tasks or [task for task in TASKS if given[task]]
    if not tasks:
        raise RecipeError(
            "nothing to evaluate: give --dataset (loss), --pairs (preference) or --prompts (exact_match)"
        )
    for task in tasks:
        if not given[task]:
            raise RecipeError(f"task {task} needs {TASK_INPUT[task]}")
    if kind == "reward" and set(tasks) - {"preference"}:
        raise RecipeError(
            f"{request.model_dir} is a reward model: it scores --pairs (preference) and generates nothing"
        )
    if request.reference is not None:
        if "preference" not in tasks:
            raise RecipeError("--reference is for the preference task: give --pairs too")
        if kind == "reward" or model_kind(request.reference) == "reward":
            raise RecipeError(
                "--reference: DPO's implicit reward needs two language models, not a reward model"
            )
    if request.max_rows is not None and request.max_rows < 1:
        raise RecipeError(f"--max_rows is {request.max_rows}; it must be at least 1")
    if request.batch_size < 1:
        raise RecipeError(f"--batch_size is {request.batch_size}; it must be at least 1")
    rows: dict[str, Any] = {"kind": kind}
    if "loss" in tasks:
        rows["loss"] = _read_loss_rows(request.dataset, request.dataset_split, request.max_rows)
    if "preference" in tasks:
        rows["preference"] = read_rows(
            request.pairs, request.pairs_split or request.dataset_split, "dpo", request.max_rows
        )
    if "exact_match" in tasks:
        rows["exact_match"] = read_prompts(
            request.prompts, request.prompts_split or request.dataset_split, request.max_rows, "--prompts"
        )
    return rows


def read_prompts(source: str, split: str | None, max_rows: int | None, option: str) -> list[dict]:
    """Prompts with an `answer` each, for exact match; `option` (the flag or recipe key) names them in errors."""
    prompts = read_rows(source, split, "prompt", max_rows)
    missing = next((i for i, row in enumerate(prompts) if not row.get("answer")), None)
    if missing is not None:
        raise RecipeError(
            f"{option} {source}: row {missing} has no `answer`; exact match needs one in every row"
        )
    return prompts


def read_rows(source: str, split: str | None, stage: str, max_rows: int | None) -> list[dict]:
    """Canonical rows of one source, through the data layer (any format a recipe takes; no dedup: every
    held-out row counts)."""
    from alignment.data.mixture import MixtureConfig, load_mixture

    split = split or ("train" if Path(source).is_file() else "test")
    mixture = MixtureConfig.from_dict(
        {"datasets": [{"id": source, "split": split}], "dedup": "none"}, origin=source
    )
    data = load_mixture(mixture, stage)["train"]
    if max_rows is not None and max_rows < len(data):
        logger.info(f"{source} [{split}]: evaluating the first {max_rows} of {len(data)} rows (--max_rows)")
        data = data.select(range(max_rows))
    return [dict(row) for row in data]


def _read_loss_rows(source: str, split: str | None, max_rows: int | None) -> dict[str, Any]:
    """Plain text if the source reads as text, else conversations (its assistant turns are scored)."""
    try:
        return {"text": [row["text"] for row in read_rows(source, split, "cpt", max_rows)]}
    except RecipeError as as_text:
        try:
            return {"conversations": [row["messages"] for row in read_rows(source, split, "sft", max_rows)]}
        except RecipeError:
            raise as_text from None


def run_eval(request: EvalRequest) -> dict[str, Any]:
    """Evaluate, write MODEL_DIR/eval/results.json and results.md, and update the card; return the results."""
    from alignment import evaluation
    from alignment.eval_report import write_results

    rows = check_request(request)
    results: dict[str, Any] = {"model": str(request.model_dir), "tasks": {}}
    if rows["kind"] == "reward":
        start = time.time()
        accuracy = evaluation.reward_accuracy(request.model_dir, rows["preference"])
        how = "reward model score"
        results["tasks"]["preference"] = _preference_result(
            request, how, accuracy, len(rows["preference"]), start
        )
        return write_results(request, results)

    start = time.time()
    model, tokenizer = evaluation.load_for_eval(request.model_dir)
    results["load_seconds"] = round(time.time() - start, 2)
    if "loss" in rows:
        start = time.time()
        data = rows["loss"]
        if "text" in data:
            numbers = evaluation.text_loss(model, tokenizer, data["text"], request.batch_size)
        else:
            numbers = evaluation.conversation_loss(
                model, tokenizer, data["conversations"], request.batch_size
            )
        scored = "every token of the text" if "text" in data else "the assistant turns"
        rows_read = len(next(iter(data.values())))
        results["tasks"]["loss"] = {
            "source": request.dataset, "scored": scored, "rows": rows_read, **numbers, "seconds": _since(start)
        }  # fmt: skip
    if "preference" in rows:
        start = time.time()
        reference = evaluation.load_for_eval(request.reference)[0] if request.reference else None
        pairs = rows["preference"]
        wins = evaluation.preference_wins(model, tokenizer, pairs, reference, request.batch_size)
        accuracy = evaluation.share_by_skill(pairs, wins)
        how = (
            "DPO implicit reward against the reference"
            if reference is not None
            else "log p(chosen) > log p(rejected)"
        )
        results["tasks"]["preference"] = _preference_result(request, how, accuracy, len(pairs), start)
    if "exact_match" in rows:
        start = time.time()
        prompts = rows["exact_match"]
        shares = evaluation.exact_match(model, tokenizer, prompts)
        results["tasks"]["exact_match"] = {
            "source": request.prompts, "rows": len(prompts), **shares, "seconds": _since(start)
        }  # fmt: skip
    return write_results(request, results)


def _preference_result(
    request: EvalRequest, how: str, accuracy: dict[str, float], rows: int, start: float
) -> dict[str, Any]:
    return {"source": request.pairs, "ranked_by": how, "rows": rows, **accuracy, "seconds": _since(start)}


def _since(start: float) -> float:
    return round(time.time() - start, 2)


def run_eval_command(options: argparse.Namespace) -> dict[str, Any]:
    """`alignment eval` and scripts/run_eval.py: evaluate, print the table and where it was written."""
    from alignment.eval_report import markdown_table
    from alignment.logs import quiet_library_noise

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    quiet_library_noise()
    results = run_eval(request_from(options))
    print(markdown_table(results))
    print(f"\nresults in {Path(options.model_dir) / 'eval' / 'results.json'}")
    return results
