"""Fine-tuning methods side by side on the tiny task: what trains, how long, how much memory, how well.

    make compare-methods                    # writes benchmarks/results/<device>-<date>-methods.json (+ .md)
    python benchmarks/compare_methods.py --methods full lora --max_steps 40

Every method starts from the same base, a tiny model after continued pretraining on the task's plain
text (recipes/tiny/cpt/config.yaml, trained here once): it has seen "reverse kipiq = qipik." as text,
never the chat format. Each method then runs the tiny SFT recipe (recipes/tiny/sft/config.yaml, one
epoch) with its own keys, in its own process, one after another:

- full: every parameter;
- lora, dora: rank-16 adapters on every linear layer (`use_peft`, `use_dora`);
- prompt_tuning: 20 learned virtual tokens, the model frozen (`peft_type: prompt_tuning`);
- ia3: learned rescaling of keys, values and feed-forward activations (`peft_type: ia3`);
- last_layer: the last of the 2 transformer blocks, the final norm (`trainable_layers: 1`).

Reported per method: trainable and total parameters (as the run's metrics count them), training wall
time (the run's `train_runtime`) and the whole process's, the process's peak memory (max RSS on a CPU),
and the held-out greedy exact match on data/tiny/eval.jsonl (`alignment eval --prompts`; an adapter is
merged). Each method's learning rate is the best of a small sweep on this task (an adapter with few
parameters needs a larger one); the sweep's numbers are beside METHODS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TINY = Path(os.environ.get("ALIGNMENT_TINY_DIR", ROOT / "data" / "tiny"))

# name -> recipe overrides on top of recipes/tiny/sft/config.yaml. Learning rates from a sweep on this base
# (held-out loss after 60 steps, 2026-11-25): prompt tuning 3e-1: 3.64, 1e-1: 3.93, 3e-2 (one epoch): 4.08;
# IA3 1e-1: 2.57, 3e-2 (one epoch): 2.60; LoRA/DoRA 3e-3 (twice the full fine-tuning rate, as usual).
METHODS: dict[str, list[str]] = {
    "full": [],
    "lora": ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", "all-linear",
             "--learning_rate", "3e-3"],
    "dora": ["--use_peft", "true", "--use_dora", "true", "--lora_r", "16", "--lora_alpha", "32",
             "--lora_target_modules", "all-linear", "--learning_rate", "3e-3"],
    "prompt_tuning": ["--peft_type", "prompt_tuning", "--num_virtual_tokens", "20", "--learning_rate", "3e-1"],
    "ia3": ["--peft_type", "ia3", "--learning_rate", "1e-1"],
    "last_layer": ["--trainable_layers", "1"],
}  # fmt: skip

# Measures its own peak memory: the script runs in this process, which prints its max RSS when it exits.
RUNNER = (
    "import atexit, resource, runpy, sys; "
    "atexit.register(lambda: print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "file=sys.stderr)); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_stage(stage: str, recipe: Path, overrides: list[str], cwd: Path) -> dict[str, Any]:
    """Run scripts/run_<stage>.py in its own process; its wall time and peak memory."""
    command = [
        sys.executable,
        "-c",
        RUNNER,
        str(ROOT / "scripts" / f"run_{stage}.py"),
        str(recipe),
        *overrides,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{stage} {' '.join(overrides)} failed:\n{done.stderr[-4000:]}")
    peak = next(
        (int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")), 0
    )
    return {"process_seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024, 1)}


def held_out_exact_match(model_dir: Path, prompts: Path) -> dict[str, float]:
    """Greedy exact match on the held-out prompts, overall and per skill, as `alignment eval` measures it."""
    from alignment.evaluation import exact_match, load_for_eval, read_jsonl

    model, tokenizer = load_for_eval(model_dir)
    return exact_match(model, tokenizer, read_jsonl(prompts))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--max_steps", type=int, default=None, help="cap each SFT run (default: one epoch)")
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "compare_methods"))
    parser.add_argument("--output", default=None, help="results JSON (default: benchmarks/results/...)")
    options = parser.parse_args(argv)

    work = Path(options.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data").exists():
        (work / "data").symlink_to(TINY.parent.resolve())
    base = work / "cpt"
    if not (base / "model.safetensors").is_file():  # the shared base: CPT on the task's text, once
        print("continued pretraining of the base (recipes/tiny/cpt/config.yaml) ...", flush=True)
        run_stage("cpt", ROOT / "recipes" / "tiny" / "cpt" / "config.yaml",
                  ["--output_dir", str(base), "--overwrite_output_dir", "true", "--disable_tqdm", "true"], work)  # fmt: skip
    cap = ["--max_steps", str(options.max_steps)] if options.max_steps else []
    rows = []
    for name in options.methods:
        out = work / name
        print(f"{name} ...", flush=True)
        overrides = ["--model_name_or_path", str(base), "--num_train_epochs", "1", "--output_dir", str(out),
                     "--overwrite_output_dir", "true", "--eval_generation_prompts", "none",
                     "--eval_generation_steps", "none", "--disable_tqdm", "true", *cap, *METHODS[name]]  # fmt: skip
        process = run_stage("sft", ROOT / "recipes" / "tiny" / "sft" / "config.yaml", overrides, work)
        metrics = json.loads((out / "all_results.json").read_text())
        score = held_out_exact_match(out, TINY / "eval.jsonl")
        rows.append({
            "method": name, "overrides": METHODS[name],
            "trainable_parameters": metrics["trainable_parameters"], "total_parameters": metrics["total_parameters"],
            "train_seconds": round(metrics["train_runtime"], 1), **process,
            "eval_loss": round(metrics.get("eval_loss", float("nan")), 4),
            "exact_match": round(score["all"], 3),
            "exact_match_by_skill": {k: round(v, 3) for k, v in score.items() if k != "all"},
        })  # fmt: skip
        print(f"  {rows[-1]}", flush=True)
    return write_results(rows, options)


def write_results(rows: list[dict], options: argparse.Namespace) -> Path:
    device = f"cpu{os.cpu_count()}"
    path = Path(options.output or RESULTS / f"{device}-{datetime.date.today()}-methods.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device, "machine": platform.processor() or platform.machine(), "date": str(datetime.date.today()),
            "command": "python benchmarks/compare_methods.py " + " ".join(sys.argv[1:]),
            "base": "recipes/tiny/cpt/config.yaml (one epoch), then recipes/tiny/sft/config.yaml for one epoch"}  # fmt: skip
    path.write_text(json.dumps({**meta, "methods": rows}, indent=2) + "\n")
    lines = ["| method | trainable parameters | share | train s | peak RSS MiB | eval loss | exact match |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        share = r["trainable_parameters"] / r["total_parameters"]
        lines.append(f"| {r['method']} | {r['trainable_parameters']:,} | {share:.2%} | {r['train_seconds']} | "
                     f"{r['peak_rss_mib']} | {r['eval_loss']} | {r['exact_match']:.1%} |")  # fmt: skip
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results in {path}")
    return path


if __name__ == "__main__":
    main()
