"""An LLM judge behind any OpenAI-compatible endpoint: answers graded from 1 to 10 (MT-Bench style), and
a win rate against a baseline's answers (AlpacaEval style), each pair asked in both orders.

    from alignment.judge import check_judge, answer_questions, judge_scores
    inputs = check_judge("questions.jsonl", "http://127.0.0.1:8000/v1", "judge-model")
    answers = answer_questions("runs/tiny/sft", inputs["prompts"], max_new_tokens=256)
    print(judge_scores(inputs["questions"], answers, url=..., model="judge-model")["mean_rating"])

Questions come from local JSONL: a row holds `question` (text) or `prompt` (text, or chat messages whose
last user turn is the judge's question); with both, the model answers `prompt` and the judge reads
`question`. Baseline answers are a JSONL with an `answer` per row, in the questions' order, or come from
a baseline model folder. A judge reply without a readable verdict is counted as `unparseable` and
reported, never dropped in silence. The prompts below are written for this project.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alignment import secrets
from alignment.errors import RecipeError

logger = logging.getLogger(__name__)

JUDGE_SYSTEM = "You are a careful and impartial judge of the answers AI assistants give to users."

SCORE_PROMPT = """Grade the assistant's answer to the user's question below.

Weigh correctness first, then how helpful, relevant, complete and clear the answer is. Length is not a \
merit in itself. Explain your assessment briefly, then end with a line holding only your grade, an \
integer from 1 (useless or wrong) to 10 (excellent), written exactly as: Rating: [[N]]

[Question]
{question}

[Assistant's answer]
{answer}
[End of the assistant's answer]"""

PAIRWISE_PROMPT = """Two AI assistants answered the same user question. Decide which answer is better.

Weigh correctness first, then how helpful, relevant, complete and clear each answer is. The order of the \
two answers says nothing about their quality, and length is not a merit in itself. Compare them briefly, \
then end with a line holding only your verdict: [[A]] if answer A is better, [[B]] if answer B is \
better, [[tie]] if neither is better.

[Question]
{question}

[Answer A]
{answer_a}
[End of answer A]

[Answer B]
{answer_b}
[End of answer B]"""

_BRACKETED = re.compile(r"\[\[\s*([^\[\]]*?)\s*\]\]")
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


def parse_rating(reply: str) -> int | None:
    """The grade in `Rating: [[N]]` (the `Rating:` label optional), or None: no grade, a grade outside
    1..10 or not whole, or two different grades (ambiguous; the same grade repeated is fine)."""
    grades = {g for g in _BRACKETED.findall(reply or "") if _NUMBER.fullmatch(g)}
    if len(grades) != 1:
        return None
    grade = grades.pop()
    return int(grade) if grade.isdigit() and 1 <= int(grade) <= 10 else None


def parse_verdict(reply: str) -> str | None:
    """ "A", "B" or "tie" from `[[A]]`, `[[B]]` or `[[tie]]` (any case), or None: none of them, or more
    than one different verdict."""
    names = {"a": "A", "b": "B", "tie": "tie"}
    verdicts = {names[v.lower()] for v in _BRACKETED.findall(reply or "") if v.lower() in names}
    return verdicts.pop() if len(verdicts) == 1 else None


def score_messages(question: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": SCORE_PROMPT.format(question=question, answer=answer)}]  # fmt: skip


def pairwise_messages(question: str, answer_a: str, answer_b: str) -> list[dict]:
    prompt = PAIRWISE_PROMPT.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def api_key_from_env(name: str = "OPENAI_API_KEY") -> str:
    """The judge's API key from the environment variable `name`, registered as a secret so that nothing we
    write shows it; a RecipeError naming the variable (never its value) when it is unset."""
    key = os.environ.get(name, "").strip()
    if not key:
        raise RecipeError(f"the judge's API key: environment variable {name} is not set")
    secrets.register(key)
    return key


def ask_judge(url: str, model: str, messages: list[dict], api_key: str | None = None, timeout: float = 120,
              max_tokens: int = 1024, temperature: float = 0.0, retries: int = 2) -> str:  # fmt: skip
    """The reply of `model` behind the OpenAI-compatible endpoint `url` (its base, like
    http://127.0.0.1:8000/v1) to a chat. Connection errors, timeouts and 5xx are retried `retries` times
    (1 s, 2 s, ... apart); then, or on a 4xx, a one-line RecipeError naming the URL. A reply with no
    text content reads as "" (an unparseable verdict, counted by the caller)."""
    endpoint = url.rstrip("/")
    endpoint += "" if endpoint.endswith("/chat/completions") else "/chat/completions"
    payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    headers = {"Content-Type": "application/json"}
    if api_key:
        secrets.register(api_key)  # so that no error message or log line of ours shows it
        headers["Authorization"] = f"Bearer {api_key}"
    for attempt in range(retries + 1):
        request = urllib.request.Request(endpoint, json.dumps(payload).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.loads(response.read())
            break
        except urllib.error.HTTPError as error:
            problem = f"HTTP {error.code}: {_error_message(error)}"
            if error.code < 500:
                raise RecipeError(f"judge endpoint {endpoint} refused the request ({problem})") from None
        except (OSError, http.client.HTTPException) as error:  # refused, unknown host, timeout, reset
            problem = str(getattr(error, "reason", None) or error)
        except json.JSONDecodeError:
            raise RecipeError(f"judge endpoint {endpoint} answered with something other than JSON") from None
        if attempt == retries:
            raise RecipeError(f"judge endpoint {endpoint} unreachable after {retries + 1} tries ({problem})")
        time.sleep(2**attempt)
    try:
        content = body["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RecipeError(f"judge endpoint {endpoint} did not answer as an OpenAI chat completion") from None
    return content if isinstance(content, str) else ""


def _error_message(error: urllib.error.HTTPError) -> str:
    """The `error.message` of an OpenAI-style error body, else its first 200 characters, redacted."""
    text = error.read().decode(errors="replace")
    try:
        text = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    return secrets.redact(" ".join(str(text).split())[:200]) or error.reason


def ask_all(chats: list[list[dict]], *, url: str, model: str, workers: int = 8, **options: Any) -> list[str]:
    """`ask_judge` for each chat, `workers` at a time, replies in order; the first error stops the rest."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(ask_judge, url, model, chat, **options) for chat in chats]
        try:
            return [f.result() for f in tqdm(futures, desc="judge", disable=len(chats) < 2)]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def judge_scores(questions: list[str], answers: list[str], *, url: str, model: str,
                 api_key: str | None = None, workers: int = 8, max_tokens: int = 1024,
                 timeout: float = 120) -> dict[str, Any]:  # fmt: skip
    """Each answer graded 1-10 by the judge: the mean grade of those it graded readably, how many that
    is, how many replies were `unparseable`, and a record per question with the judge's raw reply."""
    start = time.time()
    chats = [score_messages(q, a) for q, a in zip(questions, answers, strict=True)]
    replies = ask_all(chats, url=url, model=model, workers=workers, api_key=api_key, max_tokens=max_tokens,
                      timeout=timeout)  # fmt: skip
    records = [{"question": q, "answer": a, "rating": parse_rating(r), "reply": r}
               for q, a, r in zip(questions, answers, replies, strict=True)]  # fmt: skip
    ratings = [r["rating"] for r in records if r["rating"] is not None]
    if len(ratings) < len(records):
        logger.warning(
            f"judge {model}: {len(records) - len(ratings)} of {len(records)} replies held no rating"
        )
    return {
        "judge_model": model,
        "questions": len(records),
        "mean_rating": sum(ratings) / len(ratings) if ratings else None,
        "rated": len(ratings),
        "unparseable": len(records) - len(ratings),
        "seconds": round(time.time() - start, 2),
        "records": records,
    }


# A verdict read from the model's side: +1 it wins, 0 a tie, -1 it loses; by order (model as A, as B)
_SIDE = ({"A": 1, "tie": 0, "B": -1}, {"A": -1, "tie": 0, "B": 1})


def pair_outcome(first: str | None, second: str | None) -> str:
    """A question's outcome from the verdicts with the model's answer as A (`first`) then as B (`second`):
    "win" when it wins both or wins one and ties the other, "loss" likewise, "inconsistent" when each order
    picks a different side (a tie in the win rate), "tie" for two ties, "unparseable" when either is None."""
    if first is None or second is None:
        return "unparseable"
    total, product = _SIDE[0][first] + _SIDE[1][second], _SIDE[0][first] * _SIDE[1][second]
    if product < 0:
        return "inconsistent"
    return "win" if total > 0 else "loss" if total < 0 else "tie"


def judge_pairwise(questions: list[str], answers: list[str], baseline_answers: list[str], *, url: str,
                   model: str, api_key: str | None = None, workers: int = 8, max_tokens: int = 1024,
                   timeout: float = 120) -> dict[str, Any]:  # fmt: skip
    """The model's answers against the baseline's, each question judged twice (the model's answer as A,
    then as B) so that a judge's preference for a position cancels out.

    win_rate = (wins + ties / 2) / judged, where ties include the `inconsistent` questions (the two orders
    picked different sides, also counted on their own); a question with an unparseable reply in either
    order is counted in `unparseable` and left out of `judged`.
    """
    start = time.time()
    rows = list(zip(questions, answers, baseline_answers, strict=True))
    chats = [pairwise_messages(q, a, b) for q, a, b in rows] + [
        pairwise_messages(q, b, a) for q, a, b in rows
    ]
    replies = ask_all(chats, url=url, model=model, workers=workers, api_key=api_key, max_tokens=max_tokens,
                      timeout=timeout)  # fmt: skip
    records = []
    for (question, answer, baseline), first, second in zip(rows, replies[: len(rows)], replies[len(rows) :],
                                                          strict=True):  # fmt: skip
        verdicts = [parse_verdict(first), parse_verdict(second)]
        records.append({"question": question, "answer": answer, "baseline": baseline, "verdicts": verdicts,
                        "outcome": pair_outcome(*verdicts), "replies": [first, second]})  # fmt: skip
    counts = {o: sum(r["outcome"] == o for r in records) for o in ("win", "loss", "tie", "inconsistent")}
    unparseable = sum(r["outcome"] == "unparseable" for r in records)
    ties = counts["tie"] + counts["inconsistent"]
    judged = counts["win"] + counts["loss"] + ties
    if unparseable:
        logger.warning(f"judge {model}: {unparseable} of {len(records)} questions had an unparseable verdict")
    return {
        "judge_model": model,
        "questions": len(records),
        "win_rate": (counts["win"] + ties / 2) / judged if judged else None,
        "judged": judged,
        "wins": counts["win"],
        "losses": counts["loss"],
        "ties": ties,
        "inconsistent": counts["inconsistent"],
        "unparseable": unparseable,
        "seconds": round(time.time() - start, 2),
        "records": records,
    }


def read_questions(path: str | Path) -> tuple[list[str], list[list[dict]]]:
    """The judge's question text and the model's chat prompt of each row of a JSONL file (see the module
    docstring); a RecipeError naming the file and line of any row that has neither."""
    questions, prompts = [], []
    for line, row in _jsonl_rows(path):
        where = f"{path} line {line}"
        prompt, question = row.get("prompt"), row.get("question")
        if isinstance(prompt, list):
            bad = next((i for i, m in enumerate(prompt) if not _is_message(m)), None)
            if bad is not None:
                raise RecipeError(f"{where}: prompt[{bad}] is not a chat message {{role, content}}")
            if not prompt or prompt[-1]["role"] != "user":
                raise RecipeError(f"{where}: `prompt` must end with a user turn, which the model answers")
            question = question if question is not None else prompt[-1]["content"]
        elif prompt is not None and not isinstance(prompt, str):
            raise RecipeError(f"{where}: `prompt` must be a string or a list of chat messages")
        if question is None:
            question = prompt
        if not isinstance(question, str) or not question.strip():
            raise RecipeError(f"{where}: no question; give `question` (text) or `prompt` (text or messages)")
        questions.append(question)
        prompts.append(
            prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt or question}]
        )
    if not questions:
        raise RecipeError(f"{path}: no questions in the file")
    return questions, prompts


def _is_message(message: Any) -> bool:
    return isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))


def read_answers(path: str | Path, questions: list[str]) -> list[str]:
    """Baseline answers from a JSONL with an `answer` per row, aligned with `questions` (a row's own
    `question`, when it has one, must match)."""
    answers = []
    for line, row in _jsonl_rows(path):
        if not isinstance(row.get("answer"), str):
            raise RecipeError(f"{path} line {line}: no `answer` (a string) in this row")
        i = len(answers)
        if i < len(questions) and row.get("question") not in (None, questions[i]):
            raise RecipeError(
                f"{path} line {line}: its `question` is not question {i + 1} of the questions file"
            )
        answers.append(row["answer"])
    if len(answers) != len(questions):
        raise RecipeError(
            f"{path}: {len(answers)} answers for {len(questions)} questions; give one per question"
        )
    return answers


def _jsonl_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) of each non-blank line; a RecipeError naming the file and line on a bad one (the
    data layer's own JSON Lines rule, `parse_json_line`)."""
    from alignment.data.sources import parse_json_line

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read {path}: {error}") from None
    numbered = (
        (number, parse_json_line(Path(path), number, line))
        for number, line in enumerate(text.splitlines(), 1)
    )
    return [(number, row) for number, row in numbered if row is not None]


def check_judge(questions: str, url: str, model: str, baseline: str | None = None,
                max_rows: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Check a judge run and read its inputs before any model loads: the questions (their first
    `max_rows`), the judge's URL and model name, and the baseline (answers file or model folder).

    Returns `questions` (the judge's texts), `prompts` (what the model answers), and `baseline_answers`
    (from a file) or `baseline_model` (a folder to generate them with), or neither.
    """
    if not re.match(r"https?://[^\s/]+", url or ""):
        raise RecipeError(f"judge URL {url!r} must look like http(s)://host[:port]/v1")
    if not (model or "").strip():
        raise RecipeError("the judge model name is empty; give the name the endpoint serves it under")
    if max_rows is not None and max_rows < 1:
        raise RecipeError(f"max_rows is {max_rows}; it must be at least 1")
    every_text, prompts = read_questions(questions)
    texts, prompts = every_text[:max_rows], prompts[:max_rows]
    inputs: dict[str, Any] = {"questions": texts, "prompts": prompts, "baseline_answers": None,
                              "baseline_model": None}  # fmt: skip
    if baseline is None:
        return inputs
    if Path(baseline).is_dir():
        from alignment.eval_command import model_kind

        scorer = {"reward": "a reward model", "classifier": "a text classifier"}.get(model_kind(baseline))
        if scorer:
            raise RecipeError(f"baseline {baseline} is {scorer}; the baseline must generate answers")
        inputs["baseline_model"] = baseline
    elif Path(baseline).is_file():
        inputs["baseline_answers"] = read_answers(baseline, every_text)[:max_rows]
    else:
        raise RecipeError(f"baseline {baseline} not found: give a model folder or a JSONL of `answer` rows")
    return inputs


def answer_questions(model_dir: str | Path, prompts: list[list[dict]] | list[str], max_new_tokens: int = 512,
                     batch_size: int = 16, loaded: tuple[Any, Any] | None = None) -> list[str]:  # fmt: skip
    """The greedy answers of a model folder (an adapter is merged) to chat prompts or plain questions: with
    vLLM where it is installed and a CUDA GPU is there (as lm-eval's `auto` backend picks), else with
    transformers (the `loaded` model and tokenizer when given)."""
    from alignment.evaluation import generate_answers, load_for_eval

    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    if vllm_usable():
        return vllm_answers(str(model_dir), chats, max_new_tokens)
    model, tokenizer = loaded or load_for_eval(model_dir)
    return generate_answers(model, tokenizer, chats, max_new_tokens=max_new_tokens, batch_size=batch_size)


def vllm_usable() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_answers(model_dir: str, chats: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy answers from vLLM's offline engine, each chat through the model's own chat template; an adapter
    folder runs as a LoRA on the base it names. The engine is freed before returning (the GPU is shared with
    whatever runs next)."""
    import gc

    import torch
    from vllm import LLM, SamplingParams

    from alignment.harness import LORA_RANKS
    from alignment.model import adapter_base

    base = adapter_base(model_dir)
    lora = None
    if base:
        from vllm.lora.request import LoRARequest

        rank = json.loads((Path(model_dir) / "adapter_config.json").read_text()).get("r", 16)
        tokenizer = model_dir if (Path(model_dir) / "tokenizer_config.json").is_file() else base
        llm = LLM(model=base, tokenizer=tokenizer, enable_lora=True,
                  max_lora_rank=min(r for r in LORA_RANKS if r >= rank))  # fmt: skip
        lora = LoRARequest("adapter", 1, model_dir)
    else:
        llm = LLM(model=model_dir)
    outputs = llm.chat(chats, SamplingParams(temperature=0.0, max_tokens=max_new_tokens), use_tqdm=False,
                       lora_request=lora)  # fmt: skip
    answers = [output.outputs[0].text.strip() for output in outputs]
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return answers
