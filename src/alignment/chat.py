"""`alignment chat MODEL_DIR`: a multi-turn chat with a model folder in the terminal, replies streamed.

    alignment chat runs/tiny/sft
    alignment chat runs/zephyr-7b-sft-lora --system_prompt "Answer briefly." --temperature 0.7 --seed 0

The gap it fills: transformers 5.23's `transformers chat` is a client of a running `transformers serve`
(FastAPI, a port, `!`-commands, sampling by default, rendering with rich Live) and cannot load a local
adapter folder. Here the folder is loaded in this process (`load_for_eval` merges an adapter into its
base), each turn goes through the model's own chat template, and the reply streams through the library's
`TextIteratorStreamer`, greedy unless `--temperature` is above 0, so it is the answer `alignment eval`
scores. Each reply ends with a `[N tokens, S s, R tokens/s]` line.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from alignment.errors import RecipeError

PROMPT = "you> "
COMMANDS = "/reset starts over (the system prompt stays), /help lists commands, /exit or Ctrl-D quits"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0 (0 = greedy), got {text!r}")
    return value


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="A model folder, or an adapter folder (merged into its base).")
    parser.add_argument("--system_prompt", metavar="TEXT", help="A system turn; /reset keeps it.")
    parser.add_argument(
        "--max_new_tokens", type=_positive_int, default=256, help="Longest reply, in tokens (default 256)."
    )
    parser.add_argument(
        "--temperature", type=_temperature, default=0.0, help="0 (default): greedy; above 0: sampled."
    )
    parser.add_argument("--seed", type=int, help="Seed for sampling, to repeat a sampled chat.")


def run_chat_command(options: argparse.Namespace) -> None:
    """Refuse a folder that holds no model before loading anything, then load it and chat."""
    folder = Path(options.model_dir)
    if not folder.is_dir():
        raise RecipeError(
            f"alignment chat: {folder} is not a folder; give a model folder (e.g. runs/tiny/sft)"
        )
    if not any((folder / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise RecipeError(f"alignment chat: {folder} holds no model (no config.json or adapter_config.json)")
    with contextlib.suppress(ImportError):  # line editing and history at the prompt, where there is readline
        import readline  # noqa: F401
    try:
        import torch

        from alignment.evaluation import load_for_eval

        model, tokenizer = load_for_eval(folder)
        if options.seed is not None:
            torch.manual_seed(options.seed)
        chat_loop(model, tokenizer, options.system_prompt, options.max_new_tokens, options.temperature,
                  name=str(folder))  # fmt: skip
    except KeyboardInterrupt:  # while loading, or a second Ctrl-C while a reply stops: leave quietly
        print()
        raise SystemExit(130) from None


def chat_loop(model: Any, tokenizer: Any, system_prompt: str | None = None, max_new_tokens: int = 256,
              temperature: float = 0.0, read: Callable[[str], str] = input, write: TextIO = sys.stdout,
              name: str | None = None) -> list[dict]:  # fmt: skip
    """Read lines with `read(PROMPT)` until /exit, EOF or Ctrl-D, answering each; return the conversation.

    `read` and `write` are `input` and stdout in a terminal, and a script and a buffer in tests.
    """
    from alignment.evaluation import decode_step_by_step, is_prompt_learning

    opening = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = list(opening)
    write.write(f"chat with {name or model.name_or_path}: {COMMANDS}\n")
    write.flush()
    while True:
        try:
            line = read(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C at the prompt: quit without a traceback
            write.write("\n")
            return messages
        if not line:
            continue
        if line == "/exit":
            return messages
        if line == "/reset":
            messages = list(opening)
            write.write("conversation cleared" + (" (system prompt kept)" if opening else "") + "\n")
        elif re.fullmatch(r"/\w+", line):  # /help, or a mistyped command: never sent to the model
            write.write(f"commands: {COMMANDS}\n")
        else:
            messages.append({"role": "user", "content": line})
            if is_prompt_learning(
                model
            ):  # prefix tuning: PEFT's generate is not its forward pass (evaluation.py)
                reply = decode_step_by_step(model, tokenizer, messages, max_new_tokens, temperature > 0)
                write.write(reply + "\n")
            else:
                reply = stream_reply(model, tokenizer, messages, max_new_tokens, temperature, write)
            messages.append({"role": "assistant", "content": reply})
        write.flush()


def stream_reply(model: Any, tokenizer: Any, messages: list[dict], max_new_tokens: int, temperature: float,
                 write: TextIO) -> str:  # fmt: skip
    """Write the next assistant turn piece by piece as it is generated, then its token rate; return it.

    `generate` runs in a thread so this one can write what the streamer releases; Ctrl-C sets an event
    that a stopping criterion reads, so the reply ends at the next token and the chat goes on.
    """
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    from alignment.evaluation import end_of_turn_ids

    # the steps of `evaluation.generate_answers` for one prompt, so a greedy reply is the one eval scores
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    interrupted = threading.Event()

    def stop_when_interrupted(input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), interrupted.is_set(), device=input_ids.device)

    sample = temperature > 0
    result: dict[str, Any] = {}

    def generate() -> None:
        try:
            with torch.no_grad():
                # temperature None, not 0, when greedy: no warning about unused sampling settings
                result["ids"] = model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=sample,
                    temperature=temperature if sample else None, top_p=None, top_k=None,
                    eos_token_id=end_of_turn_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id,
                    streamer=streamer, stopping_criteria=StoppingCriteriaList([stop_when_interrupted]),
                )  # fmt: skip
        except Exception as error:  # re-raised below; ending the stream keeps the reader from waiting forever
            result["error"] = error
            streamer.end()

    pieces: list[str] = []
    started = time.perf_counter()
    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    try:
        for piece in streamer:
            pieces.append(piece)
            write.write(piece)
            write.flush()
    except KeyboardInterrupt:
        interrupted.set()
        worker.join()
        rest = "".join(streamer)  # generated before the stop: written too, so the screen and history agree
        pieces.append(rest)
        write.write(rest + " [stopped]")
    worker.join()
    seconds = time.perf_counter() - started
    if "error" in result:
        raise result["error"]
    new_tokens = result["ids"].shape[1] - batch["input_ids"].shape[1]
    write.write(f"\n[{new_tokens} tokens, {seconds:.2f} s, {new_tokens / seconds:.1f} tokens/s]\n")
    return "".join(pieces).strip()
