"""`alignment arena`: people compare two anonymous answers and vote; the votes become preference data.

    alignment arena runs/tiny/sft runs/tiny/dpo --output votes.jsonl      # a page at http://127.0.0.1:7860
    alignment arena --leaderboard votes.jsonl                             # win rates and Elo ratings

A person types a prompt; two of the models, drawn at random and shown as "A" and "B", answer; the person
votes A, B, tie or both bad, and only then sees who was who (Chatbot Arena's protocol). Each vote is one
line of `votes.jsonl` in the data layer's canonical preference shape (`prompt`, `chosen`, `rejected` as
message lists) plus `vote`, both models' names and answers, and the time; a recipe lists the file as a
dpo or rm source, and the data layer drops tie and both-bad rows under their own reason ("no preference"),
counted in the data report. Train, compare, collect, train again.

Models are folders, served here by `alignment.serve` (one transformers server for all of them), or the
base URLs of servers already running (`http://host:8000/v1`: `alignment serve` or vLLM on GPU nodes).
The page is Gradio's, as Chatbot Arena's is; this module adds the pairing, the vote file and the ratings.
Single-turn: each prompt starts a fresh comparison.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignment.data.validation import NO_PREFERENCE_VOTES  # recorded, never made into a pair
from alignment.errors import RecipeError

VOTES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
ELO_K, ELO_BASE = 32.0, 1000.0


@dataclass(frozen=True)
class Contender:
    """A model as the arena asks it: its name (shown after the vote, written to the file) and endpoint."""

    name: str
    url: str
    api_key: str | None = None


def vote_row(
    prompt: str, a: tuple[str, str], b: tuple[str, str], vote: str, when: datetime | None = None
) -> dict:
    """One vote as a line of votes.jsonl: `a` and `b` are (model name, answer) as shown on the left and right.

    A and B votes carry `chosen`/`rejected` (one assistant turn each) and the winning and losing models;
    ties and both-bad votes carry null there, so that the file never claims a preference nobody gave."""
    if vote not in VOTES:
        raise RecipeError(f"vote {vote!r}: choose one of {', '.join(VOTES)}")
    row: dict[str, Any] = {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": None,
        "rejected": None,
        "vote": vote,
        "model_a": a[0],
        "model_b": b[0],
        "answer_a": a[1],
        "answer_b": b[1],
        "chosen_model": None,
        "rejected_model": None,
        "time": (when or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
    }
    if vote in ("a", "b"):
        winner, loser = (a, b) if vote == "a" else (b, a)
        row["chosen"] = [{"role": "assistant", "content": winner[1]}]
        row["rejected"] = [{"role": "assistant", "content": loser[1]}]
        row["chosen_model"], row["rejected_model"] = winner[0], loser[0]
    return row


class Arena:
    """The pairing and the vote file behind the page: one pending comparison per browser session."""

    def __init__(self, contenders: list[Contender], output: Path, ask: Callable[[Contender, str], str],
                 seed: int = 0):  # fmt: skip
        self.contenders, self.output, self.ask = contenders, output, ask
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def compare(self, prompt: str) -> dict:
        """Two contenders drawn at random (in random order), each answering `prompt` at the same time."""
        if not prompt.strip():
            raise RecipeError("type a prompt first")
        with self.lock:
            a, b = self.rng.sample(self.contenders, 2)
        with ThreadPoolExecutor(2) as pool:
            answer_a, answer_b = pool.map(lambda c: self.ask(c, prompt), (a, b))
        return {"prompt": prompt, "a": (a.name, answer_a), "b": (b.name, answer_b)}

    def record(self, pending: dict | None, vote: str) -> dict:
        """Append the vote on `pending` (from `compare`) to the file, flushed at once; returns the row."""
        if not pending:
            raise RecipeError("ask a question first: there is nothing to vote on")
        row = vote_row(pending["prompt"], pending["a"], pending["b"], vote)
        with self.lock, open(self.output, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
        return row

    def count(self) -> int:
        return sum(1 for line in self.output.read_text(encoding="utf-8").splitlines() if line.strip())


def build_page(arena: Arena) -> Any:
    """The Gradio page: a prompt, two anonymous answers side by side, four vote buttons, then the reveal."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    import gradio as gr

    with gr.Blocks(title="alignment arena") as page:
        gr.Markdown(
            "## Which answer is better?\nTwo anonymous models answer your prompt. Vote, then see who was who."
        )
        pending = gr.State(None)
        prompt = gr.Textbox(label="Your prompt", elem_id="prompt", lines=2)
        ask = gr.Button("Ask both", variant="primary", elem_id="ask")
        with gr.Row():
            answer_a = gr.Textbox(label="Model A", elem_id="answer_a", interactive=False, lines=6)
            answer_b = gr.Textbox(label="Model B", elem_id="answer_b", interactive=False, lines=6)
        with gr.Row():
            buttons = {vote: gr.Button(label, elem_id=f"vote_{vote}") for vote, label in VOTES.items()}
        status = gr.Markdown(elem_id="status")

        def on_ask(text: str) -> tuple:
            try:
                comparison = arena.compare(text)
            except RecipeError as error:
                return None, "", "", f"**{error}**"
            return comparison, comparison["a"][1], comparison["b"][1], "Now vote: which answer is better?"

        ask.click(on_ask, inputs=prompt, outputs=[pending, answer_a, answer_b, status])
        prompt.submit(on_ask, inputs=prompt, outputs=[pending, answer_a, answer_b, status])

        for vote, button in buttons.items():

            def on_vote(current: dict | None, vote: str = vote) -> tuple:
                try:
                    row = arena.record(current, vote)
                except RecipeError as error:
                    return current, f"**{error}**"
                count = arena.count()
                return None, (f"Recorded: {VOTES[vote]}. A was **{row['model_a']}**, B was **{row['model_b']}**. "
                              f"{count} vote{'s' if count != 1 else ''} in {arena.output}.")  # fmt: skip

            button.click(on_vote, inputs=pending, outputs=[pending, status])
    return page


def contenders_for(
    models: list[str], names: list[str] | None, api_key: str | None
) -> tuple[list[Contender], Any]:
    """Each model as a contender: URLs as they are, folders behind one local server started here (returned,
    to be stopped). Every folder is checked, and names must differ, before anything loads."""
    from alignment.serve import (
        BackgroundServer,
        build_app,
        check_names,
        check_serving_installed,
        prepare_models,
    )

    if len(models) < 2:
        raise RecipeError("the arena needs at least two models to compare")
    if names:
        check_names(names, len(models))
    urls = {i: m for i, m in enumerate(models) if m.startswith(("http://", "https://"))}
    resolved = [
        names[i] if names else served_name(m, api_key) if i in urls else m for i, m in enumerate(models)
    ]
    check_names(resolved, len(models))  # a URL's name comes from its server
    folders = [i for i in range(len(models)) if i not in urls]
    server = None
    contenders = {i: Contender(resolved[i], urls[i].rstrip("/"), api_key) for i in urls}
    if folders:
        check_serving_installed()
        served = prepare_models([models[i] for i in folders], [resolved[i] for i in folders])
        server = BackgroundServer(build_app(served))
        contenders |= {i: Contender(resolved[i], server.url) for i in folders}
    return [contenders[i] for i in range(len(models))], server


def served_name(url: str, api_key: str | None) -> str:
    """The first model a running OpenAI-compatible server lists (`/v1/models`)."""
    import urllib.request

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/models", headers=headers),
                                    timeout=30) as response:  # fmt: skip
            return json.loads(response.read())["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise RecipeError(f"{url}: no model listed at /models ({error}); is the server up?") from None


def run_arena(options: Any) -> None:
    """`alignment arena`: the leaderboard of a vote file, or the page over the given models."""
    if options.leaderboard:
        if options.models:
            raise RecipeError("--leaderboard reads a vote file; give it no models")
        print(format_leaderboard(leaderboard(read_votes(Path(options.leaderboard)))))
        return
    if not options.output:
        raise RecipeError("--output votes.jsonl is required: the file each vote is appended to")
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise RecipeError("the arena's page needs Gradio: pip install -e '.[arena]'")
    output = Path(options.output)
    if output.is_dir() or not output.parent.is_dir():
        raise RecipeError(f"--output {output}: give a file in an existing folder")
    if output.exists():
        read_votes(output)  # appending to a file that is not a vote file would spoil it
    output.touch()
    api_key = None
    if options.api_key_env:
        from alignment.judge import api_key_from_env

        api_key = api_key_from_env(options.api_key_env)
    contenders, server = contenders_for(options.models, options.names, api_key)

    def ask(contender: Contender, prompt: str) -> str:
        from alignment.judge import ask_judge

        messages = [{"role": "user", "content": prompt}]
        return ask_judge(contender.url, contender.name, messages, api_key=contender.api_key,
                         max_tokens=options.max_tokens, temperature=options.temperature)  # fmt: skip

    arena = Arena(contenders, output, ask, seed=options.seed)
    print(f"arena: {len(contenders)} models, votes appended to {output} ({arena.count()} there now)")
    try:
        build_page(arena).launch(server_name=options.host, server_port=options.port, quiet=False)
    finally:
        if server is not None:
            server.stop()


def read_votes(path: Path) -> list[dict]:
    """The votes of a vote file, each checked; a one-line error names the file and line at fault."""
    from alignment.data.sources import parse_json_line

    if not path.is_file():
        raise RecipeError(f"{path}: no vote file there")
    votes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = parse_json_line(path, number, line)
        if row is None:
            continue
        if row.get("vote") not in VOTES:
            raise RecipeError(
                f"{path}:{number}: vote is {row.get('vote')!r}; expected one of {', '.join(VOTES)}"
            )
        if not all(isinstance(row.get(k), str) and row[k] for k in ("model_a", "model_b")):
            raise RecipeError(f"{path}:{number}: model_a and model_b must name the two models")
        if row["model_a"] == row["model_b"]:
            raise RecipeError(f"{path}:{number}: a model compared with itself ({row['model_a']!r})")
        votes.append(row)
    return votes


def leaderboard(votes: list[dict]) -> list[dict]:
    """Per model: games, wins, losses, ties, both-bad votes, win rate and Elo rating, best first.

    Win rate = (wins + half the ties and both-bad votes) / games. Elo: every model starts at 1000 and each
    vote, in file order (the order people gave them), moves the two ratings by K=32 times (score -
    expected score), a tie or both-bad vote scoring 1/2 each, as Chatbot Arena's online Elo did."""
    table: dict[str, dict] = {}
    for vote in votes:
        for name in (vote["model_a"], vote["model_b"]):
            table.setdefault(name, {"model": name, "games": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0,
                                    "elo": ELO_BASE})  # fmt: skip
        a, b = table[vote["model_a"]], table[vote["model_b"]]
        score_a = {"a": 1.0, "b": 0.0}.get(vote["vote"], 0.5)
        expected_a = 1 / (1 + math.pow(10, (b["elo"] - a["elo"]) / 400))
        a["elo"], b["elo"] = (
            a["elo"] + ELO_K * (score_a - expected_a),
            b["elo"] - ELO_K * (score_a - expected_a),
        )
        for side, won in ((a, score_a == 1.0), (b, score_a == 0.0)):
            side["games"] += 1
            if vote["vote"] in NO_PREFERENCE_VOTES:
                side["ties" if vote["vote"] == "tie" else "both_bad"] += 1
            else:
                side["wins" if won else "losses"] += 1
    for row in table.values():
        row["win_rate"] = (row["wins"] + (row["ties"] + row["both_bad"]) / 2) / row["games"]
    return sorted(table.values(), key=lambda r: (-r["elo"], r["model"]))


def format_leaderboard(rows: list[dict]) -> str:
    """The leaderboard as a Markdown table (it reads as plain text in a terminal too)."""
    if not rows:
        return "no votes yet"
    lines = [
        "| model | Elo | win rate | games | wins | losses | ties | both bad |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['elo']:.0f} | {r['win_rate']:.1%} | {r['games']} | {r['wins']} | {r['losses']} "
              f"| {r['ties']} | {r['both_bad']} |" for r in rows]  # fmt: skip
    votes = sum(r["games"] for r in rows) // 2
    return "\n".join([*lines, f"\n{votes} votes; Elo: start 1000, K=32, in vote order"])


def add_arena_arguments(parser: Any) -> None:
    parser.add_argument("models", nargs="*", help="Model folders (served here) or base URLs of running "
                        "OpenAI-compatible servers (http://host:8000/v1); at least two.")  # fmt: skip
    parser.add_argument("--output", metavar="VOTES.jsonl", help="The file each vote is appended to.")
    parser.add_argument(
        "--leaderboard", metavar="VOTES.jsonl", help="Print win rates and Elo ratings of a vote file."
    )
    parser.add_argument("--names", nargs="+", help="A name per model (default: the folder as given, or what a "
                        "server lists): shown after each vote and written to the file.")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="Address of the page (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=7860, help="Port of the page (default 7860).")
    parser.add_argument(
        "--max_tokens", type=int, default=256, help="Longest answer, in tokens (default 256)."
    )
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature (0: greedy).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the draw of each pair (default 0).")
    parser.add_argument(
        "--api_key_env", metavar="VAR", help="Environment variable holding the key of URL models."
    )
