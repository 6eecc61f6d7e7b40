"""The LLM judge: verdict parsing, scripted judges whose numbers are known by hand, and a judge run
against the tiny model served locally.

A scripted judge is a real HTTP endpoint defined here that answers each chat with a rule (always "[[A]]":
pure position bias; "the answer with the marker wins"; "grade = the number in the answer"), so every
count and rate it leads to can be worked out by hand.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alignment import secrets
from alignment.errors import RecipeError
from alignment.judge import (
    answer_questions,
    api_key_from_env,
    ask_judge,
    check_judge,
    judge_pairwise,
    judge_scores,
    pair_outcome,
    parse_rating,
    parse_verdict,
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@contextmanager
def scripted_judge(answer: Callable[[str], str | tuple[int, str]]) -> Iterator[dict]:
    """A local OpenAI-compatible endpoint whose reply to a chat is `answer(last user message)`, or an
    (HTTP status, body) pair; yields its `url` and the `requests` it received (bodies and headers)."""
    seen: dict = {"requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen["requests"].append({"body": body, "authorization": self.headers.get("Authorization")})
            reply = answer(body["messages"][-1]["content"])
            status, text = reply if isinstance(reply, tuple) else (200, reply)
            message = {"role": "assistant", "content": text}
            payload = (
                {"choices": [{"index": 0, "message": message}]}
                if status == 200
                else {"error": {"message": text}}
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}/v1", **seen}
    finally:
        server.shutdown()
        server.server_close()


def answers_in(prompt: str) -> tuple[str, str]:
    """Answers A and B of a pairwise judge prompt."""
    a = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", prompt, re.S)
    b = re.search(r"\[Answer B\]\n(.*?)\n\[End of answer B\]", prompt, re.S)
    return a.group(1), b.group(1)


def marker_judge(prompt: str) -> str:
    """Prefers the answer that says GOOD; a tie when both or neither do; no verdict on a `skip` question."""
    if "skip" in prompt:
        return "Both answers are fine, I think."
    a, b = ("GOOD" in text for text in answers_in(prompt))
    return "Answer A is right. [[A]]" if a > b else "B wins. [[B]]" if b > a else "Equal. [[tie]]"


# Parsing


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("The answer reverses the word correctly and says nothing else.\n\nRating: [[9]]", 9),
        ("Correct, but terse.\nRating: [[ 7 ]]\nI hope this helps!", 7),
        ("rating: [[10]]", 10),
        ("The answer is wrong.\nRating: [[1]]", 1),
        ("The grade is [[4]].", 4),  # the label is optional, the double brackets are not
        ("First impression Rating: [[6]], and after a second look: Rating: [[6]]", 6),  # repeated: fine
        ("Rating: [[0]]", None),  # outside 1..10
        ("Rating: [[11]]", None),
        ("Rating: [[7.5]]", None),  # not a whole grade
        ("Rating: [[-3]]", None),
        ("Rating: [[3]] ... on reflection, Rating: [[8]]", None),  # two different grades: ambiguous
        ("I would give this answer a 7 out of 10.", None),
        ("Rating: [7]", None),
        ("Rating: [[N]]", None),
        ("", None),
    ],
)
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Assistant A reverses the word; B does not.\n[[A]]", "A"),
        ("Answer B is more complete. Final verdict: [[B]]", "B"),
        ("Both are equally correct. [[tie]]", "tie"),
        ("[[Tie]]", "tie"),
        ("[[ b ]]", "B"),
        ("I pick [[A]]. To repeat: [[A]]", "A"),
        ("[[A]] ... no wait, [[B]]", None),  # two different verdicts: ambiguous
        ("Answer A is better.", None),
        ("[[C]]", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize(
    ("first", "second", "outcome"),  # first: the model's answer shown as A; second: shown as B
    [
        ("A", "B", "win"),
        ("A", "tie", "win"),
        ("tie", "B", "win"),
        ("B", "A", "loss"),
        ("tie", "A", "loss"),
        ("tie", "tie", "tie"),
        ("A", "A", "inconsistent"),  # the judge always picks the first position
        ("B", "B", "inconsistent"),
        (None, "B", "unparseable"),
        ("A", None, "unparseable"),
    ],
)
def test_pair_outcome(first, second, outcome):
    assert pair_outcome(first, second) == outcome


# Scripted judges: numbers by hand

QUESTIONS = ["reverse abc", "upper xy", "sort cab", "count abcd"]


def test_a_judge_with_pure_position_bias_gives_a_win_rate_of_one_half():
    with scripted_judge(lambda prompt: "The first answer is better. [[A]]") as judge:
        result = judge_pairwise(QUESTIONS, ["cba", "XY", "abc", "4"], ["abc", "xy", "cab", "5"],
                                url=judge["url"], model="scripted")  # fmt: skip
    # each question: model as A wins, model as B loses -> inconsistent, a tie
    assert (result["wins"], result["losses"], result["ties"], result["inconsistent"]) == (0, 0, 4, 4)
    assert (result["judged"], result["unparseable"], result["win_rate"]) == (4, 0, 0.5)
    assert all(r["verdicts"] == ["A", "A"] and r["outcome"] == "inconsistent" for r in result["records"])
    # both orders asked: 8 requests, each answer once in each position
    prompts = [r["body"]["messages"][-1]["content"] for r in judge["requests"]]
    assert sorted(answers_in(p) for p in prompts) == sorted(
        [("cba", "abc"), ("abc", "cba"), ("XY", "xy"), ("xy", "XY"), ("abc", "cab"), ("cab", "abc"),
         ("4", "5"), ("5", "4")]
    )  # fmt: skip


def test_a_judge_that_prefers_the_marked_answer():
    model = ["GOOD cba", "GOOD XY", "GOOD abc", "GOOD 4"]
    with scripted_judge(marker_judge) as judge:
        result = judge_pairwise(QUESTIONS, model, ["abc", "xy", "cab", "5"], url=judge["url"], model="s")
    assert (result["wins"], result["win_rate"], result["judged"]) == (4, 1.0, 4)

    # win, loss, tie (both marked), win, and a question whose replies carry no verdict
    questions = [*QUESTIONS, "skip this one"]
    model = ["GOOD cba", "XY", "GOOD abc", "GOOD 4", "GOOD"]
    baseline = ["abc", "GOOD xy", "GOOD cab", "5", "x"]
    with scripted_judge(marker_judge) as judge:
        result = judge_pairwise(questions, model, baseline, url=judge["url"], model="s", workers=3)
    assert [r["outcome"] for r in result["records"]] == ["win", "loss", "tie", "win", "unparseable"]
    assert (result["wins"], result["losses"], result["ties"], result["inconsistent"]) == (2, 1, 1, 0)
    assert (result["judged"], result["unparseable"], result["questions"]) == (4, 1, 5)
    assert result["win_rate"] == (2 + 0.5) / 4
    assert result["records"][4]["replies"] == ["Both answers are fine, I think."] * 2


def test_ratings_give_the_exact_mean_and_count_unparseable_replies():
    def grade_the_number(prompt: str) -> str:
        number = re.search(r"score (\d+)", prompt)
        return f"A fair answer.\nRating: [[{number.group(1)}]]" if number else "I cannot rate this."

    answers = ["score 3", "score 8", "score 10", "no number here", "score 11"]
    with scripted_judge(grade_the_number) as judge:
        result = judge_scores(["q1", "q2", "q3", "q4", "q5"], answers, url=judge["url"], model="grader",
                              api_key="sk-test-0123456789", max_tokens=50)  # fmt: skip
    assert [r["rating"] for r in result["records"]] == [3, 8, 10, None, None]
    assert (result["rated"], result["unparseable"], result["questions"]) == (3, 2, 5)
    assert result["mean_rating"] == pytest.approx((3 + 8 + 10) / 3)
    assert result["records"][3]["reply"] == "I cannot rate this."
    # what the endpoint received: the judge's name, greedy decoding, the limit, the key as a bearer token
    body = judge["requests"][0]["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("grader", 0.0, 50)
    assert {r["authorization"] for r in judge["requests"]} == {"Bearer sk-test-0123456789"}


def test_endpoint_errors_are_one_line_and_name_the_url(monkeypatch):
    calls = []

    def flaky(prompt: str) -> str | tuple[int, str]:
        calls.append(prompt)
        return (503, "overloaded") if len(calls) == 1 else "Rating: [[5]]"

    chat = [{"role": "user", "content": "hi"}]
    with scripted_judge(flaky) as judge:
        assert ask_judge(judge["url"], "m", chat) == "Rating: [[5]]"  # a 5xx is retried
    assert len(calls) == 2

    key = "sk-secret-abcdefghijkl"
    with scripted_judge(lambda prompt: (401, f"Incorrect API key provided: {key}")) as judge:
        with pytest.raises(RecipeError, match=r"refused the request \(HTTP 401") as refused:
            ask_judge(judge["url"], "m", chat, api_key=key)
    assert judge["url"] in str(refused.value) and key not in str(refused.value)

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(
        RecipeError, match=rf"http://127.0.0.1:{port}/v1/chat/completions unreachable after 2"
    ):
        ask_judge(f"http://127.0.0.1:{port}/v1", "m", chat, retries=1)


def test_api_key_comes_from_the_named_variable_and_is_redacted(monkeypatch):
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST", raising=False)
    with pytest.raises(RecipeError, match="environment variable JUDGE_KEY_FOR_TEST is not set"):
        api_key_from_env("JUDGE_KEY_FOR_TEST")
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "sk-judge-9876543210")
    assert api_key_from_env("JUDGE_KEY_FOR_TEST") == "sk-judge-9876543210"
    assert secrets.redact("key=sk-judge-9876543210") == f"key={secrets.REDACTED}"


# Inputs and refusals


def test_check_judge_reads_questions_and_baseline_answers(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    rows = [
        {"question": "reverse abc"},
        {"prompt": "upper xy"},
        {"prompt": [system, {"role": "user", "content": "sort cab"}]},
        {"prompt": [{"role": "user", "content": "count abcd"}], "question": "How many letters in abcd?"},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    baseline = write_jsonl(tmp_path / "b.jsonl", [{"answer": a} for a in ["abc", "xy", "cab", "5"]])
    inputs = check_judge(str(questions), "http://127.0.0.1:8000/v1", "judge", baseline=str(baseline))
    assert inputs["questions"] == ["reverse abc", "upper xy", "sort cab", "How many letters in abcd?"]
    assert inputs["prompts"][0] == [{"role": "user", "content": "reverse abc"}]
    assert inputs["prompts"][2] == [system, {"role": "user", "content": "sort cab"}]
    assert inputs["prompts"][3] == [{"role": "user", "content": "count abcd"}]
    assert (inputs["baseline_answers"], inputs["baseline_model"]) == (["abc", "xy", "cab", "5"], None)
    first_two = check_judge(str(questions), "https://example.org/v1", "judge", str(baseline), max_rows=2)
    assert (len(first_two["prompts"]), first_two["baseline_answers"]) == (2, ["abc", "xy"])


@pytest.mark.parametrize(
    ("lines", "url", "baseline", "message"),
    [
        (None, "http://h/v1", None, r"cannot read .*missing\.jsonl"),
        (['{"question": "a"}', "{not json"], "http://h/v1", None, r"q\.jsonl:2: not valid JSON"),
        (['{"question": "a"}', "", '{"answer": "b"}'], "http://h/v1", None, r"q\.jsonl line 3: no question"),
        (['{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'],
         "http://h/v1", None, r"line 1: `prompt` must end with a user turn"),
        (['{"prompt": [{"role": "user"}]}'], "http://h/v1", None,
         r"line 1: prompt\[0\] is not a chat message"),
        (['{"prompt": 3}'], "http://h/v1", None, r"line 1: `prompt` must be a string or a list"),
        ([], "http://h/v1", None, r"q\.jsonl: no questions"),
        (['{"question": "a"}'], "localhost:8000", None, r"judge URL 'localhost:8000' must look like http"),
        (['{"question": "a"}', '{"question": "b"}'], "http://h/v1", ['{"answer": "x"}'],
         r"b\.jsonl: 1 answers for 2 questions"),
        (['{"question": "a"}', '{"question": "b"}'], "http://h/v1", ['{"answer": "x"}', '{"text": "y"}'],
         r"b\.jsonl line 2: no `answer`"),
        (['{"question": "a"}', '{"question": "b"}'], "http://h/v1",
         ['{"answer": "x", "question": "a"}', '{"answer": "y", "question": "c"}'],
         r"b\.jsonl line 2: its `question` is not question 2"),
        (['{"question": "a"}'], "http://h/v1", "no-such-baseline", r"baseline no-such-baseline not found"),
    ],
)  # fmt: skip
def test_check_judge_refusals_name_the_file_and_line(tmp_path, lines, url, baseline, message):
    questions = tmp_path / ("missing.jsonl" if lines is None else "q.jsonl")
    if lines is not None:
        questions.write_text("\n".join(lines) + "\n")
    if isinstance(baseline, list):
        (tmp_path / "b.jsonl").write_text("\n".join(baseline) + "\n")
        baseline = str(tmp_path / "b.jsonl")
    with pytest.raises(RecipeError, match=message):
        check_judge(str(questions), url, "judge", baseline=baseline)


# A judge run against the tiny model served locally (the server's own tests: test_serve.py)


@pytest.fixture(scope="module")
def tiny_endpoint(sft_model: Path) -> Iterator[str]:
    """The session's tiny SFT model behind `alignment.serve`, on a free local port; yields the base URL."""
    from alignment.serve import BackgroundServer, build_app, prepare_models

    server = BackgroundServer(build_app(prepare_models([str(sft_model)], ["tiny-sft"])))
    yield server.url
    server.stop()


@pytest.mark.slow
def test_judge_run_against_the_tiny_model_served_locally(tiny_endpoint, sft_model, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": q}]} for q in ("reverse abcd", "upper xyz", "sort dcba")]
    questions = write_jsonl(tmp_path / "questions.jsonl", rows)
    baseline = write_jsonl(tmp_path / "baseline.jsonl", [{"answer": a} for a in ("dcba", "XYZ", "abcd")])
    inputs = check_judge(str(questions), tiny_endpoint, "tiny-sft", baseline=str(baseline))
    answers = answer_questions(sft_model, inputs["prompts"], max_new_tokens=8)
    assert len(answers) == 3

    # the tiny model never learned to judge: its replies hold no "[[N]]", and each is counted
    scores = judge_scores(inputs["questions"], answers, url=tiny_endpoint, model="tiny-sft", max_tokens=8)
    unreadable = [r for r in scores["records"] if r["rating"] is None]
    assert scores["rated"] + scores["unparseable"] == scores["questions"] == 3
    assert scores["unparseable"] == len(unreadable) > 0
    assert all(isinstance(r["reply"], str) for r in scores["records"])
    assert scores["mean_rating"] is None if scores["rated"] == 0 else 1 <= scores["mean_rating"] <= 10

    pairwise = judge_pairwise(inputs["questions"], answers, inputs["baseline_answers"], url=tiny_endpoint,
                              model="tiny-sft", max_tokens=8)  # fmt: skip
    assert pairwise["judged"] + pairwise["unparseable"] == 3 and pairwise["unparseable"] > 0
    assert pairwise["unparseable"] == sum(r["outcome"] == "unparseable" for r in pairwise["records"])
    assert all(len(r["replies"]) == 2 for r in pairwise["records"])
