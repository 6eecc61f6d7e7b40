"""Generation benchmarks through EleutherAI's lm-evaluation-harness (`pip install -e ".[eval]"`).

    run_harness("runs/tiny/sft", ["tiny_exact_match"])                      # CPU, hf backend
    run_harness("runs/zephyr/dpo", ["gsm8k_local", "ifeval"], task_data={"gsm8k_local": "gsm8k/main"})

The same harness scores the tiny model here and MMLU, GSM8K or IFEval on a GPU node (vLLM as its backend
there). Tasks are lm-eval's own names (read from the Hub) or the ones shipped in `alignment/eval_tasks`,
which read local files and so run offline: `tiny_exact_match` (scored as `alignment.evaluation.exact_match`
scores it), `gsm8k_local` and `mmlu_local`. What we add to lm-eval: task names and data files are checked
before any model loads, a PEFT adapter folder is evaluated on its base, chat models get their template,
and the results come back as one flat dict of metrics per task.
"""

from __future__ import annotations

import json
import logging
import time
from functools import cache
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError, closest

logger = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "eval_tasks"
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # datasets' loaders
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
INSTALL = 'lm-eval is not installed: pip install -e ".[eval]"'


def shipped_tasks() -> dict[str, Path]:
    """The shipped tasks by name: each YAML file's name is its task's name (a test holds them to it)."""
    return {path.stem: path for path in sorted(TASKS_DIR.glob("*.yaml"))}


def check_harness(tasks: list[str], task_data: dict[str, str] | None = None) -> None:
    """Refuse, with a one-line RecipeError, what would fail inside lm-eval after the model has loaded: lm-eval
    missing, a task name lm-eval does not know, a shipped task's data file missing.

    Shipped names are known from file names; lm-eval's registry is indexed (~14 s on 2 CPU cores, 14k
    YAML files) only when a task is not a shipped one.
    """
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise RecipeError(INSTALL)
    if not tasks:
        raise RecipeError("no lm-eval task named")
    shipped = shipped_tasks()
    for name in task_data or {}:
        if name not in shipped:
            raise RecipeError(f"task_data names `{name}`, which is not a shipped local task "
                              f"(one of {', '.join(shipped)}){closest(name, shipped)}")  # fmt: skip
    for name in tasks:
        if name in shipped:
            base = read_task(name).get("lm_eval_base")
            if base and not (lm_eval_tasks_dir() / base).is_file():
                raise RecipeError(f"task `{name}`: the installed lm-eval has no tasks/{base} to build on "
                                  "(tested with lm-eval 0.4.13)")  # fmt: skip
            data_overrides(name, (task_data or {}).get(name))
    others = [name for name in tasks if name not in shipped]
    if others:
        known = set(task_manager(True).all_tasks)
        for name in others:
            if name not in known:
                raise RecipeError(f"unknown lm-eval task `{name}`: neither shipped here ({', '.join(shipped)}) "
                                  f"nor in lm-eval's registry{closest(name, known | set(shipped))}")  # fmt: skip


def read_task(name: str) -> dict[str, Any]:
    """A shipped task's YAML as plain data (`!function` values kept as strings), without importing lm-eval."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(shipped_tasks()[name].read_text(), Loader=Loader)


def data_overrides(name: str, path: str | None) -> dict[str, Any]:
    """The keys of shipped task `name`'s config that point it at its local data: `path` (a file: the test
    split; a folder: a `<split>*` file per split the task uses), else the YAML's default file.

    Absolute paths, so lm-eval reads the same files whatever directory it runs from. Without a file for
    the shots' split, shots are drawn from the test split (lm-eval never shows a question as its own shot).
    """
    config = read_task(name)
    test = config.get("test_split", "test")
    shots = config.get("fewshot_split") or config.get("training_split")
    if path is None:
        files = {
            split: Path(f)
            for split, f in ((config.get("dataset_kwargs") or {}).get("data_files") or {}).items()
        }
        if not files:
            raise RecipeError(f"task `{name}` reads a local file: give it as task_data {{'{name}': PATH}}")
        for file in files.values():
            if not file.is_file():
                raise RecipeError(f"task `{name}`: its data file {file} does not exist under {Path.cwd()} "
                                  "(`alignment tiny build` writes data/tiny/; or give a file in task_data)")  # fmt: skip
    elif Path(path).is_dir():
        files = {split: found[0] for split in (test, shots) if split
                 if (found := sorted(f for f in Path(path).glob(f"{split}*") if f.suffix in BUILDERS))}  # fmt: skip
        if test not in files:
            raise RecipeError(f"task `{name}`: no `{test}*` file ({', '.join(BUILDERS)}) in {path}")
    elif Path(path).is_file():
        files = {test: Path(path)}
    else:
        raise RecipeError(f"task `{name}`: its data file {path} does not exist")
    builders = {BUILDERS.get(f.suffix) for f in files.values()}
    if len(builders) != 1 or None in builders:
        raise RecipeError(f"task `{name}`: data files must share one format of {', '.join(BUILDERS)}, got "
                          f"{', '.join(str(f) for f in files.values())}")  # fmt: skip
    overrides: dict[str, Any] = {
        "dataset_path": builders.pop(),
        "dataset_kwargs": {"data_files": {split: str(f.resolve()) for split, f in files.items()}},
    }
    if shots and shots not in files:
        overrides |= {"fewshot_split": test, "training_split": None}
    return overrides


def lm_eval_tasks_dir() -> Path:
    """lm-eval's own task folder, found without importing lm-eval (seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(INSTALL)
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def task_config(name: str, path: str | None) -> dict[str, Any]:
    """A shipped task's full config (functions resolved), pointed at its files. With `lm_eval_base`, the
    installed lm-eval's own task file is the base and ours only changes where the data is: the prompt,
    shots, filters and metric stay lm-eval's, not a copy of them."""
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(shipped_tasks()[name], resolve_func=True)
    base = config.pop("lm_eval_base", None)
    if base:
        inherited = load_yaml(lm_eval_tasks_dir() / base, resolve_func=True)
        config = {k: v for k, v in inherited.items() if k not in ("tag", "group")} | config
    return config | data_overrides(name, path)


@cache
def task_manager(registry: bool) -> Any:
    """lm-eval's TaskManager; with `registry`, its index of lm-eval's own tasks (built once a process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=registry)


def pick_backend(backend: str) -> str:
    """`auto`: vLLM where it is installed and a CUDA GPU is there, else transformers (`hf`)."""
    import importlib.util

    import torch

    if backend == "auto":
        return "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "hf"
    if backend not in ("hf", "vllm"):
        raise RecipeError(f"unknown lm-eval backend `{backend}`: auto, hf or vllm")
    if backend == "vllm" and not importlib.util.find_spec("vllm"):
        raise RecipeError('backend vllm: vLLM is not installed (on a CUDA machine: pip install -e ".[vllm]")')
    return backend


def model_args(model_dir: str, backend: str) -> dict[str, Any]:
    """lm-eval's model arguments for a model folder; an adapter folder is evaluated on the base it names."""
    import torch

    from alignment.model import adapter_base

    args: dict[str, Any] = {"pretrained": model_dir, "dtype": "auto"}
    base = adapter_base(model_dir)
    if base:
        adapter = json.loads((Path(model_dir) / "adapter_config.json").read_text())
        # Our stages save the tokenizer (maybe with added tokens) beside the adapter.
        tokenizer = model_dir if (Path(model_dir) / "tokenizer_config.json").is_file() else base
        args |= {"pretrained": base, "tokenizer": tokenizer}
        if backend == "vllm":
            rank = adapter.get("r", 16)  # vLLM takes only these maximum ranks
            args |= {"lora_local_path": model_dir, "max_lora_rank": min(r for r in LORA_RANKS if r >= rank)}
        else:
            args |= {"peft": model_dir}
    if backend == "hf":
        # lm-eval's hf model takes `cuda` on faith; a CPU machine must say `cpu`.
        args["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def run_harness(model_dir: str, tasks: list[str], *, limit: int | None = None, batch_size: int = 64,
                backend: str = "auto", task_data: dict[str, str] | None = None, num_fewshot: int | None = None,
                max_gen_toks: int | None = None, samples_dir: str | None = None) -> dict[str, dict]:  # fmt: skip
    """Score `model_dir` on lm-eval `tasks`; per task, its metrics as one flat dict.

    `exact_match` for the filter `none`, `exact_match/strict-match` for another, each with its `_stderr`,
    plus `rows` (documents scored) and `seconds` (the task's evaluation, model load excluded). The model
    loads once for all tasks. Greedy generation as each task defines it; chat models (a tokenizer with a
    chat template) see prompts through their template, few-shot examples as earlier turns. With
    `samples_dir`, each task's documents, replies and scores go to `<samples_dir>/<task>.jsonl`.
    `num_fewshot` and `max_gen_toks` override the tasks' own (a quick run, or a model with a short context).
    """
    check_harness(tasks, task_data)
    import lm_eval
    from lm_eval.api.registry import get_model

    backend = pick_backend(backend)
    logging.getLogger("lm_eval.evaluator_utils").addFilter(per_skill_counts)
    start = time.perf_counter()
    lm = get_model(backend).create_from_arg_obj(
        model_args(model_dir, backend), {"batch_size": batch_size if backend == "hf" else "auto"}
    )
    logger.info("lm-eval %s model loaded from %s in %.1f s", backend, model_dir, time.perf_counter() - start)
    chat = getattr(getattr(lm, "tokenizer", None), "chat_template", None) is not None
    shipped = shipped_tasks()
    manager = task_manager(any(name not in shipped for name in tasks))
    scores: dict[str, dict] = {}
    for name in tasks:
        # A shipped task goes in as its full config (functions resolved), pointed at its files.
        spec = task_config(name, (task_data or {}).get(name)) if name in shipped else name
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[spec],
            limit=limit,
            num_fewshot=num_fewshot,
            apply_chat_template=chat,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            task_manager=manager,
            log_samples=samples_dir is not None,
        )
        if out is None:  # not the main process
            continue
        scores[name] = flat_metrics(out["results"][name]) | {
            "rows": sum(n["effective"] for n in out["n-samples"].values()),
            "seconds": round(time.perf_counter() - start, 2),
        }
        if samples_dir is not None:
            write_samples(Path(samples_dir) / f"{name}.jsonl", out["samples"])
    return scores


def per_skill_counts(record: logging.LogRecord) -> bool:
    """Drop lm-eval's warning that the tiny task's metrics were scored on different numbers of documents:
    its per-skill shares are so by design, and the warning is about weighting within groups."""
    message = record.getMessage()
    return not (message.startswith("[tiny_exact_match]") and "not scored on the same number" in message)


def flat_metrics(result: dict[str, Any]) -> dict[str, float | None]:
    """lm-eval's `{"exact_match,none": x, "exact_match_stderr,none": "N/A", "alias": ...}` as
    `{"exact_match": x, "exact_match_stderr": None}`; a filter other than `none` stays in the key."""
    flat: dict[str, float | None] = {}
    for key, value in result.items():
        if "," not in key:
            continue  # alias, sample_len
        metric, filter_name = key.split(",", 1)
        flat[metric if filter_name == "none" else f"{metric}/{filter_name}"] = (
            None if value == "N/A" else float(value)
        )
    return flat


def write_samples(path: Path, samples: dict[str, list[dict]]) -> None:
    """lm-eval's per-document records (document, prompt, reply, scores), one JSON line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for task, rows in samples.items():
            for row in rows:
                f.write(json.dumps({"task": task, **row}, default=str) + "\n")
