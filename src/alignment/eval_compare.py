"""Several models on the same held-out data, side by side: `alignment eval A B C --output_dir DIR`.

    alignment eval runs/tiny/sft runs/tiny/dpo runs/tiny/rm --prompts data/tiny/eval.jsonl \
        --pairs data/tiny/dpo --output_dir runs/tiny/eval --names sft,dpo,rm

Each model is evaluated as `alignment eval MODEL_DIR` would (its own eval/ folder and card section), on
the tasks that apply to it (a reward model only ranks pairs; what is left out is said and recorded). DIR
gets the comparison: results.json (every model's numbers), results.md (a model a row) and stages.png.
A pipeline's `stage: eval` runs this on the earlier stages' outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError

logger = logging.getLogger(__name__)


def model_names(folders: list[str], names: str | None) -> list[str]:
    """`--names` as given, else each folder's name (with its parent's when two folders share a name)."""
    if names:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(folders) or not all(given) or len(set(given)) != len(given):
            raise RecipeError(f"--names {names!r}: give {len(folders)} distinct names, one per model folder")
        return given
    short = [Path(f).name for f in folders]
    if len(set(short)) == len(short):
        return short
    return [f"{Path(f).parent.name}/{Path(f).name}" for f in folders]


def compare_models(requests: list[Any], output_dir: str | None, names: str | None) -> dict[str, Any]:
    """Check every model's request (inputs read once per model) before any model loads, then evaluate each
    and write the comparison; return {name: results}."""
    from alignment.eval_command import check_request, for_its_kind, run_eval

    if not output_dir:
        raise RecipeError("several model folders: give --output_dir for their comparison")
    labels = model_names([r.model_dir for r in requests], names)
    planned = []
    for name, request in zip(labels, requests, strict=True):
        narrowed, note = for_its_kind(request)
        if note:
            logger.warning(f"{name}: {note}")
        planned.append(
            (name, request.model_dir, narrowed, check_request(narrowed) if narrowed else None, note)
        )
    results: dict[str, Any] = {}
    for name, folder, request, rows, note in planned:
        results[name] = run_eval(request, rows) if request else {"model": str(folder), "tasks": {}}
        if note:
            results[name]["note"] = note
    print(write_comparison(results, Path(output_dir)))
    return results


def flat_metrics(results: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """`task/metric` -> (value, whether it is a share) of one model's results; counts and text left out."""
    from alignment.eval_report import NOT_METRICS, is_share

    flat = {}
    for task, numbers in results.get("tasks", {}).items():
        for metric, value in numbers.items():
            if metric in NOT_METRICS or isinstance(value, bool) or not isinstance(value, float):
                continue  # counts (ints) and text
            flat[f"{task}/{metric}"] = (value, is_share(task, metric))
    return flat


def write_comparison(results: dict[str, Any], out: Path) -> str:
    """results.json, results.md and stages.png under `out`; the table and where things are, as text."""
    from alignment.eval_plots import NO_MATPLOTLIB, can_plot, plot_stages

    out.mkdir(parents=True, exist_ok=True)
    flat = {name: flat_metrics(r) for name, r in results.items()}
    columns = list(dict.fromkeys(key for metrics in flat.values() for key in metrics))
    lines = ["| model | " + " | ".join(columns) + " | note |", "|---" * (len(columns) + 2) + "|"]
    for name, metrics in flat.items():
        cells = [_cell(metrics.get(key)) for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {results[name].get('note', '')} |")
    table = "\n".join(lines)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(table + "\n")
    shares = [key for key in columns if any(m.get(key, (0, False))[1] for m in flat.values())]
    overall = [key for key in shares if key.endswith(("/all", "/win_rate", "/exact_match", "/acc"))]
    shares = overall or shares  # per skill: in the table
    values = {name: {key: value for key, (value, _) in metrics.items()} for name, metrics in flat.items()}
    if not shares:
        chart = "no chart: no share-valued metric"
    elif can_plot():
        chart = f"chart: {plot_stages(values, out / 'stages.png', shares)}"
    else:
        chart = f"no chart: {NO_MATPLOTLIB}"
    return f"{table}\n\ncomparison in {out / 'results.md'} and results.json; {chart}"


def _cell(entry: tuple[float, bool] | None) -> str:
    if entry is None:
        return "-"
    value, share = entry
    return f"{100 * value:.1f}%" if share else f"{value:.4g}"
