"""`alignment eval MODEL_DIR`: score any checkpoint, merged model or adapter folder on held-out data.

    alignment eval runs/tiny/sft --dataset data/tiny/sft --pairs data/tiny/dpo --prompts data/tiny/eval.jsonl
    python scripts/run_eval.py runs/tiny/dpo --pairs data/tiny/dpo --reference runs/tiny/sft

Tasks (each runs when its input is given, or as `--tasks` lists them):
- `loss`: held-out loss and perplexity on `--dataset` (plain text: every token; conversations: the
  assistant turns), read through the data layer, so any format a recipe takes works here.
- `preference`: the share of `--pairs` ranked right: by log-probability, by DPO's implicit reward
  against `--reference`, or by the score of a reward model (MODEL_DIR with a classification head).
- `exact_match`: greedy answers to `--prompts` (rows with a prompt and its `answer`) equal to the answer.
- `classification`: a text classifier (the classify stage's output) on `--dataset` rows of `text` and
  `label`: accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix.

Writes MODEL_DIR/eval/results.json and results.md, and puts the table in the model card (README.md),
replacing the previous evaluation's. All inputs are read and checked before the model loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

TASKS = ("loss", "preference", "exact_match", "judge", "judge_pairwise", "harness", "classification")
TASK_INPUT = {"loss": "--dataset", "preference": "--pairs", "exact_match": "--prompts", "classification": "--dataset",
              "judge": "--questions and --judge_url", "judge_pairwise": "--questions, --judge_url and --baseline", "harness": "--harness"}  # fmt: skip


# Options that only a task uses, and what runs it: set without it, they would be ignored, so they are refused.
UNUSED_WITHOUT = {
    "judge_model": (("judge", "judge_pairwise"), "--questions and --judge_url"),
    "judge_api_key_env": (("judge", "judge_pairwise"), "--questions and --judge_url"),
    "judge_max_tokens": (("judge", "judge_pairwise"), "--questions and --judge_url"),
    "num_fewshot": (("harness",), "--harness TASKS"),
    "max_gen_toks": (("harness",), "--harness TASKS"),
    "pairs_split": (("preference",), "--pairs"),
    "prompts_split": (("exact_match",), "--prompts"),
    "column_names": (("loss", "classification"), "--dataset"),
}


@dataclass
class EvalRequest:
    """What to evaluate: the model folder, the tasks, and each task's held-out data (a source as a recipe
    names one: a local file or folder, a saved dataset, or a Hub id, and its split)."""

    model_dir: str
    tasks: list[str] = field(default_factory=list)  # empty: every task whose input is given
    dataset: str | None = None
    dataset_split: str | None = None  # default: "train" for a single file, else "test"
    column_names: str | None = None  # --dataset files without a header row: their fields, comma-separated
    pairs: str | None = None
    pairs_split: str | None = None
    prompts: str | None = None
    prompts_split: str | None = None
    reference: str | None = None
    questions: str | None = None  # a JSONL of questions for the judge tasks
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key_env: str | None = None  # the variable holding the judge's key; None: no key is sent
    judge_workers: int = 8
    judge_max_tokens: int | None = None  # the judge's reply length; None: 1024
    baseline: str | None = None  # judge_pairwise: a model folder, or a JSONL with an `answer` per question
    max_new_tokens: int = 256  # the judged answers' length
    harness: str | None = None  # lm-eval tasks, comma-separated
    task_data: list[str] | None = None  # NAME=PATH: a shipped local lm-eval task's data
    harness_backend: str = "auto"
    num_fewshot: int | None = None
    max_gen_toks: int | None = None
    max_rows: int | None = None  # the first N rows of each input
    batch_size: int = 64
    card: bool = True


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval command's arguments, shared by `scripts/run_eval.py` and `alignment eval`."""
    parser.add_argument(
        "model_dir", nargs="+",
        help="A stage's output_dir, a merged model, an adapter, a reward model or a text classifier; several "
        "are compared.",
    )  # fmt: skip
    parser.add_argument(
        "--output_dir",
        help="With several models: where their comparison goes (results.json, .md, stages.png).",
    )
    parser.add_argument("--names", help="With several models: comma-separated names (default: folder names).")
    parser.add_argument(
        "--tasks", help=f"Comma-separated, from {', '.join(TASKS)} (default: those given input)."
    )
    parser.add_argument(
        "--dataset",
        help="Held-out text or conversations for `loss`, or text/label rows for a classifier (file, folder "
        "or Hub id).",
    )
    parser.add_argument("--dataset_split", help="Its split (default: train for a single file, else test).")
    parser.add_argument(
        "--column_names", help="Its fields, comma-separated, when its csv/tsv/txt files have no header row "
        "(`label,text` for the SMS Spam Collection's layout), as a recipe source's `column_names`."
    )  # fmt: skip
    parser.add_argument("--pairs", help="Held-out preference pairs for `preference`.")
    parser.add_argument("--pairs_split", help="Their split (default as --dataset_split).")
    parser.add_argument("--prompts", help="Held-out prompts with an `answer` for `exact_match`.")
    parser.add_argument("--prompts_split", help="Their split (default as --dataset_split).")
    parser.add_argument("--reference", help="With --pairs: rank by DPO's implicit reward against this model.")
    parser.add_argument(
        "--questions", help="Questions for the judge: JSONL rows with `question` or `prompt`."
    )
    parser.add_argument(
        "--judge_url", help="The judge's OpenAI-compatible endpoint, e.g. http://host:8000/v1."
    )
    parser.add_argument("--judge_model", help="The model name the judge endpoint serves.")
    parser.add_argument(
        "--judge_api_key_env",
        metavar="VAR",
        help="Environment variable holding the judge's API key (never written).",
    )
    parser.add_argument("--judge_workers", type=int, default=8, help="Judge requests in flight (default 8).")
    parser.add_argument(
        "--judge_max_tokens", type=int, help="Longest judge reply, its reasoning and verdict (default 1024)."
    )
    parser.add_argument(
        "--baseline", help="judge_pairwise: the baseline's answers, a model folder or a JSONL with `answer`."
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=256, help="Longest answer the model writes for the judge."
    )
    parser.add_argument(
        "--harness", metavar="TASKS",
        help="lm-evaluation-harness tasks, comma-separated: lm-eval's own (mmlu, gsm8k, ifeval: from the Hub) "
        "or shipped local ones (tiny_exact_match, gsm8k_local, mmlu_local).",
    )  # fmt: skip
    parser.add_argument(
        "--task_data", action="append", metavar="NAME=PATH",
        help="A shipped local task's data: a test file, or a folder of test*/train* files (repeatable).",
    )  # fmt: skip
    parser.add_argument(
        "--harness_backend", default="auto", choices=["auto", "hf", "vllm"],
        help="auto: vLLM where installed with a CUDA GPU, else transformers.",
    )  # fmt: skip
    parser.add_argument(
        "--num_fewshot", type=int, help="Shots for every --harness task (default: each task's)."
    )
    parser.add_argument(
        "--max_gen_toks", type=int, help="Longest generation of --harness tasks (default: each task's)."
    )
    parser.add_argument("--max_rows", type=int, help="Evaluate the first N rows of each input.")
    parser.add_argument("--batch_size", type=int, default=64, help="Sequences per forward pass (default 64).")
    parser.add_argument("--no_card", action="store_true", help="Leave the model card (README.md) alone.")


def request_from(options: argparse.Namespace) -> EvalRequest:
    """The request from `add_eval_arguments`' options: the same names, but for `--tasks` (a comma list) and
    `--no_card`."""
    named = {f.name: getattr(options, f.name) for f in fields(EvalRequest) if f.name not in ("tasks", "card")}
    if isinstance(named["model_dir"], list):  # several: `requests_from`
        named["model_dir"] = named["model_dir"][0]
    tasks = comma_list(options.tasks)
    return EvalRequest(**named, tasks=tasks, card=not options.no_card)


def requests_from(options: argparse.Namespace) -> list[EvalRequest]:
    """One request per model folder, each with the same tasks and inputs."""
    request = request_from(options)
    folders = options.model_dir if isinstance(options.model_dir, list) else [options.model_dir]
    return [replace(request, model_dir=folder) for folder in folders]


def model_kind(model_dir: str | Path) -> str:
    """ "adapter" (a PEFT folder), "reward" (a sequence-classification head with one output), "classifier" (one
    with an output per label: the classify stage) or "causal"; a RecipeError when the folder holds no model."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise RecipeError(f"model folder {model_dir} not found")
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    config = folder / "config.json"
    if not config.is_file():
        raise RecipeError(f"{model_dir} holds no model (no config.json or adapter_config.json)")
    values = json.loads(config.read_text())
    if not any(a.endswith("ForSequenceClassification") for a in values.get("architectures") or []):
        return "causal"
    return "classifier" if len(values.get("id2label") or {}) > 1 else "reward"


def check_request(request: EvalRequest) -> dict[str, Any]:
    """Validate the request and read every input, before any model loads; return the rows per task."""
    kind = model_kind(request.model_dir)
    for task in request.tasks:
        if task not in TASKS:
            raise RecipeError(f"--tasks: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if request.baseline is not None and not (request.questions and request.judge_url):
        raise RecipeError("--baseline is for the judge_pairwise task: give --questions and --judge_url too")
    if request.questions is not None and not request.judge_url:
        raise RecipeError("--questions are for the judge: give --judge_url and --judge_model too")
    judged = request.questions and request.judge_url
    classifier = kind == "classifier"  # its --dataset is text/label rows to classify, not text to score
    given = {"loss": not classifier and request.dataset, "preference": request.pairs, "exact_match": request.prompts,
             "judge": judged, "judge_pairwise": judged and request.baseline, "harness": request.harness,
             "classification": classifier and request.dataset}  # fmt: skip
    tasks = request.tasks or [task for task in TASKS if given[task]]
    if not tasks:
        raise RecipeError(
            "nothing to evaluate: give --dataset (loss; for a text classifier, classification), --pairs "
            "(preference), --prompts (exact_match) or --questions with --judge_url (judge; with --baseline, "
            "judge_pairwise) or --harness TASKS"
        )
    if classifier and set(tasks) - {"classification"}:
        raise RecipeError(
            f"{request.model_dir} is a text classifier: it classifies --dataset rows (text, label) and "
            "generates nothing"
        )
    if "classification" in tasks and not classifier:
        raise RecipeError(
            f"task classification needs a text classifier (the classify stage's output); {request.model_dir} "
            "is not one"
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
    if request.baseline is not None and "judge_pairwise" not in tasks:
        raise RecipeError(
            f"--baseline is for the judge_pairwise task, which --tasks {','.join(tasks)} leaves out"
        )
    for option, (owner, needs) in UNUSED_WITHOUT.items():
        if getattr(request, option) is not None and not set(owner) & set(tasks):
            raise RecipeError(
                f"--{option} is for the {owner[0]} task, which this run leaves out: give {needs}"
            )
    rows: dict[str, Any] = {"kind": kind}
    if {"judge", "judge_pairwise"} & set(tasks):
        rows["judge"] = _check_judge_request(request)
    if "harness" in tasks:
        rows["harness"] = _check_harness_request(request)
    elif request.task_data:
        raise RecipeError("--task_data is for --harness tasks: name them with --harness")
    if "classification" in tasks:
        from alignment.classification import check_eval_labels, saved_class_names

        rows["classification"] = read_rows(request.dataset, request.dataset_split, "classify", request.max_rows,
                                           comma_list(request.column_names))  # fmt: skip
        check_eval_labels(rows["classification"], saved_class_names(request.model_dir), request.dataset)
    if "loss" in tasks:
        rows["loss"] = _read_loss_rows(request.dataset, request.dataset_split, request.max_rows,
                                       comma_list(request.column_names))  # fmt: skip
    if "preference" in tasks:
        rows["preference"] = read_rows(
            request.pairs, request.pairs_split or request.dataset_split, "dpo", request.max_rows
        )
    if "exact_match" in tasks:
        rows["exact_match"] = read_prompts(
            request.prompts, request.prompts_split or request.dataset_split, request.max_rows, "--prompts"
        )
    return rows


def _check_harness_request(request: EvalRequest) -> dict[str, Any]:
    """lm-eval's task names and the local tasks' files, checked; the tasks and their data."""
    from alignment.harness import check_harness

    tasks = comma_list(request.harness)
    task_data = {}
    for item in request.task_data or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise RecipeError(f"--task_data {item!r}: give NAME=PATH, e.g. gsm8k_local=/data/gsm8k/main")
        task_data[name] = path
    for option in ("num_fewshot", "max_gen_toks"):
        value = getattr(request, option)
        if value is not None and value < (0 if option == "num_fewshot" else 1):
            raise RecipeError(
                f"--{option} is {value}; it must be at least {0 if option == 'num_fewshot' else 1}"
            )
    try:
        check_harness(tasks, task_data)
    except RecipeError as err:
        raise RecipeError(f"--harness: {err}") from None
    return {"tasks": tasks, "task_data": task_data}


def _shipped_data(task: str) -> str | None:
    """A shipped lm-eval task's default data file(s), as the table's `data` cell."""
    from alignment.harness import read_task, shipped_tasks

    if task not in shipped_tasks():
        return None
    files = (read_task(task).get("dataset_kwargs") or {}).get("data_files") or {}
    return ", ".join(str(f) for f in files.values()) or None


def _check_judge_request(request: EvalRequest) -> dict[str, Any]:
    """The judge's questions and baseline, read; its URL, model, key variable and workers checked."""
    from alignment.judge import api_key_from_env, check_judge

    if not request.judge_model:
        raise RecipeError(
            "--judge_model is required with --judge_url: the name the endpoint serves the judge as"
        )
    for option in ("judge_workers", "max_new_tokens", "judge_max_tokens"):
        value = getattr(request, option)
        if value is not None and value < 1:
            raise RecipeError(f"--{option} is {value}; it must be at least 1")
    try:
        inputs = check_judge(request.questions, request.judge_url, request.judge_model, request.baseline,
                             request.max_rows)  # fmt: skip
    except RecipeError as err:
        raise RecipeError(f"--questions/--judge_url/--baseline: {err}") from None
    inputs["api_key"] = api_key_from_env(request.judge_api_key_env) if request.judge_api_key_env else None
    return inputs


def read_prompts(source: str, split: str | None, max_rows: int | None, option: str) -> list[dict]:
    """Prompts with an `answer` each, for exact match; `option` (the flag or recipe key) names them in errors."""
    prompts = read_rows(source, split, "prompt", max_rows)
    missing = next((i for i, row in enumerate(prompts) if not row.get("answer")), None)
    if missing is not None:
        raise RecipeError(
            f"{option} {source}: row {missing} has no `answer`; exact match needs one in every row"
        )
    return prompts


def read_rows(
    source: str, split: str | None, stage: str, max_rows: int | None, column_names: list[str] | None = None
) -> list[dict]:
    """Canonical rows of one source, through the data layer (any format a recipe takes; no dedup: every
    held-out row counts). `column_names`: the fields of headerless files, as a recipe source gives them."""
    from alignment.data.mixture import MixtureConfig, load_mixture

    split = split or ("train" if Path(source).is_file() else "test")
    entry = {"id": source, "split": split, **({"column_names": column_names} if column_names else {})}
    mixture = MixtureConfig.from_dict({"datasets": [entry], "dedup": "none"}, origin=source)
    data = load_mixture(mixture, stage)["train"]
    if max_rows is not None and max_rows < len(data):
        logger.info(f"{source} [{split}]: evaluating the first {max_rows} of {len(data)} rows (--max_rows)")
        data = data.select(range(max_rows))
    return [dict(row) for row in data]


def comma_list(text: str | None) -> list[str]:
    """The items of a comma-separated option (`--tasks`, `--harness`, `--column_names`), blanks dropped."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _read_loss_rows(
    source: str, split: str | None, max_rows: int | None, column_names: list[str] | None = None
) -> dict[str, Any]:
    """Plain text if the source reads as text, else conversations (its assistant turns are scored)."""
    try:
        return {"text": [row["text"] for row in read_rows(source, split, "cpt", max_rows, column_names)]}
    except RecipeError as as_text:
        try:
            conversations = read_rows(source, split, "sft", max_rows, column_names)
            return {"conversations": [row["messages"] for row in conversations]}
        except RecipeError:
            raise as_text from None


def for_its_kind(request: EvalRequest) -> tuple[EvalRequest | None, str | None]:
    """The request narrowed to what the model can do, in a comparison of several: a reward model only ranks
    pairs. Returns the request (None: no task applies) and what was left out, which is printed and recorded."""
    kind = model_kind(request.model_dir)
    if kind == "classifier":
        return (
            None,
            "a text classifier: evaluate it alone, with --dataset rows of text and label; not evaluated",
        )
    if kind != "reward":
        return request, None
    if not request.pairs:
        return None, "a reward model only ranks --pairs, and none were given: not evaluated"
    others = request.dataset or request.prompts or request.questions or request.reference or request.harness
    note = "a reward model: its score ranks the pairs; the other tasks do not apply" if others else None
    return EvalRequest(request.model_dir, ["preference"], pairs=request.pairs, dataset_split=request.dataset_split,
                       pairs_split=request.pairs_split, max_rows=request.max_rows, batch_size=request.batch_size,
                       card=request.card), note  # fmt: skip


def run_eval(request: EvalRequest, rows: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate, write MODEL_DIR/eval/results.json and results.md, and update the card; return the results.
    `rows`: what `check_request` read for it, when it was checked already."""
    from alignment import evaluation
    from alignment.eval_report import write_results

    rows = rows or check_request(request)
    results: dict[str, Any] = {"model": str(request.model_dir), "tasks": {}}
    if rows["kind"] == "reward":
        start = time.time()
        accuracy = evaluation.reward_accuracy(request.model_dir, rows["preference"])
        how = "reward model score"
        results["tasks"]["preference"] = _preference_result(
            request, how, accuracy, len(rows["preference"]), start
        )
        return write_results(request, results)
    if rows["kind"] == "classifier":
        from alignment.classification import evaluate_classifier

        start = time.time()
        numbers = evaluate_classifier(request.model_dir, rows["classification"], request.batch_size)
        results["tasks"]["classification"] = {
            "source": request.dataset, "measured_by": "argmax of the classifier's logits",
            "rows": len(rows["classification"]), **numbers, "seconds": _since(start),
        }  # fmt: skip
        return write_results(request, results)

    from alignment.judge import vllm_usable

    model = tokenizer = None
    judge_on_vllm = "judge" in rows and vllm_usable()
    # lm-eval, and the judge's answers on vLLM, load the model their own way
    if any(task in rows for task in ("loss", "preference", "exact_match")) or (
        "judge" in rows and not judge_on_vllm
    ):
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
    if "judge" in rows:
        if judge_on_vllm:
            model = _free(model)  # vLLM takes most of the GPU's memory
        results["tasks"].update(_judge(request, rows["judge"], model, tokenizer, results))
    if "harness" in rows:
        from alignment.harness import run_harness

        model = _free(model)  # lm-eval loads the model its own way (vLLM on a GPU): ours is freed first
        scores = run_harness(
            request.model_dir, rows["harness"]["tasks"], limit=request.max_rows, batch_size=request.batch_size,
            backend=request.harness_backend, task_data=rows["harness"]["task_data"],
            num_fewshot=request.num_fewshot, max_gen_toks=request.max_gen_toks,
            samples_dir=str(Path(request.model_dir) / "eval" / "lm_eval"),
        )  # fmt: skip
        for name, numbers in scores.items():
            source = (
                rows["harness"]["task_data"].get(name) or _shipped_data(name) or "lm-eval's own (the Hub)"
            )
            results["tasks"][f"lm_eval/{name}"] = {
                "source": source,
                **numbers,
                "measured_by": "lm-evaluation-harness",
            }
    return write_results(request, results)


def _judge(request: EvalRequest, inputs: dict[str, Any], model: Any, tokenizer: Any,
           results: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The model's answers to the questions, graded by the judge (and against the baseline's when given).
    Each judgement's record (the judge's raw reply included) goes to eval/judge_<task>.jsonl."""
    from alignment import judge

    start = time.time()
    loaded = (model, tokenizer) if model is not None else None
    answers = judge.answer_questions(request.model_dir, inputs["prompts"], request.max_new_tokens,
                                     request.batch_size, loaded=loaded)  # fmt: skip
    results["answer_seconds"] = _since(start)
    options = {"url": request.judge_url, "model": request.judge_model, "api_key": inputs["api_key"],
               "workers": request.judge_workers, "max_tokens": request.judge_max_tokens or 1024}  # fmt: skip
    tasks = {}
    if "judge" in (request.tasks or ["judge"]):
        tasks["judge"] = judge.judge_scores(inputs["questions"], answers, **options)
    baseline = inputs["baseline_answers"]
    if inputs["baseline_model"] is not None:
        start = time.time()
        baseline = judge.answer_questions(inputs["baseline_model"], inputs["prompts"], request.max_new_tokens)
        results["baseline_answer_seconds"] = _since(start)
    if baseline is not None:
        tasks["judge_pairwise"] = judge.judge_pairwise(inputs["questions"], answers, baseline, **options)
    out = Path(request.model_dir) / "eval"
    out.mkdir(exist_ok=True)
    for name, numbers in tasks.items():
        records = numbers.pop("records")
        path = out / f"{name}_records.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        numbers.update({"source": request.questions, "rows": numbers.pop("questions"), "records": str(path)})
    return tasks


def _free(model: Any) -> None:
    """Drop our copy of the model and give its GPU memory back, for a library that loads its own."""
    import gc

    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    requests = requests_from(options)
    if len(requests) == 1 and not options.output_dir:
        results = run_eval(requests[0])
        print(markdown_table(results))
        print(f"\nresults in {Path(requests[0].model_dir) / 'eval' / 'results.json'}")
        return results
    from alignment.eval_compare import compare_models

    return compare_models(requests, options.output_dir, options.names)
