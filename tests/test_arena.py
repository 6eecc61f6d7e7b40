"""`alignment arena`: a person's vote in a real headless browser lands in votes.jsonl as a preference row;
the leaderboard's counts and Elo ratings by hand; the vote file read back as dpo and rm training data."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

from alignment.arena import Arena, Contender, leaderboard, read_votes, vote_row
from alignment.data.mixture import MixtureConfig, build_mixture
from alignment.errors import RecipeError

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_votes(path: Path, votes: list[tuple[str, str, str]]) -> Path:
    """(model_a, model_b, vote) triples as vote rows, answers made up per model."""
    when = datetime(2026, 11, 25, tzinfo=timezone.utc)
    rows = [vote_row(f"question {i}", (a, f"{a} says {i}"), (b, f"{b} says {i}"), vote, when)
            for i, (a, b, vote) in enumerate(votes)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_vote_is_a_canonical_preference_row_and_a_tie_holds_no_pair():
    row = vote_row("reverse ab", ("sft", "ab"), ("dpo", "ba"), "b")
    assert row["prompt"] == [{"role": "user", "content": "reverse ab"}]
    assert (row["chosen"], row["rejected"]) == ([{"role": "assistant", "content": "ba"}],
                                                [{"role": "assistant", "content": "ab"}])  # fmt: skip
    assert (row["chosen_model"], row["rejected_model"], row["model_a"], row["model_b"]) == (
        "dpo",
        "sft",
        "sft",
        "dpo",
    )
    datetime.fromisoformat(row["time"])
    tie = vote_row("reverse ab", ("sft", "ab"), ("dpo", "ba"), "tie")
    assert (tie["chosen"], tie["rejected"], tie["vote"], tie["answer_a"]) == (None, None, "tie", "ab")
    with pytest.raises(RecipeError, match="vote 'c': choose one of a, b, tie, both_bad"):
        vote_row("x", ("sft", "a"), ("dpo", "b"), "c")


def test_leaderboard_counts_and_elo_by_hand(tmp_path):
    votes = read_votes(write_votes(tmp_path / "v.jsonl", [("x", "y", "a"), ("y", "x", "a"), ("x", "z", "tie"),
                                                          ("z", "y", "both_bad"), ("x", "y", "a")]))  # fmt: skip
    board = {row["model"]: row for row in leaderboard(votes)}
    assert (board["x"]["wins"], board["x"]["losses"], board["x"]["ties"], board["x"]["games"]) == (2, 1, 1, 4)
    assert (board["y"]["wins"], board["y"]["losses"], board["y"]["both_bad"], board["y"]["games"]) == (
        1,
        2,
        1,
        4,
    )
    assert (board["z"]["ties"], board["z"]["both_bad"], board["z"]["games"]) == (1, 1, 2)
    assert board["x"]["win_rate"] == pytest.approx((2 + 0.5) / 4) and board["y"]["win_rate"] == pytest.approx(
        1.5 / 4
    )

    def elo(ra: float, rb: float, score: float) -> tuple[float, float]:
        delta = 32 * (score - 1 / (1 + math.pow(10, (rb - ra) / 400)))
        return ra + delta, rb - delta

    x = y = z = 1000.0
    x, y = elo(x, y, 1)  # x beats y: +16 / -16 from equal ratings
    assert (x, y) == (1016.0, 984.0)
    y, x = elo(y, x, 1)
    x, z = elo(x, z, 0.5)
    z, y = elo(z, y, 0.5)
    x, y = elo(x, y, 1)
    assert [board[m]["elo"] for m in "xyz"] == pytest.approx([x, y, z])
    assert [r["model"] for r in leaderboard(votes)] == sorted(
        "xyz", key=lambda m: -{"x": x, "y": y, "z": z}[m]
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"vote": "maybe", "model_a": "x", "model_b": "y"}', r"v.jsonl:2: vote is 'maybe'"),
        ('{"vote": "a", "model_a": "x"}', r"v.jsonl:2: model_a and model_b must name the two models"),
        ('{"vote": "a", "model_a": "x", "model_b": "x"}', r"v.jsonl:2: a model compared with itself"),
        ("{not json", r"v.jsonl:2: not valid JSON"),
    ],
)
def test_a_bad_vote_file_is_refused_naming_the_line(tmp_path, line, message):
    path = write_votes(tmp_path / "v.jsonl", [("x", "y", "a")])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(RecipeError, match=message):
        read_votes(path)


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_votes_train_as_pairs_and_ties_are_counted_not_trained(tmp_path, stage):
    """The loop closes: the vote file is a dpo or rm source as it is; its two A/B votes become the pairs
    (the winner chosen), and its tie and both-bad votes are dropped under their own reason, counted."""
    asked = {"first": lambda p: f"{p[::-1]}", "second": lambda p: p.upper()}
    arena = Arena([Contender(name, "unused") for name in asked], tmp_path / "votes.jsonl",
                  ask=lambda c, prompt: asked[c.name](prompt), seed=3)  # fmt: skip
    arena.output.touch()
    shown = []
    for prompt, vote in [("abc", "a"), ("xyz", "tie"), ("pq", "b"), ("mn", "both_bad")]:
        pending = arena.compare(prompt)
        shown.append((pending, vote))
        arena.record(pending, vote)
    assert arena.count() == 4

    mixture = MixtureConfig.from_dict({"datasets": [{"id": str(arena.output)}]})
    data, reports, _ = build_mixture(mixture, stage)
    assert reports[0].invalid == {"no preference (tie or both bad)": 2}
    pairs = [(row["prompt"][0]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"])
             for row in data["train"]]  # fmt: skip
    expected = []
    for pending, vote in shown:
        if vote in ("a", "b"):
            winner, loser = (pending["a"], pending["b"]) if vote == "a" else (pending["b"], pending["a"])
            expected.append((pending["prompt"], winner[1], loser[1]))
    assert pairs == expected and len(pairs) == 2


def test_the_arena_refuses_bad_requests_in_one_line(tmp_path):
    def alignment(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "alignment.cli", "arena", *args], capture_output=True, text=True
        )

    for args, message in [
        (["only-one", "--output", str(tmp_path / "v.jsonl")], "needs at least two models"),
        (["a", "b"], "--output votes.jsonl is required"),
        (["a", "b", "--output", str(tmp_path / "no" / "v.jsonl")], "give a file in an existing folder"),
        (["a", "--leaderboard", "v.jsonl"], "give it no models"),
        (["--leaderboard", str(tmp_path / "none.jsonl")], "no vote file there"),
        ([str(tmp_path / "m1"), str(tmp_path / "m2"), "--output", str(tmp_path / "v.jsonl")], "m1"),
    ]:
        done = alignment(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not os.environ.get("ALIGNMENT_REQUIRE_BROWSER"),
    reason="needs chromium and chromium-driver (apt); .ci/run installs them and sets ALIGNMENT_REQUIRE_BROWSER",
)
def test_a_person_votes_in_a_real_browser_and_the_row_lands_in_votes_jsonl(sft_model, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from alignment.evaluation import generate_answers, load_for_eval

    early = sft_model / "checkpoint-40"  # a second, different model: the same run halfway
    votes, port = tmp_path / "votes.jsonl", free_port()
    command = [sys.executable, "-m", "alignment.cli", "arena", str(sft_model), str(early), "--names", "final",
               "early", "--output", str(votes), "--port", str(port), "--temperature", "0", "--max_tokens", "12"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    page = f"http://127.0.0.1:{port}/"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "chromium"
    # no background connections: on a closed network Chromium's calls home are refused, many at a time
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900", "--disable-gpu",
                 "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(page, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the arena did not come up:\n{process.stdout.read()[-3000:]}")
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service(DRIVER or "chromedriver"), options=options)
        driver.get(page)
        wait = WebDriverWait(driver, 90)
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        prompt.send_keys("reverse abcd")
        driver.find_element(By.ID, "ask").click()

        def shown(side: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, f"#answer_{side} textarea").get_attribute("value")

        wait.until(lambda d: shown("a") and shown("b"))
        answer_a, answer_b = shown("a"), shown("b")
        if os.environ.get("ARENA_SCREENSHOT"):  # the README's picture: ARENA_SCREENSHOT=docs/arena.png
            driver.save_screenshot(os.environ["ARENA_SCREENSHOT"])
        driver.find_element(By.ID, "vote_a").click()
        wait.until(lambda d: "Recorded" in d.find_element(By.ID, "status").text)
        assert "1 vote in" in driver.find_element(By.ID, "status").text
    finally:
        if driver is not None:
            driver.quit()
        process.terminate()
        process.wait(timeout=30)

    rows = [json.loads(line) for line in votes.read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["vote"] == "a" and {row["model_a"], row["model_b"]} == {"final", "early"}
    assert row["prompt"] == [{"role": "user", "content": "reverse abcd"}]
    assert (row["answer_a"], row["answer_b"]) == (answer_a, answer_b)
    assert (
        row["chosen"] == [{"role": "assistant", "content": answer_a}]
        and row["chosen_model"] == row["model_a"]
    )
    assert row["rejected"] == [{"role": "assistant", "content": answer_b}]
    # the answers are the models' own greedy replies, each under its own name
    for name, folder in (("final", sft_model), ("early", early)):
        model, tokenizer = load_for_eval(folder)
        own = generate_answers(model, tokenizer, [row["prompt"]], max_new_tokens=12)[0]
        assert row["answer_a" if row["model_a"] == name else "answer_b"] == own
