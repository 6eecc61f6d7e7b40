"""`make demo`: the embedded pipeline end to end on a CPU, with held-out numbers after each stage.

Builds the tiny model and task, then runs recipes/tiny/pipeline.yaml (continued pretraining, SFT, a
reward model, DPO, and online RL against a checker) through the same
pipeline runner, scripts and recipes a user runs, and scores each stage's model on prompts no stage
trained on.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from alignment.evaluation import (
    exact_match,
    load_for_eval,
    preference_margins,
    read_jsonl,
    reward_accuracy,
    wins_of,
)
from alignment.tiny.build import DEFAULT_DIR, build_tiny
from alignment.tiny.task import SKILLS

PIPELINE = "recipes/tiny/pipeline.yaml"


def score(model_dir: str | Path, data_dir: Path, reference_dir: str | Path | None = None) -> dict[str, float]:
    """Exact match (greedy, per skill, and sampled) and preference accuracy of a policy on held-out data."""
    model, tokenizer = load_for_eval(model_dir)
    rows, pairs = read_jsonl(data_dir / "eval.jsonl"), read_jsonl(data_dir / "dpo" / "test.jsonl")
    greedy = exact_match(model, tokenizer, rows)
    result = {f"exact_match/{k}": v for k, v in greedy.items()}
    result["exact_match_sampled"] = exact_match(model, tokenizer, rows, sample=True)["all"]
    margins = preference_margins(model, tokenizer, pairs)  # once: both accuracies read them
    result["prefers_correct"] = share(wins_of(margins))
    if reference_dir is not None:
        reference, _ = load_for_eval(reference_dir)
        result["dpo_reward_accuracy"] = share(
            wins_of(margins, preference_margins(reference, tokenizer, pairs))
        )
    return result


def share(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def score_stage(stage: str, output_dir: str, data_dir: Path, policy_before: str | None) -> dict[str, float]:
    """A reward model is scored on held-out pairs, continued pretraining by its held-out text loss, a policy as
    in `score` (DPO also by its implicit reward)."""
    if stage == "cpt":  # a base model does not chat yet: its score is the loss on held-out text
        metrics = json.loads((Path(output_dir) / "eval_results.json").read_text())
        return {"text_loss": metrics["eval_loss"]}
    if stage == "rm":
        accuracy = reward_accuracy(output_dir, read_jsonl(data_dir / "dpo" / "test.jsonl"))
        return {f"rm_accuracy/{k}": v for k, v in accuracy.items()}
    return score(output_dir, data_dir, reference_dir=policy_before if stage == "dpo" else None)


def run_demo(data_dir: str = DEFAULT_DIR, runs_dir: str = "runs/tiny") -> dict[str, dict[str, Any]]:
    from alignment.pipeline import StageFailed, load_pipeline, run_pipeline

    start = time.time()
    data = build_tiny(data_dir)
    shutil.rmtree(runs_dir, ignore_errors=True)
    print(f"built the tiny model and task in {data} ({time.time() - start:.0f} s)", flush=True)
    results: dict[str, dict[str, Any]] = {"base": {**score(data / "model", data), "wall_s": 0.0}}
    models = {stage.name: stage.values.get("model_name_or_path") for stage in load_pipeline(PIPELINE).stages}

    def on_stage_end(outcome: Any) -> None:
        t0 = time.time()
        numbers = score_stage(outcome.stage, outcome.output_dir, data, models.get(outcome.name))
        results[outcome.name] = {"stage": outcome.stage, **numbers, "wall_s": outcome.wall_s}
        print(f"  {outcome.name}: scored on held-out data in {time.time() - t0:.0f} s", flush=True)

    try:
        run_pipeline(PIPELINE, on_stage_end=on_stage_end)
    except StageFailed as failed:
        raise SystemExit(f"{failed}\n{failed.tail}") from None
    results["total"] = {"wall_s": time.time() - start}
    Path(runs_dir, "demo_results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\ntotal {results['total']['wall_s']:.0f} s; numbers in {runs_dir}/demo_results.json")
    print(draw_chart(results, Path(runs_dir, "demo_chart.png")))
    return results


def draw_chart(results: dict[str, dict[str, Any]], path: Path) -> str:
    """The stages side by side on the held-out metrics (a PNG); the line that says where it is, or why not."""
    from alignment.eval_plots import NO_MATPLOTLIB, can_plot, plot_stages

    if not can_plot():
        return f"no chart: {NO_MATPLOTLIB}"
    metrics = ["exact_match/all", "exact_match/count", "prefers_correct", "rm_accuracy/all"]
    return f"chart of the stages: {plot_stages(results, path, metrics)}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    head = ["model", "exact match", *SKILLS, "sampled", "prefers correct", "DPO reward acc", "RM pair acc",
            "text loss", "stage time"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name == "total":
            continue
        cells = [name, pct(r.get("exact_match/all")), *(pct(r.get(f"exact_match/{s}")) for s in SKILLS),
                 pct(r.get("exact_match_sampled")), pct(r.get("prefers_correct")), pct(r.get("dpo_reward_accuracy")),
                 pct(r.get("rm_accuracy/all")), f"{r['text_loss']:.2f}" if "text_loss" in r else "-",
                 f"{r['wall_s']:.0f} s" if r["wall_s"] else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
