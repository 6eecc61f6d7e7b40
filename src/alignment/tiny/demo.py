"""`make demo`: the embedded pipeline end to end on a CPU, with held-out numbers before and after each stage.

Builds the tiny model and task, runs SFT then DPO through the same scripts and recipes a user runs,
and scores each model on prompts no stage trained on.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from alignment.evaluation import exact_match, load_for_eval, preference_accuracy, read_jsonl
from alignment.launch import run_stage
from alignment.tiny.build import DEFAULT_DIR, build_tiny
from alignment.tiny.task import SKILLS

STAGES = (("sft", "recipes/tiny/sft/config.yaml", "runs/tiny/sft"),
          ("dpo", "recipes/tiny/dpo/config.yaml", "runs/tiny/dpo"))  # fmt: skip


def score(model_dir: str | Path, data_dir: Path, reference_dir: str | Path | None = None) -> dict[str, float]:
    model, tokenizer = load_for_eval(model_dir)
    rows, pairs = read_jsonl(data_dir / "eval.jsonl"), read_jsonl(data_dir / "dpo" / "test.jsonl")
    greedy = exact_match(model, tokenizer, rows)
    result = {f"exact_match/{k}": v for k, v in greedy.items()}
    result["exact_match_sampled"] = exact_match(model, tokenizer, rows, sample=True)["all"]
    result["prefers_correct"] = preference_accuracy(model, tokenizer, pairs)
    if reference_dir is not None:
        reference, _ = load_for_eval(reference_dir)
        result["dpo_reward_accuracy"] = preference_accuracy(model, tokenizer, pairs, reference=reference)
    return result


def run_demo(data_dir: str = DEFAULT_DIR, runs_dir: str = "runs/tiny") -> dict[str, dict[str, float]]:
    start = time.time()
    data = build_tiny(data_dir)
    shutil.rmtree(runs_dir, ignore_errors=True)
    print(f"built the tiny model and task in {data} ({time.time() - start:.0f} s)", flush=True)
    results = {"base": {**score(data / "model", data), "wall_s": 0.0}}
    previous = str(data / "model")
    for stage, recipe, output in STAGES:
        log = Path(runs_dir) / f"{stage}.log"
        print(f"{stage}: python scripts/run_{stage}.py {recipe}  (log: {log})", flush=True)
        t0 = time.time()
        done = run_stage(stage, recipe, log_file=log)
        wall = time.time() - t0
        if done.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise SystemExit(f"{stage} failed (exit {done.returncode}); last lines of {log}:\n{tail}")
        results[stage] = {
            **score(output, data, reference_dir=previous if stage == "dpo" else None),
            "wall_s": wall,
        }
        previous = output
    results["total"] = {"wall_s": time.time() - start}
    Path(runs_dir, "demo_results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\ntotal {results['total']['wall_s']:.0f} s; numbers in {runs_dir}/demo_results.json")
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    head = ["model", "exact match", *SKILLS, "sampled", "prefers correct", "DPO reward acc", "stage time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ("base", *(s for s, _, _ in STAGES)):
        r = results[name]
        cells = [name, pct(r["exact_match/all"]), *(pct(r.get(f"exact_match/{s}")) for s in SKILLS),
                 pct(r["exact_match_sampled"]), pct(r["prefers_correct"]), pct(r.get("dpo_reward_accuracy")),
                 f"{r['wall_s']:.0f} s" if r["wall_s"] else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
