"""Training throughput: the Alignment Handbook's default configuration against ours, side by side, same run.

    make bench                                   # every case; writes benchmarks/results/<device>-<date>.json
    python benchmarks/train.py --cases sft-30m dpo-30m --steps 8

Each case trains the same model on the same rows twice (or more), each configuration in its own process
(peak memory is the process's own): the **baseline** is the Handbook's recipe as it runs on this hardware
(TRL defaults, bf16 asked for, activation checkpointing on, random padded batches; on a CPU our parser's
fp32 fallback), **ours** is the same recipe with `alignment.speed.fast_defaults` applied, exactly as
`alignment sft|dpo` applies them at launch. Variants we tried and did not make defaults are kept in the
results with their ratios.

Figures per configuration: effective (non-padding) tokens per second over the timed steps, step time, the
share of padding, peak memory (CPU: the process's max RSS; GPU: max allocated), and MFU = 6 x parameters
(without the input embedding, which does no matrix product) x effective tokens/s over the peak of a large
matrix product in the training dtype, measured here (both dtypes are reported). Attention FLOPs are not
counted, so MFU is slightly understated for long rows.

Models are built from configs (random weights, no download): the embedded tiny model (data/tiny, its own
task), and a ~30M-parameter Llama (hidden 512, 6 layers, vocabulary 16384) on generated conversations of
32 to 512 tokens with a long-tailed length distribution, as chat data has. On a GPU the 0.5B Qwen2-shaped
cases run instead (the default where CUDA is present): a 0.5B Qwen2-shaped model at sequence length
2048 in bf16, flash-attn when installed (written by construction, not yet run: no GPU has been lent).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TINY = Path(os.environ.get("ALIGNMENT_TINY_DIR", ROOT / "data" / "tiny"))  # the tests point it elsewhere
WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from".split()
)

# The Handbook's recipes as they would run on this hardware: TRL's defaults plus the keys every Handbook
# recipe sets (bf16, gradient checkpointing); on a CPU our parser's fallback turns bf16 into fp32.
HANDBOOK = {"bf16": True, "activation_checkpointing": True}

# (name, model, stage, variants): every variant runs against the baseline in the same invocation.
# "ours" is what `alignment sft|dpo` chooses (device_fallbacks + apply_fast_defaults); "ours + X" adds X to
# it, "X only" adds X to the baseline: the alternatives measured and kept for the record.
CASES: dict[str, tuple[str, str, dict[str, dict[str, Any]]]] = {
    "sft-tiny": ("tiny", "sft", {"ours": {}}),
    "dpo-tiny": ("tiny", "dpo", {"ours": {}}),
    "sft-30m": (
        "llama-30m",
        "sft",
        {
            "ours": {},
            "bf16 only": {"bf16": True},
            "no checkpointing only": {"activation_checkpointing": False},
            "ours + group_by_length": {"train_sampling_strategy": "group_by_length"},
            "ours + padding_free (no max_length)": {"padding_free": True, "max_length": None},
            "ours + packing (bfd)": {"packing": True},
            "ours + torch_compile": {"torch_compile": True},
        },
    ),
    "sft-qwen0.5b": ("qwen2-0.5b", "sft", {"ours": {}}),  # GPU only
    "dpo-qwen0.5b": ("qwen2-0.5b", "dpo", {"ours": {}}),  # GPU only
    "dpo-30m": (
        "llama-30m",
        "dpo",
        {
            "ours": {},
            "ours + group_by_length": {"train_sampling_strategy": "group_by_length"},
            "ours + precompute_ref_log_probs": {"precompute_ref_log_probs": True},
        },
    ),
}


# ---------------------------------------------------------------- data and models


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def long_tail_words(rng: random.Random, median: int, cap: int) -> int:
    """A lognormal length in words, as chat answers have: most short, a few long."""
    return max(3, min(cap, int(rng.lognormvariate(math.log(median), 0.7))))


def generated_rows(stage: str, count: int, seed: int = 0, scale: int = 1) -> list[dict]:
    """Conversations of ~32-512 characters (= tokens with the character-level tokenizer), x `scale`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = [{"role": "user", "content": words(rng, long_tail_words(rng, 8 * scale, 30 * scale)) + "?"}]
        answer = words(rng, long_tail_words(rng, 20 * scale, 80 * scale)) + "."
        if stage == "sft":
            rows.append({"messages": [*prompt, {"role": "assistant", "content": answer}]})
        else:
            # the rejected answer answers the same prompt: about as long as the chosen one, not independent
            n = len(answer.split())
            other = words(rng, max(3, min(80 * scale, int(n * rng.lognormvariate(0, 0.3))))) + "."
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": other}],
                }
            )
    return rows


def tiny_rows(stage: str, count: int) -> list[dict]:
    folder = TINY / ("sft" if stage == "sft" else "dpo")
    with (folder / "train.jsonl").open() as f:
        return [json.loads(line) for line in itertools.islice(f, count)]


# Models built from a config (random weights, no download): (model_type, dimensions, max_length).
MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    "llama-30m": (
        "llama",
        {"vocab_size": 16384, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6,
         "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 1024,
         "tie_word_embeddings": False, "bos_token_id": None},
        512,
    ),
    "qwen2-0.5b": (  # Qwen2.5-0.5B's shape (494M parameters)
        "qwen2",
        {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
         "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 4096,
         "tie_word_embeddings": True},
        2048,
    ),
}  # fmt: skip


def build_model(name: str, folder: Path) -> tuple[str, int]:
    """A model folder with the tiny tokenizer, and its max_length: the tiny model itself, or one of MODELS."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name == "tiny":
        return str(TINY / "model"), 64
    model_type, dimensions, max_length = MODELS[name]
    tokenizer = AutoTokenizer.from_pretrained(TINY / "model")
    config = AutoConfig.for_model(
        model_type, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dimensions
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), max_length


# ---------------------------------------------------------------- one configuration, in its own process


class TokenCounter:
    """Wraps the trainer's collator to count, per batch, the tokens trained on and the padded slots."""

    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else ids.numel()
        self.batches.append((real, ids.numel()))
        return batch


def peak_memory_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Train `spec['steps']` steps of one configuration; the figures of the timed steps (after warm-up)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from alignment.speed import apply_fast_defaults

    stage, model_dir, steps, warmup = spec["stage"], spec["model"], spec["steps"], spec["warmup"]
    values: dict[str, Any] = {
        "output_dir": spec["output_dir"],
        "per_device_train_batch_size": spec["batch"],
        "max_length": spec["max_length"],
        "learning_rate": 1e-4,
        "max_steps": steps,
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "dataset_num_proc": 1,
        "dataloader_num_workers": 0,
        **HANDBOOK,
    }
    notes: list[str] = []
    on_cpu = not torch.cuda.is_available()
    if not on_cpu:  # as the Handbook's recipes load a model on a GPU: bf16 weights, flash-attn where it runs
        from alignment.hardware import resolve_attn_implementation

        attention = resolve_attn_implementation("flash_attention_2")
        values["model_init_kwargs"] = {"dtype": "bfloat16", "attn_implementation": attention}
    if spec["variant"].startswith(
        "ours"
    ):  # exactly what `alignment sft|dpo` does at launch, then the variant
        from alignment.recipe import device_fallbacks

        notes = device_fallbacks(values, "bf16", explicit={"bf16"})
        values["attn_implementation"] = None if on_cpu else values["model_init_kwargs"]["attn_implementation"]
        notes += apply_fast_defaults(values, stage, explicit={"bf16"})
        values.pop("attn_implementation")  # a model key, not a TRL config key
        values.update(spec["overrides"])
    else:  # the Handbook default, and each variant on top of it: on a CPU in fp32 unless the variant says
        values.update({"bf16": not on_cpu, "use_cpu": on_cpu, **spec["overrides"]})
    if stage == "sft":
        values["assistant_only_loss"] = True

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = spec["rows"]
    dataset = Dataset.from_list(rows)
    if stage == "sft":
        from trl import SFTConfig as Config
        from trl import SFTTrainer as Trainer
    else:
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        values["beta"] = 0.1
    args = Config(**values)

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            times.append(time.perf_counter())

    from alignment.speed import with_pair_length_grouping

    Trainer = with_pair_length_grouping(Trainer)  # noqa: N806 (what alignment.trainers builds)
    started = time.perf_counter()
    trainer = Trainer(model=model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
    init_s = time.perf_counter() - started
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    trainer.add_callback(Clock())
    t0 = time.perf_counter()
    trainer.train()
    timed = slice(warmup, steps)
    real = sum(r for r, _ in counter.batches[timed])
    slots = sum(s for _, s in counter.batches[timed])
    seconds = times[steps - 1] - times[warmup - 1]
    params = (
        sum(p.numel() for p in trainer.model.parameters())
        - trainer.model.get_input_embeddings().weight.numel()
    )
    return {
        "variant": spec["variant"],
        "settings": {k: values[k] for k in sorted(values) if k not in ("output_dir",)},
        "notes": notes,
        "init_s": round(init_s, 2),
        "first_steps_s": round(times[warmup - 1] - t0, 2),
        "step_s": round(seconds / (steps - warmup), 3),
        "timed_steps": steps - warmup,
        "tokens_per_s": round(real / seconds, 1),
        "padding_share": round(1 - real / slots, 3),
        "peak_memory_gib": round(peak_memory_gib(), 3),
        "matmul_params": params,
        "dtype": "bf16" if values.get("bf16") else "fp16" if values.get("fp16") else "fp32",
    }


# ---------------------------------------------------------------- the device's peak


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 8, rounds: int = 3) -> float:
    """FLOP/s of a large square matrix product in `dtype_name`, best of `rounds`: the MFU denominator."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    best = 0.0
    for _ in range(rounds):
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-").lower()
    return f"cpu{os.cpu_count()}"


# ---------------------------------------------------------------- driver


def run_case(name: str, steps: int, warmup: int, work: Path, repeats: int) -> dict[str, Any]:
    """Every configuration of a case in its own process; baseline and ours `repeats` times, interleaved.

    Interleaving (baseline, ours, variants..., baseline, ours) spreads a slow patch of a shared machine
    over both sides instead of one; each figure is the mean of its runs, and the spread is kept.
    """
    model_kind, stage, variants = CASES[name]
    model_dir, max_length = build_model(model_kind, work / model_kind)
    batch = (64 if stage == "sft" else 32) if model_kind == "tiny" else (8 if stage == "sft" else 4)
    count = batch * steps
    scale = 4 if model_kind == "qwen2-0.5b" else 1
    rows = tiny_rows(stage, count) if model_kind == "tiny" else generated_rows(stage, count, scale=scale)
    order = [("baseline", {}), ("ours", {}), *((v, o) for v, o in variants.items() if v != "ours")]
    order += [("baseline", {}), ("ours", {})] * (repeats - 1)
    runs: dict[str, list[dict[str, Any]]] = {}
    for variant, overrides in order:
        spec = {
            "stage": stage,
            "model": model_dir,
            "steps": steps,
            "warmup": warmup,
            "batch": batch,
            "max_length": max_length,
            "rows": rows,
            "variant": variant,
            "overrides": overrides,
            "output_dir": str(work / "out"),
        }
        spec_file = work / "spec.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run(
            [sys.executable, __file__, "--config", str(spec_file)], capture_output=True, text=True, cwd=ROOT
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            runs.setdefault(variant, []).append({"variant": variant, "error": tail})
            print(f"  {name:9} {variant:30} failed: {tail}", flush=True)
            continue
        r = json.loads(lines[-1])
        runs.setdefault(variant, []).append(r)
        print(
            f"  {name:9} {variant:30} {r['tokens_per_s']:9.0f} tokens/s  {r['step_s']:6.2f} s/step  "
            f"padding {r['padding_share']:.0%}  {r['peak_memory_gib']:.2f} GiB",
            flush=True,
        )
    return {"name": name, "model": model_kind, "stage": stage, "configs": [mean_of(v) for v in runs.values()]}


def mean_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's figures over its runs: means, plus each run's tokens/s (the spread)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    out = dict(good[0])
    for key in ("tokens_per_s", "step_s", "peak_memory_gib", "init_s", "first_steps_s"):
        out[key] = round(sum(r[key] for r in good) / len(good), 3)
    out["runs_tokens_per_s"] = [r["tokens_per_s"] for r in good]
    return out


def data_case(rows: int, work: Path, device: str) -> dict[str, Any]:
    """The data preparation of benchmarks/data.py (mix, convert, validate, dedup, tokenise): num_proc 1 vs 2."""
    out = work / "data.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data.py"), "--rows", str(rows), "--output", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    one, two = json.loads(out.read_text())["cases"][:2]
    print(
        f"  data-prep num_proc 1: {one['total_rows_per_s']} rows/s, num_proc 2: {two['total_rows_per_s']} rows/s"
    )
    return {
        "name": f"data-prep ({rows} rows): dataset_num_proc 2 vs 1",
        "device": device,
        "unit": "rows/s",
        "baseline_tokens_per_s": None,
        "ours_tokens_per_s": None,
        "baseline_rows_per_s": one["total_rows_per_s"],
        "ours_rows_per_s": two["total_rows_per_s"],
        "ratio": round(two["total_rows_per_s"] / one["total_rows_per_s"], 2),
        "peak_memory_gib": round(two["peak_rss_mib"] / 1024, 3),
        "mfu": None,
        "kept": True,
    }


def summarise(case: dict[str, Any], peaks: dict[str, float], device: str) -> list[dict[str, Any]]:
    """One entry per variant against the baseline: the `cases` list of the results file."""
    configs = {c["variant"]: c for c in case["configs"]}
    base = configs.get("baseline", {})
    out = []
    for variant, c in configs.items():
        if variant == "baseline" or "error" in c or "error" in base:
            continue
        peak = peaks[c["dtype"] if c["dtype"] in peaks else "fp32"]
        out.append(
            {
                "name": case["name"] if variant == "ours" else f"{case['name']}: {variant}",
                "device": device,
                "baseline_tokens_per_s": base["tokens_per_s"],
                "ours_tokens_per_s": c["tokens_per_s"],
                "ratio": round(c["tokens_per_s"] / base["tokens_per_s"], 2),
                "peak_memory_gib": c["peak_memory_gib"],
                "baseline_peak_memory_gib": base["peak_memory_gib"],
                "mfu": round(6 * c["matmul_params"] * c["tokens_per_s"] / peak, 3),
                "baseline_mfu": round(6 * base["matmul_params"] * base["tokens_per_s"] / peaks["fp32"], 3),
                "kept": variant == "ours",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="default: the CPU or the GPU cases")
    parser.add_argument("--steps", type=int, default=12, help="steps per configuration (default 12)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    parser.add_argument("--data_rows", type=int, default=20_000, help="rows of the data case (0: skip it)")
    parser.add_argument("--output", help="results file (default benchmarks/results/<device>-<date>.json)")
    parser.add_argument(
        "--keep_other_cases", action="store_true", help="keep today's results of the cases not run now"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of baseline and ours, interleaved")
    parser.add_argument("--config", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    options = parser.parse_args()
    if options.config:
        print(json.dumps(run_config(json.loads(Path(options.config).read_text()))))
        return
    if not (TINY / "model").is_dir():
        raise SystemExit("data/tiny is missing: run `alignment tiny build` (or `make tiny`) first")
    import torch

    gpu = torch.cuda.is_available()
    options.cases = options.cases or [name for name in CASES if ("qwen" in name) == gpu]
    device = device_name()
    peaks = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16")}
    print(
        f"{device}: matmul peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s"
    )
    cases, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in options.cases:
            work = Path(tmp) / name
            work.mkdir()
            case = run_case(name, options.steps, options.warmup, work, options.repeats)
            raw.append(case)
            cases.extend(summarise(case, peaks, device))
        if options.data_rows:
            cases.append(data_case(options.data_rows, Path(tmp), device))
    print(f"\n{'case':45} {'baseline tok/s':>14} {'ours tok/s':>11} {'ratio':>6} {'GiB':>6} {'MFU':>6}")
    for c in cases:
        if c["ours_tokens_per_s"] is None:
            print(
                f"{c['name']:45} {c['baseline_rows_per_s']:14.0f} {c['ours_rows_per_s']:11.0f} {c['ratio']:6.2f}  rows/s"
            )
            continue
        print(
            f"{c['name']:45} {c['baseline_tokens_per_s']:14.0f} {c['ours_tokens_per_s']:11.0f} "
            f"{c['ratio']:6.2f} {c['peak_memory_gib']:6.2f} {c['mfu']:6.1%}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(options.output) if options.output else RESULTS / f"{device}-{datetime.date.today()}.json"
    if out.is_file() and options.keep_other_cases:  # a rerun of some cases replaces only those
        before = json.loads(out.read_text())
        names = {c["name"] for c in raw}
        raw = [c for c in before.get("raw", []) if c["name"] not in names] + raw
        cases = [c for c in before.get("cases", []) if c["name"].split(":")[0] not in names and not (
            c["name"].startswith("data-prep") and options.data_rows)] + cases  # fmt: skip
    out.write_text(
        json.dumps(
            {
                "device": device,
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "matmul_peak_flops": {k: round(v) for k, v in peaks.items()},
                "steps": options.steps,
                "repeats": options.repeats,
                "warmup": options.warmup,
                "gpu_cases": "not measured: no GPU was available" if not torch.cuda.is_available() else None,
                "cases": cases,
                "raw": raw,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
