"""`alignment serve` latency and tokens per second on a model folder, called with the official openai client.

    make bench-serve                                  # the demo's DPO model (make demo first)
    python benchmarks/serve.py --model runs/tiny/sft --requests 20

Starts `alignment serve MODEL` as a user does (its own process, transformers backend on this machine),
then, side by side in one run: the same greedy replies through `generate_answers` in this process (the
model alone, no server), plain requests (latency of one request), streamed requests (time to the first
token) and 64-token replies (decode tokens per second). Writes benchmarks/results/<device>-<date>-serve.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ("reverse dacz", "upper bvwcd", "sort ylha", "count za", "reverse mkop")
LONG = 64  # tokens of a forced-length reply: decode speed without the early stop of a short answer


def start_server(model: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "alignment.cli", "serve", model, "--port", str(port),
                                "--name", "bench"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"`alignment serve {model}` did not come up")


def summary(seconds: list[float], tokens: list[int]) -> dict:
    return {
        "median_s": round(statistics.median(seconds), 4),
        "p90_s": round(sorted(seconds)[int(0.9 * (len(seconds) - 1))], 4),
        "mean_completion_tokens": round(statistics.mean(tokens), 1),
        "tokens_per_s": round(sum(tokens) / sum(seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/tiny/dpo")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    if not Path(args.model, "config.json").is_file():
        raise SystemExit(f"{args.model}: no model there (make demo builds runs/tiny/dpo)")

    from openai import OpenAI

    from alignment.evaluation import generate_answers, load_for_eval

    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(args.requests)]
    model, tokenizer = load_for_eval(args.model)
    generate_answers(model, tokenizer, chats[:1], max_new_tokens=16)  # warm-up
    direct, direct_tokens = [], []
    for chat in chats:
        start = time.perf_counter()
        reply = generate_answers(model, tokenizer, [chat], max_new_tokens=16)[0]
        direct.append(time.perf_counter() - start)
        direct_tokens.append(
            len(tokenizer(reply, add_special_tokens=False)["input_ids"]) + 1
        )  # + end of turn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = start_server(args.model, port)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        client.chat.completions.create(model="bench", messages=chats[0], max_tokens=16)  # warm-up
        plain, plain_tokens, first_token, streamed, streamed_tokens, long, long_tokens = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for chat in chats:
            start = time.perf_counter()
            reply = client.chat.completions.create(model="bench", messages=chat, max_tokens=16, temperature=0)
            plain.append(time.perf_counter() - start)
            plain_tokens.append(reply.usage.completion_tokens)

            start, first, pieces = time.perf_counter(), None, 0
            for chunk in client.chat.completions.create(model="bench", messages=chat, max_tokens=16, temperature=0,
                                                        stream=True):  # fmt: skip
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter() - start
                    pieces += 1
            streamed.append(time.perf_counter() - start)
            first_token.append(first or streamed[-1])
            streamed_tokens.append(pieces + 1)

            forced = json.dumps({"max_new_tokens": LONG, "min_new_tokens": LONG, "do_sample": False})
            start = time.perf_counter()
            reply = client.chat.completions.create(
                model="bench", messages=chat, extra_body={"generation_config": forced}
            )
            long.append(time.perf_counter() - start)
            long_tokens.append(reply.usage.completion_tokens)
    finally:
        server.terminate()
        server.wait(timeout=30)

    result = {
        "benchmark": "serve",
        "device": f"cpu{os.cpu_count()}",
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "requests": args.requests,
        "python": platform.python_version(),
        "direct_generate_answers": summary(direct, direct_tokens),
        "server_plain": summary(plain, plain_tokens),
        "server_streamed": {
            **summary(streamed, streamed_tokens),
            "first_token_median_s": round(statistics.median(first_token), 4),
        },  # fmt: skip
        f"server_{LONG}_token_replies": summary(long, long_tokens),
    }
    result["server_over_direct_latency"] = round(
        result["server_plain"]["median_s"] / result["direct_generate_answers"]["median_s"], 2
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{result['device']}-{result['date']}-serve.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
