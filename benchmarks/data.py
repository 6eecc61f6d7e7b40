"""Data-layer throughput: mix, convert, validate, deduplicate, decontaminate and tokenise 200k conversations.

    make bench-data                                   # 200k rows, num_proc 1 and 2, side by side
    python benchmarks/data.py --rows 20000 --num_proc 1

Generates its own rows (three formats: OpenAI messages, ShareGPT, Alpaca; 1% exact duplicates and
0.5% invalid rows, dropped with `on_invalid: drop`), builds them with the tiny character-level
tokenizer, and writes rows/s per phase and peak memory to benchmarks/results/<device>-<date>-data.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from".split()
)


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(folder: Path, rows: int, seed: int = 0) -> list[dict]:
    """Three source files (half messages, a quarter each ShareGPT and Alpaca); returns the mixture's sources."""
    rng = random.Random(seed)
    shares = {"messages": rows // 2, "sharegpt": rows // 4, "alpaca": rows - rows // 2 - rows // 4}
    sources = []
    for fmt, count in shares.items():
        path = folder / f"{fmt}.jsonl"
        with path.open("w") as f:
            previous = None
            for i in range(count):
                question, answer = sentence(rng, rng.randint(5, 30)), sentence(rng, rng.randint(5, 60))
                if i % 200 == 7:  # invalid: an empty answer
                    answer = ""
                if fmt == "messages":
                    row = {
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ]
                    }
                elif fmt == "sharegpt":
                    row = {
                        "conversations": [
                            {"from": "human", "value": question},
                            {"from": "gpt", "value": answer},
                        ]
                    }
                else:
                    row = {"instruction": question, "input": "", "output": answer}
                if i % 100 == 3 and previous is not None:  # an exact duplicate of the row before
                    row = previous
                previous = row
                f.write(json.dumps(row) + "\n")
        sources.append({"id": str(path), "on_invalid": "drop"})
    return sources


def peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)  # Linux reports KiB


def run_case(sources: list[dict], tokenizer, rows: int, num_proc: int, cache: Path) -> dict:
    import datasets

    from alignment.data.mixture import MixtureConfig, build_mixture
    from alignment.data.prepare import account_lengths
    from alignment.data.report import DataReport

    datasets.config.HF_DATASETS_CACHE = cache / f"np{num_proc}"  # a cold cache for each case
    mixture = MixtureConfig.from_dict({"datasets": sources})
    start = time.perf_counter()
    data, reports, notes = build_mixture(mixture, "sft", num_proc=num_proc)
    built = time.perf_counter()
    report = DataReport(stage="sft", max_length=128, sources=reports, notes=notes)
    data = account_lengths(data, report, tokenizer, "sft", packing=False, num_proc=num_proc)
    done = time.perf_counter()
    split = report.splits["train"]
    return {
        "num_proc": num_proc,
        "rows_read": sum(r.rows_read for r in reports),
        "invalid": sum(sum(r.invalid.values()) for r in reports),
        "duplicates": sum(r.duplicates for r in reports),
        "rows_trained": split.rows_trained,
        "truncated": split.truncated,
        "mix_convert_validate_dedup_s": round(built - start, 2),
        "mix_rows_per_s": round(rows / (built - start)),
        "tokenise_s": round(done - built, 2),
        "tokenise_rows_per_s": round(split.rows / (done - built)),
        "total_rows_per_s": round(rows / (done - start)),
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--output", help="results file (default benchmarks/results/<device>-<date>-data.json)"
    )
    args = parser.parse_args()

    from datasets.utils.logging import disable_progress_bar

    from alignment.tiny.build import build_tokenizer

    disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = generate(folder, args.rows)
        tokenizer = build_tokenizer(WORDS)
        cases = [run_case(sources, tokenizer, args.rows, n, folder / "cache") for n in args.num_proc]
    result = {
        "benchmark": "data",
        "device": device_name(),
        "date": datetime.date.today().isoformat(),
        "rows": args.rows,
        "python": platform.python_version(),
        "cases": cases,
    }
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.output) if args.output else RESULTS / f"{result['device']}-{result['date']}-data.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    head = ("num_proc", "mix_rows_per_s", "tokenise_rows_per_s", "total_rows_per_s", "peak_rss_mib")
    print("  ".join(head))
    for case in cases:
        print("  ".join(str(case[k]).ljust(len(k)) for k in head))
    print(f"written to {out}", file=sys.stderr)


def device_name() -> str:
    return f"cpu{os.cpu_count()}"


if __name__ == "__main__":
    main()
