"""Forgetting on the tiny pipeline: what SFT does to held-out pretraining perplexity, with and without replay.

    make forgetting                      # writes benchmarks/results/<device>-<date>-forgetting.json and .md
    python benchmarks/forgetting.py --cpt pipeline --replay 0 0.1 --seeds 42

Each base is a continued-pretraining model of the tiny model (recipes/tiny/cpt/config.yaml):
`pipeline` as recipes/tiny/pipeline.yaml trains it (30 steps at 3e-4, a light touch), `recipe` the
recipe's own full epoch at 1.5e-3. From each, SFT (recipes/tiny/sft/config.yaml, one epoch as in the
pipeline) runs with a share of the SFT mixture given to replay: rows of the cpt training text, as a
`format: text` source (data/replay.py), trained with a language-modelling loss on every token
(recipes/tiny/sft/config_replay.yaml is the 10% case from the pipeline's base).

A share is of the trained tokens (`--replay`), what the loss weighs: a tiny answer trains ~5 tokens
and a text ~64, so 10% of the rows would be ~57% of the loss. `--row_replay` adds shares of the rows,
on the first base. Every SFT runs with `max_length` 128 so that no text is cut (conversations are at
most 22 tokens: the 0% run is the recipe's).

Reported for the base and every SFT model: perplexity on the held-out cpt text (data/tiny/cpt/test.jsonl,
`evaluation.text_loss`), greedy exact match on data/tiny/eval.jsonl (`evaluation.exact_match`), and the
run's wall time (the whole script: data, training, saving) and training time. On a shared machine the
times move with its load: the load average at each run's start is recorded.

Measured 2026-11-25 (benchmarks/results/cpu2-2026-11-25-forgetting.md, 3 seeds): SFT takes the held-out
text perplexity from 18.4 (pipeline CPT) or 3.95 (recipe CPT) back to ~105, the random-init model's
level (121). 10% replay keeps it at 7.8 and 4.97 (below the light pipeline CPT's 18.4: replay goes on
pretraining a base that had little of it), 25% at 4.45 and 3.58. Exact match moved by -6.0 and +6.9
points at 10% (within the seeds' spread), and by -8.4 and -6.0 at 25%; 10% of the rows (58% of the
tokens) cost 23.5 points. Replay's texts pad every batch they fall in: training took 1.8x (10%) and
2.6-2.8x (25%) the time of SFT alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TINY = Path(os.environ.get("ALIGNMENT_TINY_DIR", ROOT / "data" / "tiny"))  # the tests point it elsewhere
CPT_RECIPE = ROOT / "recipes" / "tiny" / "cpt" / "config.yaml"
SFT_RECIPE = ROOT / "recipes" / "tiny" / "sft" / "config.yaml"
BASES = {  # name -> overrides of the cpt recipe
    "pipeline": ["--learning_rate", "3.0e-4", "--max_steps", "30"],  # recipes/tiny/pipeline.yaml's cpt stage
    "recipe": [],  # the recipe as written: one epoch at 1.5e-3
}
SFT_OVERRIDES = ["--num_train_epochs", "1", "--max_length", "128"]
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]


# ---------------------------------------------------------------- runs


def run_stage(stage: str, recipe: Path, work: Path, *overrides: str) -> dict[str, Any]:
    """scripts/run_<stage>.py from `work` (where data/tiny resolves); its wall time, training time and log."""
    out = Path(overrides[overrides.index("--output_dir") + 1])
    shutil.rmtree(out, ignore_errors=True)  # a finished run left there would be skipped, not timed
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"run_{stage}.py"), str(recipe), *overrides, *QUIET],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
    )
    wall = time.perf_counter() - start
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed ({out}):\n{done.stderr[-3000:]}")
    train = json.loads((out / "train_results.json").read_text())
    return {"wall_s": round(wall, 1), "train_s": round(train["train_runtime"], 1), "load_at_start": load}


def sft_recipe(work: Path, replay_rows: int) -> Path:
    """The tiny SFT recipe, with `replay_rows` rows of the cpt training text as a replay source."""
    import yaml

    recipe = yaml.safe_load(SFT_RECIPE.read_text())
    if replay_rows:
        recipe["dataset_mixture"]["datasets"].append(
            {"id": "data/tiny/cpt", "split": "train", "format": "text", "samples": replay_rows}
        )
    path = work / "recipes" / f"sft-replay-{replay_rows}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def trained_tokens(work: Path) -> dict[str, float]:
    """What one SFT epoch trains on without replay, and what a replay text adds: rows and label tokens."""
    from alignment.data.mixture import load_mixture
    from alignment.data.replay import tokenize_batch
    from alignment.evaluation import read_jsonl
    from alignment.model import load_tokenizer
    from alignment.recipe import parse_recipe

    cwd = Path.cwd()
    os.chdir(work)  # the recipe's paths are relative to the checkout's layout
    try:
        recipe = parse_recipe("sft", [str(SFT_RECIPE), *SFT_OVERRIDES, "--output_dir", str(work / "count")])
        tokenizer = load_tokenizer(recipe)
        rows = load_mixture(recipe.mixture, "sft")["train"]
        labels = tokenize_batch(
            rows.to_dict(), tokenizer=tokenizer, assistant_only_loss=True, chat_template=None,
            eos_token=tokenizer.eos_token,
        )["labels"]  # fmt: skip
        texts = [row["text"] for row in read_jsonl(TINY / "cpt" / "train.jsonl")]
        text_ids = tokenize_batch(
            {"text": texts, "messages": [[]] * len(texts)}, tokenizer=tokenizer, assistant_only_loss=True,
            chat_template=None, eos_token=tokenizer.eos_token,
        )["labels"]  # fmt: skip
    finally:
        os.chdir(cwd)
    return {
        "conversations": len(rows),
        "conversation_tokens": sum(sum(t != -100 for t in row) for row in labels),
        "text_rows": len(texts),
        "tokens_per_text": statistics.mean(len(ids) for ids in text_ids),
    }


def replay_rows(share: float, unit: str, counts: dict[str, float]) -> int:
    """Rows of replay text that make `share` of the SFT mixture's trained tokens (or rows)."""
    if share <= 0:
        return 0
    if unit == "rows":
        wanted = share / (1 - share) * counts["conversations"]
    else:
        wanted = share / (1 - share) * counts["conversation_tokens"] / counts["tokens_per_text"]
    return min(round(wanted), int(counts["text_rows"]))


def evaluate(model_dir: Path) -> dict[str, Any]:
    from alignment import evaluation

    model, tokenizer = evaluation.load_for_eval(model_dir)
    texts = [row["text"] for row in evaluation.read_jsonl(TINY / "cpt" / "test.jsonl")]
    loss = evaluation.text_loss(model, tokenizer, texts)
    match = evaluation.exact_match(model, tokenizer, evaluation.read_jsonl(TINY / "eval.jsonl"))
    return {
        "text_loss": round(loss["loss"], 4),
        "text_perplexity": round(loss["perplexity"], 3),
        "text_tokens": loss["tokens"],
        "exact_match": round(match["all"], 4),
        "exact_match_by_skill": {k: round(v, 4) for k, v in match.items() if k != "all"},
    }


# ---------------------------------------------------------------- summary


def summarise(runs: list[dict[str, Any]], bases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (base, replay): means over seeds, with each seed's values kept."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["base"], run["unit"], run["share"]), []).append(run)
    rows = []
    for (base, unit, share), group in groups.items():
        ppl = [r["text_perplexity"] for r in group]
        match = [r["exact_match"] for r in group]
        rows.append(
            {
                "base": base,
                "replay": f"{share:.0%} of {unit}" if share else "none",
                "replay_rows": group[0]["replay_rows"],
                "replay_token_share": group[0]["replay_token_share"],
                "seeds": [r["seed"] for r in group],
                "text_perplexity": round(statistics.mean(ppl), 3),
                "text_perplexity_by_seed": ppl,
                "perplexity_vs_base": round(statistics.mean(ppl) / bases[base]["text_perplexity"], 2),
                "exact_match": round(statistics.mean(match), 4),
                "exact_match_by_seed": match,
                "wall_s": round(statistics.mean(r["wall_s"] for r in group), 1),
                "train_s": round(statistics.mean(r["train_s"] for r in group), 1),
                # the least disturbed run: on a shared machine the others carry its neighbours' load
                "wall_s_min": min(r["wall_s"] for r in group),
                "train_s_min": min(r["train_s"] for r in group),
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Forgetting on the tiny pipeline ({results['device']}, {results['date']}; `python benchmarks/forgetting.py`). "
        "Text perplexity: held-out data/tiny/cpt/test.jsonl (200 texts about words no training text has), "
        "`evaluation.text_loss`. Exact match: data/tiny/eval.jsonl (200 prompts), greedy. SFT: "
        "recipes/tiny/sft/config.yaml, one epoch, max_length 128, from the CPT model of its row; "
        f"seeds {', '.join(map(str, results['seeds']))}: perplexity and exact match are their means (exact "
        "match's range in brackets), times the fastest seed's.",
        "",
        "| base (CPT) | model | replay | replay rows | replay share of trained tokens | text perplexity "
        "| x CPT | exact match | train s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, base in results["bases"].items():
        lines.append(
            f"| {name} | CPT ({base['description']}) | - | - | - | {base['text_perplexity']:.2f} | 1.00 "
            f"| {100 * base['exact_match']:.1f}% | {base['train_s']:.0f} | {base['wall_s']:.0f} |"
        )
        for row in (r for r in results["summary"] if r["base"] == name):
            by_seed = row["exact_match_by_seed"]
            spread = f" ({100 * min(by_seed):.1f}-{100 * max(by_seed):.1f})" if len(by_seed) > 1 else ""
            lines.append(
                f"| {name} | SFT | {row['replay']} | {row['replay_rows']} | {row['replay_token_share']:.0%} "
                f"| {row['text_perplexity']:.2f} | {row['perplexity_vs_base']:.2f} "
                f"| {100 * row['exact_match']:.1f}%{spread} | {row['train_s_min']:.0f} | {row['wall_s_min']:.0f} |"
            )
    loads = ", ".join(f"{name} {base['load_at_start']:.1f}" for name, base in results["bases"].items())
    lines += [
        "",
        f"Random-init model (no CPT): text perplexity {results['random_init']['text_perplexity']:.2f}. "
        f"The CPT times are single runs, on a machine shared with other jobs (load average at start: {loads}).",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cpt", nargs="+", choices=list(BASES), default=list(BASES), help="bases (default both)"
    )
    parser.add_argument("--replay", nargs="+", type=float, default=[0.0, 0.1, 0.25],
                        help="replay shares of the trained tokens (default 0 0.1 0.25)")  # fmt: skip
    parser.add_argument("--row_replay", nargs="*", type=float, default=[0.1],
                        help="replay shares of the rows, on the first base (default 0.1)")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2], help="SFT seeds (default 42 1 2)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "forgetting"), help="where the models go")
    parser.add_argument(
        "--output", help="results file (default benchmarks/results/<device>-<date>-forgetting.json)"
    )
    options = parser.parse_args()
    if not (TINY / "model").is_dir():
        raise SystemExit("data/tiny is missing: run `alignment tiny build` (or `make tiny`) first")
    import torch

    work = Path(options.work).resolve()
    (work / "data").mkdir(parents=True, exist_ok=True)
    link = work / "data" / "tiny"
    if not link.exists():
        link.symlink_to(TINY.resolve())
    counts = trained_tokens(work)
    print(f"one SFT epoch without replay: {counts['conversations']} conversations, "
          f"{counts['conversation_tokens']} trained tokens; a text is {counts['tokens_per_text']:.1f} tokens")  # fmt: skip
    cases = [(base, "tokens", share) for base in options.cpt for share in options.replay]
    cases += [(options.cpt[0], "rows", share) for share in options.row_replay]

    bases: dict[str, dict[str, Any]] = {}
    for name in options.cpt:
        out = work / f"cpt-{name}"
        timing = run_stage("cpt", CPT_RECIPE, work, *BASES[name], "--output_dir", str(out))
        description = "30 steps at 3e-4, as the pipeline" if name == "pipeline" else "one epoch at 1.5e-3"
        bases[name] = {"description": description, **timing, **evaluate(out)}
        print(f"cpt {name}: {bases[name]}")
    runs = []
    for seed in options.seeds:  # seed-major: a slow patch of a shared machine falls on every case alike
        for base, unit, share in cases:
            rows = replay_rows(share, unit, counts)
            text_tokens = rows * counts["tokens_per_text"]
            out = work / f"sft-{base}-{unit}{round(100 * share)}-seed{seed}"
            timing = run_stage(
                "sft", sft_recipe(work, rows), work, *SFT_OVERRIDES, "--model_name_or_path",
                str(work / f"cpt-{base}"), "--seed", str(seed), "--output_dir", str(out),
            )  # fmt: skip
            run = {
                "base": base, "unit": unit, "share": share, "seed": seed, "replay_rows": rows,
                "replay_token_share": round(text_tokens / (text_tokens + counts["conversation_tokens"]), 4),
                **timing, **evaluate(out),
            }  # fmt: skip
            runs.append(run)
            for checkpoint in out.glob("checkpoint-*"):  # the recipe's saves: only the final model is kept
                shutil.rmtree(checkpoint)
            print(f"sft {base} {share:.0%} of {unit} seed {seed}: {run}")

    device = f"cpu{os.cpu_count()}" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    random_init = evaluate(TINY / "model")
    results = {
        "device": device.replace(" ", "-").lower(),
        "date": str(datetime.date.today()),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seeds": options.seeds,
        "trained_without_replay": counts,
        "random_init": random_init,
        "bases": bases,
        "summary": summarise(runs, bases),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = (
        Path(options.output)
        if options.output
        else RESULTS / f"{results['device']}-{results['date']}-forgetting.json"
    )
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
